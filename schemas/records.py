"""Typed records for the three wire formats (see the JSON Schemas in ``v1/``)."""
from __future__ import annotations

import base64
import dataclasses
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

SCHEMA_VERSION = 1


class VerdictLabel(str, Enum):
    """What a verdict says of an image (the wire value of ``verdict``): unique (no decisive match),
    exact_duplicate (same bytes), near_duplicate (pHash-close copy), variant (edited copy)."""
    UNIQUE = "unique"
    EXACT_DUPLICATE = "exact_duplicate"
    NEAR_DUPLICATE = "near_duplicate"
    VARIANT = "variant"


class Flag(str, Enum):
    """Notes on a verdict that change how to read it."""
    # Flat or nearly flat picture: matched only byte for byte (sha256), never by a hash or
    # descriptor, which cannot tell one flat picture from another of a different colour.
    LOW_INFORMATION = "low_information"
    # The image_id named different bytes before: this is new content under an old id, judged
    # afresh; it replaces the old content in the index.
    IMAGE_ID_REUSED = "image_id_reused"


class Reason(str, Enum):
    """Stable dead-letter reason codes: downstream tooling may branch on them."""
    SCHEMA_INVALID = "schema_invalid"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    INVALID_BASE64 = "invalid_base64"
    TOO_LARGE = "too_large"
    DECODE_FAILED = "decode_failed"
    DECODE_TIMEOUT = "decode_timeout"
    TOO_COMPLEX = "too_complex"       # structure that would cost far more to decode than its size
    UNSUPPORTED_FORMAT = "unsupported_format"
    FETCH_REFUSED = "fetch_refused"   # policy: never retried (outside uri_roots, SSRF, allowlist)
    FETCH_FAILED = "fetch_failed"     # the source failed, after retries where that could help
    PROCESSING_FAILED = "processing_failed"


class Rejected(Exception):
    """Input that dupwatch cannot process; becomes a dead-letter record, never a crash."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# A URL's user:password@ and ?query may each hold a credential (a presigned URL's signature).
# "\/" and \u0026 allow for JSON escaping, as the excerpt is raw payload bytes.
_URL_START = rb"[A-Za-z][A-Za-z0-9+.-]*:(?:\\?/){2}"
_USERINFO = re.compile(rb"(" + _URL_START + rb")[^/\\?#@\s\"]*@")
_QUERY = re.compile(rb"(" + _URL_START + rb"[^?#\s\"]*\?)[^#\s\"]*")


def redact_urls(text: bytes) -> bytes:
    """``text`` with the user:password@ and query of every URL in it replaced by ``***``."""
    return _QUERY.sub(rb"\1***", _USERINFO.sub(rb"\1***@", text))


def strict_json_bytes(doc: Any) -> bytes:
    """Compact JSON that strict parsers accept: NaN or Infinity raise ValueError (a bug: input
    with them is refused, see validation.strict_json)."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ControlCommand:
    """``remove``: take ``image_ids`` down from every index; ``bank_add``: index one image
    (``image_ids[0]``, bytes in ``data``) into the tenant's bank, with no verdict."""
    action: str
    tenant: str
    image_ids: list[str]
    data: bytes | None = None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "action": self.action,
                               "tenant": self.tenant}
        if self.action == "bank_add":
            doc.update(image_id=self.image_ids[0], data=base64.b64encode(self.data or b"").decode())
        else:
            doc["image_ids"] = self.image_ids
        return strict_json_bytes(doc)


@dataclass(frozen=True)
class ImageEvent:
    """One image to check (an input record, v1/image_event.schema.json): its bytes in ``data`` or a
    ``uri`` to fetch them from, in a tenant's namespace. Built from the wire by
    ``parse_image_event`` (which raises Rejected); ``to_json`` writes what publishers send."""
    image_id: str
    tenant: str = "default"
    data: bytes | None = None
    uri: str | None = None
    content_type: str | None = None
    submitted_at: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "image_id": self.image_id,
                               "tenant": self.tenant}
        if self.data is not None:
            doc["data"] = base64.b64encode(self.data).decode("ascii")
        if self.uri is not None:
            doc["uri"] = self.uri
        for name in ("content_type", "submitted_at"):
            if getattr(self, name) is not None:
                doc[name] = getattr(self, name)
        if self.metadata:
            doc["metadata"] = self.metadata
        return strict_json_bytes(doc)

    @property
    def key(self) -> bytes:
        """Record key: same tenant and id land on the same partition, so redeliveries stay ordered."""
        return f"{self.tenant}/{self.image_id}".encode()


@dataclass(frozen=True)
class Candidate:
    """An earlier image a stage found: its calibrated score in [0, 1] (for a verdict's decisive
    match, combined over the stages run) and the distance in the stage's unit (bits for the pHash
    stages, cosine distance for the embedding, 0 for sha256)."""
    image_id: str
    stage: str
    score: float
    distance: float


@dataclass(frozen=True)
class Verdict:
    """The outcome of one image event (v1/verdict.schema.json; the worker publishes it, scan
    prints it): its label, the decisive match (``match_id``, ``stage``, ``score``, ``distance``;
    None when unique), the best candidates, per-step timings in ms, and the event's metadata
    echoed back. Times are ISO 8601 UTC strings."""
    image_id: str
    tenant: str
    verdict: VerdictLabel
    match_id: str | None
    stage: str | None
    score: float | None
    distance: float | None
    candidates: list[Candidate]
    timings_ms: dict[str, float]
    worker: str
    processed_at: str
    model_version: str | None = None
    submitted_at: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    flags: list[Flag] = field(default_factory=list)
    # What the verification stage found when it decided: kind of picture, inliers, agreement,
    # the region of match_id that this image shows (absent otherwise)
    evidence: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["verdict"] = self.verdict.value
        doc["flags"] = [flag.value for flag in self.flags]
        for optional in ("metadata", "evidence"):
            if not doc[optional]:
                del doc[optional]
        return doc

    def to_json(self) -> bytes:
        return strict_json_bytes(self.to_dict())

    @classmethod
    def from_json(cls, raw: bytes | str) -> "Verdict":
        doc = json.loads(raw)
        doc["verdict"] = VerdictLabel(doc["verdict"])
        doc["candidates"] = [Candidate(**c) for c in doc["candidates"]]
        doc["flags"] = [Flag(flag) for flag in doc.get("flags", [])]
        return cls(**doc)


@dataclass(frozen=True)
class DeadLetter:
    """An input that got no verdict (v1/dead_letter.schema.json), on the dead-letter topic: a stable
    ``reason`` code, a human ``detail``, where the record was read and a redacted, base64 excerpt
    of its payload (``payload_bytes`` long in all), so nothing is lost silently."""
    reason: Reason
    detail: str
    image_id: str | None
    tenant: str | None
    source: dict[str, Any]
    key: str | None
    headers: list[dict[str, str]]
    excerpt: str
    payload_bytes: int
    worker: str
    failed_at: str
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def build(cls, error: Rejected, payload: bytes, *, worker: str, excerpt_bytes: int,
              key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None,
              topic: str | None = None, partition: int | None = None, offset: int | None = None,
              image_id: str | None = None, tenant: str | None = None) -> "DeadLetter":
        b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
        return cls(
            reason=error.reason, detail=error.detail, image_id=image_id, tenant=tenant,
            source={"topic": topic, "partition": partition, "offset": offset},
            key=None if key is None else b64(key),
            headers=[{"name": name, "value": b64(value or b"")} for name, value in headers or []],
            excerpt=b64(redact_urls(payload[:excerpt_bytes])), payload_bytes=len(payload),
            worker=worker,
            failed_at=utc_now())

    def to_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["reason"] = self.reason.value
        return doc

    def to_json(self) -> bytes:
        return strict_json_bytes(self.to_dict())
