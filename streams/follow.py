"""Reading verdicts (and dead letters) back from their topics."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterator

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

from dupwatch.settings import Settings
from dupwatch.streams.kafka import confluent_config


@dataclass(frozen=True)
class Record:
    topic: str
    document: dict[str, Any]
    received_at: float   # time.time() when it arrived here
    raw: bytes = b""     # the record's value as it came


class TopicReader:
    """Reads whole topics by assignment (no consumer group, so no rebalance wait)."""

    def __init__(self, settings: Settings, topics: list[str], from_beginning: bool = True) -> None:
        self._consumer = Consumer(confluent_config(
            settings, **{"group.id": "dupwatch-reader", "enable.auto.commit": False,
                         # some brokers hold a fetch for its whole wait even when data arrives;
                         # a short wait keeps a live view live
                         "fetch.wait.max.ms": 25}))
        offset = OFFSET_BEGINNING if from_beginning else OFFSET_END
        metadata = self._consumer.list_topics(timeout=30)
        partitions = [TopicPartition(topic, p, offset) for topic in topics
                      for p in metadata.topics[topic].partitions]
        self._consumer.assign(partitions)

    def records(self, *, max_records: int | None = None,
                idle_timeout_s: float | None = None) -> Iterator[Record]:
        """Yield records as they arrive until ``max_records`` or ``idle_timeout_s`` of silence."""
        seen = 0
        last = time.monotonic()
        while max_records is None or seen < max_records:
            message = self._consumer.poll(0.2)
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
