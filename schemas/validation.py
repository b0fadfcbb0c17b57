"""Schema loading and validation, and the strict parsers for image events and control commands."""
from __future__ import annotations

import base64
import binascii
import json
import math
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from dupwatch.schemas.records import SCHEMA_VERSION, ControlCommand, ImageEvent, Reason, Rejected

SCHEMA_NAMES = ("image_event", "verdict", "dead_letter", "control")
# Input limits beyond the schemas: events are flat records with a small free-form metadata
# object; nothing legitimate comes near these, and both bound the parser's work.
MAX_JSON_DEPTH = 32
MAX_NUMBER_CHARS = 100


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


def identity_of(payload: bytes, *, max_event_bytes: int) -> tuple[str | None, str | None]:
    """The ``image_id`` and ``tenant`` an event names, each where it is valid by the schema, even
    when the rest of the event is not (bad base64, metadata too large, a field missing): a dead
    letter carries them, so the uploader can be told. (None, None) for what is not a JSON
    object within the size limit; a readable event that names no tenant is the default's."""
    if len(payload) > max_event_bytes:
        return None, None
    try:
        doc = strict_json(payload)
    except Rejected:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    fields = schema("image_event")["properties"]
    named = {name: doc.get(name, fields[name].get("default")) for name in ("image_id", "tenant")}
    valid = {name: value if Draft202012Validator(fields[name]).is_valid(value) else None
             for name, value in named.items()}
    return valid["image_id"], valid["tenant"]


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
    doc = strict_json(payload)
    if isinstance(doc, dict) and doc.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise Rejected(Reason.UNSUPPORTED_SCHEMA_VERSION,
                       f"schema_version {doc['schema_version']!r} is not supported "
                       f"(this worker reads version {SCHEMA_VERSION})")
    errors = validate(name, doc)
    if errors:
        raise Rejected(Reason.SCHEMA_INVALID, "; ".join(errors[:5]))
    return doc


def strict_json(payload: bytes) -> Any:
    """``payload`` parsed as strict JSON (RFC 8259: no NaN or Infinity), nested at most
    MAX_JSON_DEPTH deep, numbers at most MAX_NUMBER_CHARS characters; else Rejected."""
    try:
        doc = json.loads(payload, parse_constant=_refuse_constant, parse_int=_bounded_int,
                         parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected(Reason.SCHEMA_INVALID, f"event is not JSON: {exc}") from None
    except RecursionError:  # the parser recurses per level; far too deep for any event
        raise Rejected(Reason.SCHEMA_INVALID, f"event is nested deeper than the limit of "
                                              f"{MAX_JSON_DEPTH} levels") from None
    depth = _depth(doc)
    if depth > MAX_JSON_DEPTH:
        raise Rejected(Reason.SCHEMA_INVALID, f"event is nested {depth} levels deep, the limit "
                                              f"is {MAX_JSON_DEPTH}")
    return doc


def _refuse_constant(name: str) -> Any:
    raise Rejected(Reason.SCHEMA_INVALID, f"{name} is not a JSON number (RFC 8259)")


def _bounded_int(text: str) -> int:
    return int(_bounded(text))


def _finite_float(text: str) -> float:
    number = float(_bounded(text))
    if not math.isfinite(number):
        raise Rejected(Reason.SCHEMA_INVALID, f"number {text[:40]} is out of range (it reads "
                                              f"as {number}, which JSON cannot carry)")
    return number


def _bounded(text: str) -> str:
    if len(text) > MAX_NUMBER_CHARS:
        raise Rejected(Reason.SCHEMA_INVALID, f"a number of {len(text)} characters "
                                              f"({text[:20]}...), the limit is {MAX_NUMBER_CHARS}")
    return text


def _depth(doc: Any) -> int:
    """How deeply arrays and objects nest in ``doc`` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        value, level = stack.pop()
        children = (value.values() if isinstance(value, dict)
                    else value if isinstance(value, list) else None)
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


def _decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected(Reason.INVALID_BASE64, f"data is not valid base64: {exc}") from None
