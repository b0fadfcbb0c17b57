"""Work of many tenants on a few slots (decode processes, fetch threads), so that one tenant's
slow work waits on that tenant's own slots only.

At most ``per_tenant`` calls of one tenant run at once and ``total`` in all; a tenant's further
calls wait in its own queue, and whenever a slot frees the tenants with work waiting take turns
for it. A tenant's call may be refused at once instead (``refuse`` says why, given the tenant
and how many of its calls are waiting or running): its future then fails with that exception.
"""
from __future__ import annotations

import threading
from collections import Counter, OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class TenantSlots(Generic[T]):
    """A thread pool shared fairly by tenants (see the module docstring): ``submit`` never blocks
    and returns a future; a refused call's future fails with the refusal. Thread-safe. Behind the
    decode processes and the per-tenant fetch threads."""
    def __init__(self, name: str, per_tenant: int, total: int,
                 refuse: Callable[[str, int], Exception | None] = lambda tenant, held: None) -> None:
        self.per_tenant = max(1, per_tenant)
        self.total = max(self.per_tenant, total)
        self._refuse = refuse
        self._threads = ThreadPoolExecutor(self.total, thread_name_prefix=f"dupwatch-{name}")
        self._lock = threading.Lock()
        self._running: Counter[str] = Counter()
        # Tenants with calls waiting, in turn order (a tenant goes to the back once served).
        self._waiting: OrderedDict[str, deque[tuple[Callable[[], T], Future[T]]]] = OrderedDict()

    def submit(self, tenant: str, call: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            held = self._running[tenant] + len(self._waiting.get(tenant, ()))
            refusal = self._refuse(tenant, held)
            if refusal is None:
                self._waiting.setdefault(tenant, deque()).append((call, future))
                started = self._take_turns()
        if refusal is not None:
            future.set_exception(refusal)
            return future
        self._start(started)
        return future

    def shed(self, tenant: str, keep: int, error: Exception) -> None:
        """Fail the tenant's waiting calls beyond its first ``keep`` with ``error``."""
        with self._lock:
            queue = self._waiting.get(tenant, deque())
            shed = [queue.pop() for _ in range(max(0, len(queue) - keep))]
        for _, future in shed:
            future.set_exception(error)

    def _take_turns(self) -> list[tuple[str, Callable[[], T], Future[T]]]:
        """The calls that may start now (under the lock): one per tenant per round."""
        started = []
        while sum(self._running.values()) < self.total:
            tenant = next((t for t in self._waiting if self._running[t] < self.per_tenant), None)
            if tenant is None:
                break
            queue = self._waiting.pop(tenant)
            call, future = queue.popleft()
            if queue:
                self._waiting[tenant] = queue  # back of the line
            self._running[tenant] += 1
            started.append((tenant, call, future))
        return started

    def _start(self, started: list[tuple[str, Callable[[], T], Future[T]]]) -> None:
        for tenant, call, future in started:
            self._threads.submit(self._run, tenant, call, future)

    def _run(self, tenant: str, call: Callable[[], T], future: Future[T]) -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(call())
            except BaseException as exc:  # the caller's to read from the future
                future.set_exception(exc)
        with self._lock:
            self._running[tenant] -= 1
            if not self._running[tenant]:
                del self._running[tenant]
            started = self._take_turns()
        self._start(started)
