"""Reading verdicts (and dead letters) back from their topics."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterator

from confluent_kafka import (
    OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Message, TopicPartition,
)

from dupwatch.messaging.kafka import KafkaOptions, confluent_config

# How long the first fetches may take to reach the end of every partition.
_FIRST_FETCH_WAIT_S = 10.0


class MissingTopic(Exception):
    """A topic to read does not exist (yet)."""


@dataclass(frozen=True)
class Record:
    """One record read back by :class:`TopicReader`: its topic, its value parsed as JSON (a verdict
    or a dead letter), the raw value, and when it arrived here (seconds since the epoch)."""
    topic: str
    document: dict[str, Any]
    received_at: float   # time.time() when it arrived here
    raw: bytes = b""     # the record's value as it came


class TopicReader:
    """Reads whole topics by assignment (no consumer group, so no rebalance wait).

    Without ``from_beginning`` it yields only records written after it started. It starts at
    each partition's end as the broker lists it, and drops what it reads before the partition's
    first end-of-partition event: some brokers (Tansu) list the end short, at the last record
    batch's first offset + 1, which would replay the rest of that batch.
    """

    def __init__(self, kafka: KafkaOptions, topics: list[str], from_beginning: bool = True) -> None:
        self._consumer = Consumer(confluent_config(
            kafka, **{"group.id": "dupwatch-reader", "enable.auto.commit": False,
                         # some brokers hold a fetch for its whole wait even when data arrives;
                         # a short wait keeps a live view live
                         "fetch.wait.max.ms": 25, "enable.partition.eof": True}))
        offset = OFFSET_BEGINNING if from_beginning else OFFSET_END
        metadata = self._consumer.list_topics(timeout=30)
        missing = [topic for topic in topics if topic not in metadata.topics]
        if missing:
            self._consumer.close()
            raise MissingTopic(f"no topic {', '.join(missing)} on {kafka.bootstrap_servers} "
                               "yet: a worker creates it when it starts (`dupwatch worker`)")
        partitions = [TopicPartition(topic, p, offset) for topic in topics
                      for p in metadata.topics[topic].partitions]
        self._consumer.assign(partitions)
        self._pending: list[Message] = []
        if not from_beginning:
            self._skip_to_the_end(len(partitions))

    def _skip_to_the_end(self, partitions: int) -> None:
        at_end: set[tuple[str, int]] = set()
        deadline = time.monotonic() + _FIRST_FETCH_WAIT_S
        while len(at_end) < partitions and time.monotonic() < deadline:
            message = self._consumer.poll(0.05)
            if message is None:
                continue
            where = (message.topic(), message.partition())
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(where)
            elif where in at_end:  # new: its partition had reached the end before
                self._pending.append(message)

    def records(self, *, max_records: int | None = None,
                idle_timeout_s: float | None = None) -> Iterator[Record]:
        """Yield records as they arrive until ``max_records`` or ``idle_timeout_s`` of silence."""
        seen = 0
        last = time.monotonic()
        while max_records is None or seen < max_records:
            message = self._pending.pop(0) if self._pending else self._consumer.poll(0.2)
            if message is None or message.error():
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    return
                continue
            last = time.monotonic()
            seen += 1
            yield Record(message.topic(), json.loads(message.value()), time.time(),
                         message.value())

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> "TopicReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
