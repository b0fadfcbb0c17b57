"""Time budgets for calls that Python cannot interrupt and that cost little while they wait (the
DNS resolver's getaddrinfo).

Such calls run in C: no exception, signal or thread can stop them part way. A :class:`Watchdog`
runs each call on a thread of its pool and stops *waiting* when the budget is spent, so the
caller moves on (its event is dead-lettered) while the call runs to its end in the background
and its result is dropped. ``max_overdue`` bounds how many may run on at once, so a flood of
pathological inputs costs at most that many threads, never a stalled partition. (Decodes, which
can burn CPU and memory for minutes, are stopped for real instead: imaging/decode_pool.py.)
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, TypeVar

T = TypeVar("T")


class Overdue(Exception):
    """The call did not finish within its budget, or too many earlier ones are still running."""


class Watchdog:
    """Runs uninterruptible calls against a budget in seconds (see the module docstring): ``call``
    returns the result or raises the call's exception, or raises :class:`Overdue` once the budget
    is spent or ``max_overdue`` calls are still running late. Thread-safe."""
    def __init__(self, name: str, max_overdue: int) -> None:
        self.name = name
        self.max_overdue = max_overdue
        self._lock = threading.Lock()
        self._overdue = 0
        # Threads are started as calls need them and reused; the cap is only a backstop, far
        # above the callers' threads plus max_overdue, so a call never queues for a thread.
        self._threads = ThreadPoolExecutor(256, thread_name_prefix=f"dupwatch-{name}")

    @property
    def overdue(self) -> int:
        """Calls that ran past their budget and have not finished yet."""
        with self._lock:
            return self._overdue

    def call(self, work: Callable[[], T], budget_s: float) -> T:
        """``work()``'s result (or its exception), or :class:`Overdue` after ``budget_s``."""
        with self._lock:
            if self._overdue >= self.max_overdue:
                raise Overdue(f"{self._overdue} earlier {self.name} calls are still running "
                              "past their budget; not starting another")
        future = self._threads.submit(work)
        # wait(), not future.result(timeout): work may raise TimeoutError itself.
        if not wait([future], timeout=budget_s).done:
            with self._lock:
                self._overdue += 1
            future.add_done_callback(self._finished)  # runs at once if it has just finished
            raise Overdue(f"{self.name} did not finish within {budget_s * 1000:.0f} ms")
        return future.result()

    def _finished(self, _future: Future) -> None:
        with self._lock:
            self._overdue -= 1
