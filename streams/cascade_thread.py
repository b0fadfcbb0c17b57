"""The cascade's one thread: the stream's work in the order it comes, lookups ahead of it.

The cascade is not thread-safe (detectors/cascade.py), so everything that touches it (stream
batches, control commands, index counts, lookups) runs on this one thread. Synchronous lookups
must not wait behind a whole stream batch: they are taken before any waiting stream work, and
a stream batch already running stops for them at each of the cascade's pause points (between
its stages and between chunks of its embedding), where nothing is half done and the index is as
the batch found it.

Lookups must not starve the stream either. While both have work waiting, they share the thread's
time equally: a balance counts the seconds the stream ran while lookups waited, less the seconds
lookups ran while stream work waited, and lookups go first only while it is not negative. Time
either spends alone is not counted, and the balance stays within BALANCE_CAP_S, so a burst of
lookups after a quiet spell goes first for at most that long.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Executor, Future
from typing import Any, Callable, TypeVar

T = TypeVar("T")
_Job = tuple[Future, Callable[..., Any], tuple[Any, ...], dict[str, Any]]
BALANCE_CAP_S = 1.0


class CascadeThread(Executor):
    """An executor of one thread with two queues: ``submit`` (in order) and ``submit_urgent``
    (ahead of every waiting ``submit``, and run inside a running job at its pause points)."""

    def __init__(self, name: str = "dupwatch-cascade") -> None:
        self._ready = threading.Condition()
        self._normal: deque[_Job] = deque()
        self._urgent: deque[_Job] = deque()
        self._closed = False
        self._running_urgent = False
        self._in_stream_job = False
        self._balance = 0.0          # see the module's doc; changed on this thread only
        self._segment_started = 0.0  # when the running stream job started or last paused
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self._put(self._normal, fn, args, kwargs)

    def submit_urgent(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self._put(self._urgent, fn, args, kwargs)

    def run_urgent(self) -> None:
        """Run the urgent jobs waiting now; call it from a job at a point where others may run.
        Does nothing on any other thread, or inside an urgent job (they do not nest)."""
        if threading.current_thread() is not self._thread or self._running_urgent:
            return
        self._count_segment()
        while self._balance >= 0 and (job := self._take(self._urgent)) is not None:
            self._run(job, urgent=True)
        self._segment_started = time.perf_counter()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._ready:
            self._closed = True
            if cancel_futures:
                for queue in (self._urgent, self._normal):
                    while queue:
                        queue.popleft()[0].cancel()
            self._ready.notify_all()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def _put(self, queue: deque[_Job], fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Future:
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the cascade thread has been shut down")
            queue.append((future, fn, args, kwargs))
            self._ready.notify()
        return future

    def _take(self, queue: deque[_Job]) -> _Job | None:
        with self._ready:
            return queue.popleft() if queue else None

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not (self._urgent or self._normal or self._closed):
                    self._ready.wait()
                if not (self._urgent or self._normal):
                    return  # closed, and nothing is left to run
                urgent = bool(self._urgent) and (self._balance >= 0 or not self._normal)
                job = (self._urgent if urgent else self._normal).popleft()
            self._run(job, urgent)

    def _run(self, job: _Job, urgent: bool) -> None:
        future, fn, args, kwargs = job
        if not future.set_running_or_notify_cancel():
            return
        self._running_urgent = urgent
        self._in_stream_job = self._in_stream_job or not urgent
        started = self._segment_started = time.perf_counter()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # the submitter's to read from the future
            future.set_exception(exc)
        finally:
            self._running_urgent = False
            if urgent:
                if self._normal or self._in_stream_job:  # the stream waited for it
                    self._add_balance(started - time.perf_counter())
            else:
                self._in_stream_job = False
                self._count_segment()

    def _count_segment(self) -> None:
        """Credit the running stream job's time since it started or last paused, if lookups
        were waiting at its end (an approximation: they may have come in during it)."""
        if self._urgent:
            self._add_balance(time.perf_counter() - self._segment_started)
        self._segment_started = time.perf_counter()

    def _add_balance(self, seconds: float) -> None:
        self._balance = max(-BALANCE_CAP_S, min(BALANCE_CAP_S, self._balance + seconds))
