"""The worker's pipeline (streams/pipeline.py) acknowledges events so that a crash loses none.

In-process, with a stand-in processor whose first event's picture takes its time: events of
other tenants go ahead of it (their outcomes are sent first), but none of its partition is
acknowledged before it. Faust (faust-streaming 0.15.3) commits past an unacknowledged event
when the events after it are acknowledged and the partition has no committed offset yet, or
when that event is the only one missing; a worker killed then never sees it again (found by
`dupwatch bench chaos`: 3 events lost, offsets committed past them before the kill)."""
from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace

from dupwatch.pipeline.processor import InputRecord, Pending
from dupwatch.settings import Settings
from dupwatch.streams.pipeline import Pipeline


class _Processor:
    """Takes events in at once; the pictures in ``slow`` are prepared when the test says."""

    def __init__(self, slow: dict[tuple[int, int], Future]) -> None:
        self.slow = slow

    def intake(self, records: list[InputRecord]) -> list[Pending]:
        return [Pending(record, preparing=self.slow.get((record.partition, record.offset)),
                        event=SimpleNamespace(tenant=record.key.decode()))  # type: ignore[arg-type]
                for record in records]

    def finish(self, items: list[Pending]) -> list[str]:
        return [f"outcome of {item.record.partition}/{item.record.offset}" for item in items]


def _event(partition: int, offset: int, tenant: str) -> SimpleNamespace:
    message = SimpleNamespace(value=b"{}", key=tenant.encode(), headers=[], topic="images",
                              partition=partition, offset=offset)
    return SimpleNamespace(message=message)


async def _until(condition, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def test_events_are_acknowledged_in_their_partitions_order_whatever_order_they_finish() -> None:
    slow: Future = Future()
    events = [_event(0, 0, "slow-tenant"), _event(0, 1, "other"), _event(0, 2, "other"),
              _event(1, 0, "other")]
    delivered: list[str] = []
    acked: list[tuple[int, int]] = []

    async def deliver(records, outcomes) -> None:
        delivered.extend(outcomes)

    async def ack(event) -> None:
        acked.append((event.message.partition, event.message.offset))

    async def run() -> None:
        with ThreadPoolExecutor(1) as executor:
            async with Pipeline(Settings(), _Processor({(0, 0): slow}), executor, deliver,
                                ack) as pipeline:  # type: ignore[arg-type]
                await pipeline.add(events)
                # the other tenant's outcomes go ahead of the slow event; another partition's
                # event is acknowledged at once, those of the slow event's partition are not
                await _until(lambda: len(delivered) == 3 and (1, 0) in acked,
                             "the other tenant's outcomes sent")
                assert (0, 1) not in acked and (0, 2) not in acked, acked
                slow.set_result(None)
                await _until(lambda: len(acked) == 4, "every event acknowledged")
        assert [offset for partition, offset in acked if partition == 0] == [0, 1, 2]
        assert "outcome of 0/0" == delivered[-1]

    asyncio.run(run())
