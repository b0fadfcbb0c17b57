"""Publishing image files to the input topic as image events."""
from __future__ import annotations

from typing import Iterable, Iterator

from confluent_kafka import KafkaError, Message, Producer

from dupwatch.schemas import ImageEvent, utc_now
from dupwatch.messaging.kafka import KafkaOptions, confluent_config, max_message_bytes
from dupwatch.imaging.files import ImageFile


def file_events(files: Iterable[ImageFile], tenant: str, as_uri: bool = False) -> Iterator[ImageEvent]:
    """One event per file, with the bytes inline or (``as_uri``) a file:// reference."""
    for file in files:
        yield ImageEvent(
            image_id=file.image_id, tenant=tenant,
            data=None if as_uri else file.path.read_bytes(),
            uri=file.path.resolve().as_uri() if as_uri else None,
            content_type=file.content_type, submitted_at=utc_now())


class Publisher:
    """A producer for image events (or control commands) to ``topic`` that raises if the
    broker refused any of them."""

    def __init__(self, kafka: KafkaOptions, topic: str) -> None:
        self.topic = topic
        self._producer = Producer(confluent_config(
            kafka, **{"message.max.bytes": max_message_bytes(kafka.max_event_bytes),
                         "linger.ms": 5, "enable.idempotence": False}))
        self._errors: list[str] = []

    def publish(self, event: ImageEvent) -> None:
        self.publish_raw(event.to_json(), key=event.key)

    def publish_raw(self, value: bytes, key: bytes | None = None) -> None:
        """Send any bytes as-is (also malformed ones: the tests use this for bad input)."""
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.5)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise RuntimeError(f"{remaining} events were not delivered within {timeout_s}s")
        if self._errors:
            raise RuntimeError(f"{len(self._errors)} events were refused: {self._errors[0]}")

    def close(self) -> None:
        """Flush, then disconnect (so no reconnect attempts outlive a stopped broker)."""
        self.flush()
        self._producer.close()

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._errors.append(str(error))
