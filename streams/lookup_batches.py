"""Lookups answered together: those waiting when the cascade's thread gets to them share one
pass through the cascade, so those that need the embedding share one forward pass, and each is
answered as soon as its own result is final (a lookup the hashes settle does not wait for the
others' embedding).

There is no fixed gathering window: lookups gather while the thread is busy (with a stream
batch's chunk, or with the previous lookups), which is exactly when waiting costs nothing extra.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future

from dupwatch.detectors import CascadeResult
from dupwatch.pipeline.processor import Pending, Processor
from dupwatch.schemas import Rejected
from dupwatch.streams.cascade_thread import CascadeThread

log = logging.getLogger(__name__)
MAX_BATCH = 32   # lookups per pass: a forward pass of at most this many images (and their views)

_Waiting = tuple[Pending, str, int | None, Future]


class LookupBatches:
    """Takes ready lookups from any thread (:meth:`submit`) and runs those waiting, up to
    ``max_batch`` at a time, as urgent jobs on the cascade's thread."""

    def __init__(self, processor: Processor, thread: CascadeThread,
                 max_batch: int = MAX_BATCH) -> None:
        self._processor = processor
        self._thread = thread
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self._scheduled = False     # a job is queued that will take what waits

    def submit(self, pending: Pending, tenant: str, top_k: int | None) -> Future[CascadeResult]:
        """The lookup's result (its Rejected as the future's exception); ``pending`` must be
        prepared (fetched and decoded, or failed)."""
        future: Future[CascadeResult] = Future()
        with self._lock:
            self._waiting.append((pending, tenant, top_k, future))
            schedule, self._scheduled = not self._scheduled, True
        if schedule:
            self._schedule()
        return future

    def _schedule(self) -> None:
        try:
            self._thread.submit_urgent(self._run)
        except RuntimeError as exc:  # shut down: nothing will run them
            self._fail(self._take_all(), exc)

    def _run(self) -> None:
        with self._lock:
            batch = self._waiting[:self._max_batch]
            self._waiting = self._waiting[self._max_batch:]
            more = self._scheduled = bool(self._waiting)
        if more:
            self._schedule()   # queued behind this job: the rest go next, in their own pass
        try:
            self._processor.look_up_batch([(pending, tenant, top_k)
                                           for pending, tenant, top_k, _ in batch],
                                          lambda number, result: _answer(batch[number][3], result))
        except Exception as exc:  # a bug: each lookup still open fails alone (500), loudly
            log.exception("a batch of %d lookups failed", len(batch))
            self._fail([item for item in batch if not item[3].done()], exc)

    def _take_all(self) -> list[_Waiting]:
        with self._lock:
            taken, self._waiting, self._scheduled = self._waiting, [], False
        return taken

    @staticmethod
    def _fail(items: list[_Waiting], exc: BaseException) -> None:
        for *_, future in items:
            future.set_exception(exc)


def _answer(future: Future, result: CascadeResult | Rejected) -> None:
    if isinstance(result, Rejected):
        future.set_exception(result)
    else:
        future.set_result(result)
