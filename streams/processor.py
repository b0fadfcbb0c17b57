"""One input record in, one verdict or one dead letter out: the worker's and scan's shared core."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from dupwatch.detectors import Cascade, CascadeResult, ImageInput
from dupwatch.schemas import (
    DeadLetter, ImageEvent, Reason, Rejected, Verdict, parse_control, parse_image_event,
)
from dupwatch.settings import Settings
from dupwatch.streams import metrics
from dupwatch.streams.sources import read_uri

log = logging.getLogger(__name__)

# Concurrent uri fetches per worker: enough to overlap a batch's network waits; each holds at
# most one event's bytes (max_event_bytes).
FETCH_THREADS = 16


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
    result: CascadeResult | Rejected | None = None   # the cascade's, for records without error


class Processor:
    """Turns records into verdicts or dead letters, batch by batch.

    Parsing, fetching and decoding run on ``decode_threads`` threads (Pillow releases the GIL);
    then the cascade checks the batch on the calling thread as if record by record, so results
    do not depend on the batching.
    """

    def __init__(self, settings: Settings, cascade: Cascade) -> None:
        self.settings = settings
        self.cascade = cascade
        self._pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="dupwatch-decode")
        self._fetch_pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="dupwatch-fetch")

    def handle_batch(self, records: list[InputRecord]) -> list[Verdict | DeadLetter]:
        # Fetches wait on the network, so many run at once: a batch of slow URIs costs about
        # one fetch time limit, not one per decode thread.
        prepared = list(self._pool.map(self._decode, self._fetch_pool.map(self._fetch, records)))
        ready = [p for p in prepared if p.error is None]
        try:
            results = self.cascade.check_batch(
                [(p.event.tenant, p.event.image_id, p.image) for p in ready])  # type: ignore[union-attr]
        except Exception:  # a bug: find the record that trips it, one by one, so it alone fails
            log.exception("batch check failed; checking its records one by one")
            results = [self._check_alone(p) for p in ready]
        for item, result in zip(ready, results, strict=True):
            item.result = result
        return [self._finish(p) for p in prepared]

    def handle(self, record: InputRecord) -> Verdict | DeadLetter:
        return self.handle_batch([record])[0]

    def _check_alone(self, prepared: _Prepared) -> CascadeResult | Rejected:
        event, image = prepared.event, prepared.image
        try:
            return self.cascade.check(event.tenant, event.image_id, image)  # type: ignore[union-attr]
        except Rejected as error:
            return error
        except Exception as exc:
            return self._unexpected(exc, prepared.record)

    def handle_control(self, record: InputRecord) -> DeadLetter | None:
        """Apply one control command; a dead letter if it is invalid or cannot be applied."""
        try:
            command = parse_control(record.value, max_event_bytes=self.settings.max_event_bytes)
            if command.action == "remove":
                removed = self.cascade.store.remove(command.tenant, command.image_ids)
                log.warning("takedown for tenant %s: %d of %d images removed", command.tenant,
                            removed, len(command.image_ids))
            else:
                self.cascade.add_to_bank(command.tenant, command.image_ids[0],
                                         self.cascade.image(command.data or b""))
            metrics.count_control(command.action)
            return None
        except Rejected as error:
            return self._dead_letter(error, record, None)
        except Exception as exc:
            return self._dead_letter(self._unexpected(exc, record), record, None)

    def _fetch(self, record: InputRecord) -> _Prepared:
        """Parse, and read the bytes behind a ``uri`` (network waits, on the fetch pool)."""
        prepared = _Prepared(record)
        with self._errors_into(prepared):
            prepared.event = event = parse_image_event(
                record.value, max_event_bytes=self.settings.max_event_bytes,
                max_metadata_bytes=self.settings.max_metadata_bytes)
            raw = event.data if event.data is not None else read_uri(event.uri or "", self.settings)
            prepared.image = self.cascade.image(raw)
        return prepared

    def _decode(self, prepared: _Prepared) -> _Prepared:
        # Decode ahead even if the SHA-256 stage may settle it: bytes that fail to decode can
        # never equal an indexed image's, so this changes no verdict, and it runs in parallel.
        if prepared.image is not None and prepared.error is None:
            with self._errors_into(prepared):
                prepared.image.pixels  # noqa: B018
        return prepared

    @contextmanager
    def _errors_into(self, prepared: _Prepared) -> Iterator[None]:
        try:
            yield
        except Rejected as error:
            prepared.error = error
        except Exception as exc:  # a bug must cost one event, not the partition
            prepared.error = self._unexpected(exc, prepared.record)

    def _finish(self, prepared: _Prepared) -> Verdict | DeadLetter:
        """Never raises: whatever went wrong becomes a dead letter and the stream moves on."""
        event, result = prepared.event, prepared.result
        if isinstance(result, CascadeResult) and event is not None:
            return result.to_verdict(image_id=event.image_id, tenant=event.tenant,
                                     worker=self.settings.worker_name,
                                     model_version=self.cascade.model_version,
                                     submitted_at=event.submitted_at, metadata=event.metadata)
        error = prepared.error or result
        assert isinstance(error, Rejected)
        return self._dead_letter(error, prepared.record, event)

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
