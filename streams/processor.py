"""One input record in, one verdict or one dead letter out: the worker's and scan's shared core."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from dupwatch.detectors import Cascade, ImageInput
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


@dataclass
class _Prepared:
    """A record after the per-event work that needs no index: parsed, fetched, decoded."""
    record: InputRecord
    event: ImageEvent | None = None
    image: ImageInput | None = None
    error: Rejected | None = None


class Processor:
    """Turns records into verdicts or dead letters, batch by batch.

    Parsing, fetching and decoding run on ``decode_threads`` threads (Pillow releases the GIL);
    the cascade's search-then-index runs in record order on the calling thread, so results do
    not depend on the batching.
    """

    def __init__(self, settings: Settings, cascade: Cascade) -> None:
        self.settings = settings
        self.cascade = cascade
        self._pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="dupwatch-decode")

    def handle_batch(self, records: list[InputRecord]) -> list[Verdict | DeadLetter]:
        # map() yields in order as decodes finish, so checking overlaps with decoding.
        prepared: Iterable[_Prepared] = self._pool.map(self._prepare, records)
        if self.cascade.batches:
            prepared = self._prefetched(prepared)
        return [self._finish(p) for p in prepared]

    def _prefetched(self, prepared: Iterable[_Prepared]) -> list[_Prepared]:
        """Let the cascade describe the batch ahead (one forward pass for the embedding)."""
        seen: list[_Prepared] = []

        def ready() -> Iterator[tuple[str, str, ImageInput]]:
            for item in prepared:
                seen.append(item)
                if item.error is None and item.event is not None and item.image is not None:
                    yield item.event.tenant, item.event.image_id, item.image

        images = ready()
        try:
            self.cascade.prefetch(images)
        except Exception:  # only a speed-up: each check recomputes what is missing, and an
            log.exception("batched prefetch failed")  # image that fails there is dead-lettered
        for _ in images:  # whatever prefetch left unread
            pass
        return seen

    def handle(self, record: InputRecord) -> Verdict | DeadLetter:
        return self._finish(self._prepare(record))

    def _prepare(self, record: InputRecord) -> _Prepared:
        prepared = _Prepared(record)
        try:
            prepared.event = event = parse_image_event(
                record.value, max_event_bytes=self.settings.max_event_bytes,
                max_metadata_bytes=self.settings.max_metadata_bytes)
            raw = event.data if event.data is not None else read_uri(
                event.uri or "", self.settings.uri_roots, self.settings.max_event_bytes)
            prepared.image = self.cascade.image(raw)
            # Decode ahead even if the SHA-256 stage may settle it: bytes that fail to decode
            # can never equal an indexed image's, so this changes no verdict, and it runs in
            # parallel.
            prepared.image.pixels  # noqa: B018
        except Rejected as error:
            prepared.error = error
        except Exception as exc:  # a bug must cost one event, not the partition
            prepared.error = self._unexpected(exc, record)
        return prepared

    def _finish(self, prepared: _Prepared) -> Verdict | DeadLetter:
        """Never raises: whatever went wrong becomes a dead letter and the stream moves on."""
        event, image = prepared.event, prepared.image
        if prepared.error is None and event is not None and image is not None:
            try:
                result = self.cascade.check(event.tenant, event.image_id, image)
                return result.to_verdict(image_id=event.image_id, tenant=event.tenant,
                                         worker=self.settings.worker_name,
                                         model_version=self.cascade.model_version,
                                         submitted_at=event.submitted_at, metadata=event.metadata)
            except Rejected as error:
                prepared.error = error
            except Exception as exc:
                prepared.error = self._unexpected(exc, prepared.record)
        assert prepared.error is not None
        return self._dead_letter(prepared.error, prepared.record, event)

    @staticmethod
    def _unexpected(exc: Exception, record: InputRecord) -> Rejected:
        log.exception("processing failed for record at %s/%s/%s",
                      record.topic, record.partition, record.offset)
        return Rejected(Reason.PROCESSING_FAILED, f"{type(exc).__name__}: {exc}")

    def _dead_letter(self, error: Rejected, record: InputRecord,
                     event: ImageEvent | None) -> DeadLetter:
        return DeadLetter.build(
            error, record.value, worker=self.settings.worker_name,
            excerpt_bytes=self.settings.dead_letter_excerpt_bytes, key=record.key,
            headers=record.headers, topic=record.topic, partition=record.partition,
            offset=record.offset, image_id=event.image_id if event else None,
            tenant=event.tenant if event else None)
