"""Faust rewinds to committed offsets after dropping records it had fetched (streams/transport.py):
a partition nobody committed must go back to its beginning, or the dropped records are lost."""
from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from dupwatch.streams.transport import seek_to_committed_or_beginning

RECORDS = 6


async def _first_offset_after_rewind(bootstrap_servers: str, commit: int | None) -> int:
    topic = f"rewind-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for n in range(RECORDS):
            await producer.send_and_wait(topic, f"record {n}".encode(), partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers,
                                group_id=f"{topic}-group", auto_offset_reset="earliest",
                                enable_auto_commit=False, session_timeout_ms=6000)
    await consumer.start()
    try:
        read = await _read(consumer, RECORDS)
        assert [record.offset for record in read] == list(range(RECORDS))
        if commit is not None:
            await consumer.commit({TopicPartition(topic, 0): commit})
        # what Faust does after dropping the records it fetched (a rebalance, a stopped flow)
        await seek_to_committed_or_beginning(consumer)
        return (await _read(consumer, 1))[0].offset
    finally:
        await consumer.stop()


async def _read(consumer: AIOKafkaConsumer, count: int) -> list:
    read: list = []
    for _ in range(100):
        for records in (await consumer.getmany(timeout_ms=200)).values():
            read.extend(records)
        if len(read) >= count:
            return read
    raise AssertionError(f"read {len(read)} of {count} records")


@pytest.mark.parametrize("commit, expected", [(None, 0), (0, 0), (3, 3)],
                         ids=["never-committed", "committed-0", "committed-3"])
def test_fetched_records_are_read_again_after_a_rewind(bootstrap_servers: str, commit: int | None,
                                                        expected: int) -> None:
    # aiokafka's seek_to_committed alone leaves the first two where they are: offset 6, past
    # the records Faust dropped.
    assert asyncio.run(_first_offset_after_rewind(bootstrap_servers, commit)) == expected
