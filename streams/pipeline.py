"""The worker's path from consumed events to published outcomes, in two steps that never wait on
each other: taking events in (parse, start fetches) and checking those whose bytes are in hand.

A batch is up to ``batch_size`` ready events (their pictures fetched and decoded), in the order
they were read; it goes when full, or when no event taken in less than GATHER_S ago is still
being prepared. An event waiting longer on its source or its decode stays behind, with the later
events of its own tenant, while other tenants' events go ahead; they join a later batch when
ready (each fetch ends within fetch_timeout_s, pipeline/fetch_pool.py; each decode within
decode_timeout_ms, imaging/decode_pool.py). Each event is acknowledged
once its outcome is on the broker and every event read before it from its partition has been
acknowledged: events finish in any order, but Faust must never see a later event acknowledged
before an earlier one, since it may commit past the earlier one (faust-streaming 0.15.3 does
when the partition has no committed offset yet, or when the earlier one is the only event
missing), and a crash then loses it. So delivery stays at-least-once.
"""
from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from concurrent.futures import Executor
from dataclasses import dataclass
from types import TracebackType
from typing import Awaitable, Callable

from faust.types import EventT

from dupwatch.schemas import DeadLetter, Verdict
from dupwatch.settings import Settings
from dupwatch.pipeline.processor import InputRecord, Pending, Processor

# Events taken in and not yet finished, at most: beyond it the worker stops reading until some
# finish (a flood of slow sources waits on its fetches' clocks, at most fetch_timeout_s). Those
# holding image data count against a smaller window, two batches (see Pipeline._full).
MAX_WAITING_EVENTS = 1024
# How long a batch waits for events still being fetched or decoded before it goes without
# them: long enough for the usual fetch and decode (the embedding runs faster per image in a
# batch than one by one: docs/benchmarks.md, embedding speed), short against
# the time budgets of the slow ones, which then follow in a later batch.
GATHER_S = 0.5


@dataclass
class _Entry:
    event: EventT
    item: Pending
    taken_at: float  # time.monotonic() when taken in
    delivered: bool = False  # its outcome is on the broker


Partition = tuple[str | None, int | None]

Deliver = Callable[[list[InputRecord], list[Verdict | DeadLetter]], Awaitable[None]]


class Pipeline:
    """Use as ``async with``; feed it with :meth:`add`. A failure in the checking step ends the
    agent that runs it, with that failure."""

    def __init__(self, settings: Settings, processor: Processor, executor: Executor,
                 deliver: Deliver, ack: Callable[[EventT], Awaitable[object]]) -> None:
        self.batch_size = settings.batch_size
        self.processor = processor
        self._executor = executor        # the cascade's own thread
        self._deliver = deliver
        self._ack = ack
        self._waiting: list[_Entry] = []
        # each partition's events not yet acknowledged, in the order they were read
        self._unacked: dict[Partition, deque[_Entry]] = defaultdict(deque)
        self._changed = asyncio.Event()  # an event came in, or a fetch or a decode ended
        self._room = asyncio.Event()     # events finished
        self._checking: asyncio.Task | None = None
        self._agent: asyncio.Task | None = None
        self._failure: BaseException | None = None

    async def __aenter__(self) -> "Pipeline":
        self._agent = asyncio.current_task()
        self._checking = asyncio.create_task(self._check_ready(), name="dupwatch-check")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._checking is not None:
            self._checking.cancel()
            await asyncio.gather(self._checking, return_exceptions=True)
        if self._failure is not None:
            raise self._failure

    async def add(self, events: list[EventT]) -> None:
        """Take events in; returns once there is room for more."""
        loop = asyncio.get_running_loop()
        records = [record_of(event) for event in events]
        pending = await loop.run_in_executor(None, self.processor.intake, records)
        taken_at = time.monotonic()
        for event, item in zip(events, pending, strict=True):
            entry = _Entry(event, item, taken_at)
            self._waiting.append(entry)
            self._unacked[_partition(item)].append(entry)
            for step in (item.fetch, item.preparing):  # a fetch ending frees the window too
                if step is not None:
                    step.add_done_callback(lambda _: loop.call_soon_threadsafe(self._changed.set))
        self._changed.set()
        while self._full():
            self._room.clear()
            await self._room.wait()

    def _full(self) -> bool:
        """Events that hold image data (inline, fetched, decoded) at most two batches; events
        waiting on their sources, which hold none, at most MAX_WAITING_EVENTS."""
        holding = sum(1 for entry in self._waiting if not entry.item.awaiting_source)
        return len(self._waiting) >= MAX_WAITING_EVENTS or holding >= 2 * self.batch_size

    async def _check_ready(self) -> None:
        try:
            while True:
                self._changed.clear()
                batch, gather_s = self._take_batch()
                if batch:
                    await self._finish(batch)
                    self._room.set()
                    continue
                try:
                    await asyncio.wait_for(self._changed.wait(), gather_s)
                except TimeoutError:  # the events gathered for have become late: go without
                    pass
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # end the agent with it: never a worker that stops quietly
            self._failure = exc
            if self._agent is not None:
                self._agent.cancel()

    def _take_batch(self) -> tuple[list[_Entry], float | None]:
        """A batch to check now, or none and how long to wait for one (None: until woken).

        Ready events in the order they were read, each tenant's in its own order: an event not
        ready holds back the later events of its tenant only (images are only ever compared
        within a tenant, so only that order changes verdicts). The batch goes when it is full,
        or when no event taken in less than GATHER_S ago is still being prepared.
        """
        batch, held_back, gathering = [], set(), None
        now = time.monotonic()
        for entry in self._waiting:
            tenant = entry.item.event.tenant if entry.item.event is not None else None
            if not entry.item.ready and now - entry.taken_at < GATHER_S:
                remaining = entry.taken_at + GATHER_S - now
                gathering = remaining if gathering is None else min(gathering, remaining)
            if tenant in held_back:
                continue
            if not entry.item.ready:
                held_back.add(tenant)
            elif len(batch) < self.batch_size:
                batch.append(entry)
        if not batch or (gathering is not None and len(batch) < self.batch_size):
            return [], gathering
        taken = {id(entry) for entry in batch}
        self._waiting = [entry for entry in self._waiting if id(entry) not in taken]
        return batch, None

    async def _finish(self, batch: list[_Entry]) -> None:
        loop = asyncio.get_running_loop()
        # The cascade is CPU work: run it on its own thread so heartbeats keep flowing.
        outcomes = await loop.run_in_executor(self._executor, self.processor.finish,
                                              [entry.item for entry in batch])
        await self._deliver([entry.item.record for entry in batch], outcomes)
        for entry in batch:
            entry.delivered = True
        for partition in {_partition(entry.item) for entry in batch}:
            unacked = self._unacked[partition]
            while unacked and unacked[0].delivered:  # in the order read: see the docstring
                await self._ack(unacked.popleft().event)


def _partition(item: Pending) -> Partition:
    return item.record.topic, item.record.partition


def record_of(event: EventT) -> InputRecord:
    message = event.message
    return InputRecord(value=message.value or b"", key=message.key,
                       headers=list(message.headers or []), topic=message.topic,
                       partition=message.partition, offset=message.offset)
