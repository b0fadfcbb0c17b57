"""One input record in, one verdict or one dead letter out: the worker's and scan's shared core."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dupwatch.detectors import Cascade
from dupwatch.schemas import (
    DeadLetter, ImageEvent, Reason, Rejected, Verdict, parse_image_event,
)
from dupwatch.settings import Settings
from dupwatch.streams.sources import read_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputRecord:
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


class Processor:
    def __init__(self, settings: Settings, cascade: Cascade) -> None:
        self.settings = settings
        self.cascade = cascade

    def handle_batch(self, records: list[InputRecord]) -> list[Verdict | DeadLetter]:
        return [self.handle(record) for record in records]

    def handle(self, record: InputRecord) -> Verdict | DeadLetter:
        """Never raises: whatever goes wrong becomes a dead letter and the stream moves on."""
        event: ImageEvent | None = None
        try:
            event = parse_image_event(record.value, max_event_bytes=self.settings.max_event_bytes,
                                      max_metadata_bytes=self.settings.max_metadata_bytes)
            return self.check(event)
        except Rejected as error:
            return self._dead_letter(error, record, event)
        except Exception as exc:  # a bug must cost one event, not the partition
            log.exception("processing failed for record at %s/%s/%s",
                          record.topic, record.partition, record.offset)
            error = Rejected(Reason.PROCESSING_FAILED, f"{type(exc).__name__}: {exc}")
            return self._dead_letter(error, record, event)

    def check(self, event: ImageEvent) -> Verdict:
        raw = event.data if event.data is not None else read_uri(
            event.uri or "", self.settings.uri_roots, self.settings.max_event_bytes)
        result = self.cascade.check(event.tenant, event.image_id, raw)
        return result.to_verdict(image_id=event.image_id, tenant=event.tenant,
                                 worker=self.settings.worker_name,
                                 submitted_at=event.submitted_at, metadata=event.metadata)

    def _dead_letter(self, error: Rejected, record: InputRecord,
                     event: ImageEvent | None) -> DeadLetter:
        return DeadLetter.build(
            error, record.value, worker=self.settings.worker_name,
            excerpt_bytes=self.settings.dead_letter_excerpt_bytes, key=record.key,
            headers=record.headers, topic=record.topic, partition=record.partition,
            offset=record.offset, image_id=event.image_id if event else None,
            tenant=event.tenant if event else None)
