"""Schema loading and validation, and the strict parsers for image events and control commands."""
from __future__ import annotations

import base64
import binascii
import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from dupwatch.schemas.records import SCHEMA_VERSION, ControlCommand, ImageEvent, Reason, Rejected

SCHEMA_NAMES = ("image_event", "verdict", "dead_letter", "control")


@cache
def schema(name: str) -> dict[str, Any]:
    """The JSON Schema document ``v1/<name>.schema.json``."""
    text = resources.files("dupwatch.schemas").joinpath(f"v1/{name}.schema.json").read_text()
    return json.loads(text)


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name), format_checker=FormatChecker())


def validate(name: str, document: Any) -> list[str]:
    """Every violation of schema ``name`` in ``document``, as readable strings (empty: valid)."""
    return [_describe(error) for error in _validator(name).iter_errors(document)]


def _describe(error: Any) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "(event)"
    return f"{where}: {error.message[:200]}"


def parse_image_event(payload: bytes, *, max_event_bytes: int, max_metadata_bytes: int) -> ImageEvent:
    """Parse and validate one input record, or raise :class:`Rejected` saying why."""
    doc = _checked_document("image_event", payload, max_event_bytes)
    metadata = doc.get("metadata", {})
    metadata_size = len(json.dumps(metadata, separators=(",", ":")))
    if metadata_size > max_metadata_bytes:
        raise Rejected(Reason.TOO_LARGE,
                       f"metadata is {metadata_size} bytes, the limit is {max_metadata_bytes}")
    return ImageEvent(
        image_id=doc["image_id"], tenant=doc.get("tenant", "default"),
        data=_decode_base64(doc["data"]) if "data" in doc else None, uri=doc.get("uri"),
        content_type=doc.get("content_type"), submitted_at=doc.get("submitted_at"),
        metadata=metadata)


def parse_control(payload: bytes, *, max_event_bytes: int) -> ControlCommand:
    """Parse and validate one control command, or raise :class:`Rejected` saying why."""
    doc = _checked_document("control", payload, max_event_bytes)
    if doc["action"] == "bank_add":
        return ControlCommand("bank_add", doc["tenant"], [doc["image_id"]],
                              _decode_base64(doc["data"]))
    return ControlCommand(doc["action"], doc["tenant"], list(doc["image_ids"]))


def _checked_document(name: str, payload: bytes, max_bytes: int) -> Any:
    """The payload as JSON, within the size limit, in the supported version, valid."""
    if len(payload) > max_bytes:
        raise Rejected(Reason.TOO_LARGE, f"event is {len(payload)} bytes, the limit is {max_bytes}")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected(Reason.SCHEMA_INVALID, f"event is not JSON: {exc}") from None
    if isinstance(doc, dict) and doc.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise Rejected(Reason.UNSUPPORTED_SCHEMA_VERSION,
                       f"schema_version {doc['schema_version']!r} is not supported "
                       f"(this worker reads version {SCHEMA_VERSION})")
    errors = validate(name, doc)
    if errors:
        raise Rejected(Reason.SCHEMA_INVALID, "; ".join(errors[:5]))
    return doc


def _decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected(Reason.INVALID_BASE64, f"data is not valid base64: {exc}") from None
