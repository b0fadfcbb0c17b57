"""One input record in, one verdict or one dead letter out: the worker's and scan's shared core.

A record goes through two steps. :meth:`Processor.intake` parses it and starts preparing its
picture without waiting for it: fetching the bytes behind a ``uri`` (pipeline/fetch_pool.py), then
decoding them in a decode process (imaging/decode_pool.py), each in its tenant's turn and on
its own clock. :meth:`Processor.finish` takes records whose picture is ready, checks them with
the cascade and turns each into its outcome. The worker runs the two steps apart, so a record
waiting on a slow source or a slow decode never holds up the records behind it
(streams/pipeline.py); ``handle_batch`` runs them one after the other.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from dupwatch.detectors import Cascade, CascadeResult

from dupwatch.imaging.image import ImageInput
from dupwatch.imaging.decode_pool import DecodePool
from dupwatch.schemas import (
    DeadLetter, ImageEvent, Reason, Rejected, Verdict, identity_of, parse_control,
    parse_image_event,
)
from dupwatch.pipeline import metrics
from dupwatch.pipeline.fetch import FetchOptions
from dupwatch.pipeline.fetch_pool import Fetches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputRecord:
    """One input record as it came: its value (an image event's JSON) and, read from Kafka, its key,
    headers and position (topic, partition, offset), which logs and dead letters quote; a scan's or
    a lookup's record has the value (and key) alone."""
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


@dataclass
class Pending:
    """A record on its way: parsed, its picture being prepared (fetched, decoded), checked."""
    record: InputRecord
    event: ImageEvent | None = None
    fetch: Future[bytes] | None = None
    preparing: Future[ImageInput] | None = None
    image: ImageInput | None = None
    error: Rejected | None = None
    result: CascadeResult | Rejected | None = None   # the cascade's, for records without error

    @property
    def ready(self) -> bool:
        """Whether :meth:`Processor.finish` can take it without waiting."""
        return self.preparing is None or self.preparing.done()

    @property
    def awaiting_source(self) -> bool:
        """Still waiting for its bytes to be fetched (it holds no image data yet)."""
        return self.fetch is not None and not self.fetch.done()


@dataclass(frozen=True)
class ProcessorOptions:
    """What the processor takes: event size limits, the threads and processes that parse and
    decode, the worker's name in its records, the dead letters' excerpt, and the fetches'."""
    max_event_bytes: int
    max_metadata_bytes: int
    decode_threads: int
    worker_name: str
    dead_letter_excerpt_bytes: int
    fetch: FetchOptions


class Processor:
    """Turns records into verdicts or dead letters, batch by batch.

    Parsing runs on ``decode_threads`` threads, fetching on threads of its own (Fetches),
    decoding in ``decode_threads`` processes (DecodePool), then each stage's per-image work
    (hashes, local features, the embedding's views) on the ahead thread, while the calling
    thread checks the batch before; then the cascade checks a batch of ready records on the
    calling thread as if record by record, so results do not depend on the batching.
    """

    def __init__(self, options: ProcessorOptions, cascade: Cascade) -> None:
        self.options = options
        self.cascade = cascade
        self._parsers = ThreadPoolExecutor(options.decode_threads, thread_name_prefix="dupwatch-parse")
        self._fetches = Fetches(options.fetch)
        self._decodes = DecodePool(cascade.limits, options.decode_threads)
        self._ahead = ThreadPoolExecutor(1, thread_name_prefix="dupwatch-ahead")

    def handle_batch(self, records: list[InputRecord]) -> list[Verdict | DeadLetter]:
        """Outcomes for ``records``, in order, waiting for every one to be ready."""
        return self.settle(self.intake(records))

    def settle(self, pending: list[Pending]) -> list[Verdict | DeadLetter]:
        """Outcomes for records taken in by :meth:`intake`, waiting for every one to be ready."""
        for item in pending:
            if item.preparing is not None:
                item.preparing.exception()  # waits; the outcome is read in finish()
        return self.finish(pending)

    def handle(self, record: InputRecord) -> Verdict | DeadLetter:
        return self.handle_batch([record])[0]

    def intake(self, records: list[InputRecord]) -> list[Pending]:
        """Parse each record and start preparing its picture; never waits on a source or a
        decode."""
        return list(self._parsers.map(self._parse, records))

    def finish(self, pending: list[Pending]) -> list[Verdict | DeadLetter]:
        """Check and settle records whose picture is ready (``ready``)."""
        for item in pending:
            self._take_prepared(item)
        self._check([p for p in pending if p.error is None])
        return [self._outcome(p) for p in pending]

    def handle_control(self, record: InputRecord) -> DeadLetter | None:
        """Apply one control command; a dead letter if it is invalid or cannot be applied."""
        try:
            command = parse_control(record.value, max_event_bytes=self.options.max_event_bytes)
            if command.action == "remove":
                removed = self.cascade.store.remove(command.tenant, command.image_ids)
                log.warning("takedown for tenant %s: %d of %d images removed", command.tenant,
                            removed, len(command.image_ids))
            else:
                self.cascade.add_to_bank(command.tenant, command.image_ids[0],
                                         self._image(command.data or b""))
            metrics.count_control(command.action)
            return None
        except Rejected as error:
            return self._dead_letter(error, record, None)
        except Exception as exc:
            return self._dead_letter(self._unexpected(exc, record), record, None)

    def intake_lookup(self, tenant: str, body: bytes, *, is_event: bool) -> Pending:
        """A lookup's image on its way, as :meth:`intake` starts an event's, in ``tenant``'s
        turn: ``body`` is the image's bytes, or (``is_event``) an image event, parsed and
        fetched as on the stream. An event naming another tenant is schema_invalid."""
        pending = Pending(InputRecord(body))
        with self._errors_into(pending):
            if not is_event:
                pending.preparing = self._decodes.submit(tenant, self._image(body))
                return pending
            pending.event = self._parsed(body)
            if pending.event.tenant != tenant and _names_tenant(body):
                raise Rejected(Reason.SCHEMA_INVALID, f"the event names tenant "
                               f"{pending.event.tenant}, the request tenant {tenant}")
            self._start_preparing(pending, tenant, describe_ahead=False)
        return pending

    def look_up_batch(self, lookups: list[tuple[Pending, str, int | None]],
                      answered: Callable[[int, CascadeResult | Rejected], None]) -> None:
        """On the cascade's thread, once each ``(pending, tenant, top_k)`` is ready: what checking
        its image would answer now, indexing nothing; ``answered(i, result)`` as each is settled
        (the cascade's look_up_batch). Input that is not an image the cascade can read is
        answered with its Rejected (a dead-letter reason)."""
        readable = []
        for number, (pending, tenant, top_k) in enumerate(lookups):
            self._take_prepared(pending)
            if pending.error is None:
                readable.append((number, tenant, pending.image, top_k))
            else:
                answered(number, pending.error)
        open_numbers = {number for number, *_ in readable}

        def answer(position: int, result: CascadeResult | Rejected) -> None:
            open_numbers.discard(readable[position][0])
            answered(readable[position][0], result)
        try:
            self.cascade.look_up_batch(
                [(tenant, image, top_k) for _, tenant, image, top_k in readable], answer)
        except Exception as exc:  # a bug: each lookup still open fails with processing_failed
            for number in sorted(open_numbers):
                answered(number, self._unexpected(exc, lookups[number][0].record))

    def _parse(self, record: InputRecord) -> Pending:
        pending = Pending(record)
        with self._errors_into(pending):
            pending.event = self._parsed(record.value)
            self._start_preparing(pending, pending.event.tenant)
        return pending

    def _parsed(self, value: bytes) -> ImageEvent:
        return parse_image_event(value, max_event_bytes=self.options.max_event_bytes,
                                 max_metadata_bytes=self.options.max_metadata_bytes)

    def _start_preparing(self, pending: Pending, tenant: str, describe_ahead: bool = True) -> None:
        """Fetch (for a ``uri``) and decode the event's picture in the tenant's turns, then
        (``describe_ahead``) describe it ahead. Lookups are not: the hashes settle most of them
        without that work (local features, views), which would only add to their latency."""
        event = pending.event
        assert event is not None
        if event.data is not None:
            decoding = self._decodes.submit(tenant, self._image(event.data))
        else:
            pending.fetch = self._fetches.fetch(tenant, event.uri or "")
            decoding = self._fetched_then_decoded(tenant, pending.fetch)
        pending.preparing = self._described(decoding) if describe_ahead else decoding

    def _described(self, decoding: Future[ImageInput]) -> Future[ImageInput]:
        """``decoding``, then the stages' per-image work on the ahead thread
        (Cascade.describe_ahead), so the checking thread finds it done."""
        described: Future[ImageInput] = Future()

        def describe(decoded: Future[ImageInput]) -> None:
            if decoded.exception() is not None:
                _pass_on(decoded, described)
            else:
                self._ahead.submit(self._describe_ahead, decoded.result(), described)
        decoding.add_done_callback(describe)
        return described

    def _describe_ahead(self, image: ImageInput, described: Future[ImageInput]) -> None:
        try:
            self.cascade.describe_ahead(image)
        except Exception:  # noqa: S110  a fault check_batch meets again on the checking
            pass           # thread, where it becomes the record's outcome
        described.set_result(image)

    def _fetched_then_decoded(self, tenant: str, fetch: Future[bytes]) -> Future[ImageInput]:
        prepared: Future[ImageInput] = Future()

        def decode(fetched: Future[bytes]) -> None:
            try:
                decoding = self._decodes.submit(tenant, self._image(fetched.result()))
            except BaseException as exc:  # the fetch failed: that is the record's outcome
                prepared.set_exception(exc)
                return
            decoding.add_done_callback(lambda done: _pass_on(done, prepared))
        fetch.add_done_callback(decode)
        return prepared

    def _take_prepared(self, pending: Pending) -> None:
        if pending.preparing is not None and pending.error is None:
            with self._errors_into(pending):
                pending.image = pending.preparing.result(timeout=0)

    def _image(self, raw: bytes) -> ImageInput:
        return ImageInput(raw, self.cascade.limits, self._decodes.decode)

    def _check(self, ready: list[Pending]) -> None:
        """Decoding ran ahead for all of them, even those the SHA-256 stage may settle: bytes
        that fail to decode can never equal an indexed image's, so this changes no verdict."""
        for item in ready:
            with self._errors_into(item):
                item.image.pixels  # type: ignore[union-attr]  # noqa: B018  (settled ahead)
        checked = [p for p in ready if p.error is None]
        try:
            results = self.cascade.check_batch(
                [(p.event.tenant, p.event.image_id, p.image) for p in checked])  # type: ignore[union-attr]
        except Exception:  # a bug: find the record that trips it, one by one, so it alone fails
            log.exception("batch check failed; checking its records one by one")
            results = [self._check_alone(p) for p in checked]
        for item, result in zip(checked, results, strict=True):
            item.result = result

    def _check_alone(self, pending: Pending) -> CascadeResult | Rejected:
        event, image = pending.event, pending.image
        try:
            return self.cascade.check(event.tenant, event.image_id, image)  # type: ignore[union-attr]
        except Rejected as error:
            return error
        except Exception as exc:
            return self._unexpected(exc, pending.record)

    @contextmanager
    def _errors_into(self, pending: Pending) -> Iterator[None]:
        try:
            yield
        except Rejected as error:
            pending.error = error
        except Exception as exc:  # a bug must cost one event, not the partition
            pending.error = self._unexpected(exc, pending.record)

    def _outcome(self, pending: Pending) -> Verdict | DeadLetter:
        """Never raises: whatever went wrong becomes a dead letter and the stream moves on."""
        event, result = pending.event, pending.result
        if isinstance(result, CascadeResult) and event is not None:
            return result.to_verdict(image_id=event.image_id, tenant=event.tenant,
                                     worker=self.options.worker_name,
                                     model_version=self.cascade.model_version,
                                     submitted_at=event.submitted_at, metadata=event.metadata)
        error = pending.error or result
        assert isinstance(error, Rejected)
        return self._dead_letter(error, pending.record, event)

    @staticmethod
    def _unexpected(exc: Exception, record: InputRecord) -> Rejected:
        log.error("processing failed for record at %s/%s/%s", record.topic, record.partition,
                  record.offset, exc_info=exc)
        return Rejected(Reason.PROCESSING_FAILED, f"{type(exc).__name__}: {exc}")

    def _dead_letter(self, error: Rejected, record: InputRecord,
                     event: ImageEvent | None) -> DeadLetter:
        image_id, tenant = ((event.image_id, event.tenant) if event else
                            identity_of(record.value, max_event_bytes=self.options.max_event_bytes))
        return DeadLetter.build(
            error, record.value, worker=self.options.worker_name,
            excerpt_bytes=self.options.dead_letter_excerpt_bytes, key=record.key,
            headers=record.headers, topic=record.topic, partition=record.partition,
            offset=record.offset, image_id=image_id, tenant=tenant)


def _names_tenant(value: bytes) -> bool:
    """Whether a (valid) event names its tenant, rather than taking the schema's default."""
    return "tenant" in json.loads(value)


def _pass_on(source: Future[ImageInput], target: Future[ImageInput]) -> None:
    error = source.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())
