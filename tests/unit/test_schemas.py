"""The wire formats: documented examples validate, the parser rejects with the right reason."""
from __future__ import annotations

import base64
import json
import re

import pytest

from dupwatch.wiring.cascade import build_cascade, build_processor
from dupwatch.locations import docs_page
from dupwatch.schemas import (
    DeadLetter, Reason, Rejected, Verdict, VerdictLabel, parse_image_event, schema, utc_now,
    validate,
)
from dupwatch.pipeline.processor import InputRecord, Processor
from dupwatch.schemas.validation import SCHEMA_NAMES
from dupwatch.settings import Settings

WIRE_FORMATS = docs_page("wire-formats.md")
LIMITS = {"max_event_bytes": 1_000_000, "max_metadata_bytes": 1_000}


def _documented_examples() -> list[tuple[str, str]]:
    """(schema name, JSON text) for each docs/wire-formats.md block tagged <!-- example: NAME -->."""
    text = WIRE_FORMATS.read_text()
    return re.findall(r"<!-- example: (\w+) -->\s*```json\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_documents_own_examples_validate(name: str) -> None:
    examples = schema(name)["examples"]
    assert examples
    for example in examples:
        assert validate(name, example) == []


def test_every_documented_example_validates() -> None:
    examples = _documented_examples()
    assert {name for name, _ in examples} == set(SCHEMA_NAMES)
    for name, text in examples:
        assert validate(name, json.loads(text)) == [], text


def _nested(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _event(**fields) -> bytes:
    return json.dumps({"image_id": "a", "data": base64.b64encode(b"img").decode(), **fields}).encode()


def test_a_valid_event_parses_with_defaults() -> None:
    event = parse_image_event(_event(metadata={"k": [1, 2]}), **LIMITS)
    assert (event.image_id, event.tenant, event.data, event.metadata) == ("a", "default", b"img", {"k": [1, 2]})


@pytest.mark.parametrize("payload, reason", [
    (b"\xff\xfe not json", Reason.SCHEMA_INVALID),
    (b"[1, 2]", Reason.SCHEMA_INVALID),
    (json.dumps({"data": "aW1n"}).encode(), Reason.SCHEMA_INVALID),                 # no image_id
    (_event(uri="file:///x.jpg"), Reason.SCHEMA_INVALID),                          # data and uri
    (json.dumps({"image_id": "a"}).encode(), Reason.SCHEMA_INVALID),               # neither
    (_event(image_id=7), Reason.SCHEMA_INVALID),                                   # wrong type
    (_event(tenant="../etc"), Reason.SCHEMA_INVALID),                               # unsafe tenant
    (_event(submitted_at="yesterday"), Reason.SCHEMA_INVALID),
    (_event(colour="red"), Reason.SCHEMA_INVALID),                                  # unknown field
    (_event(schema_version=2), Reason.UNSUPPORTED_SCHEMA_VERSION),
    (_event(data="not base64!"), Reason.INVALID_BASE64),
    (_event(metadata={"blob": "x" * 2000}), Reason.TOO_LARGE),
    (_event(data=base64.b64encode(b"x" * 1_000_000).decode()), Reason.TOO_LARGE),
    (b"[" * 200_000 + b"]" * 200_000, Reason.SCHEMA_INVALID),                    # RecursionError
    (_event(metadata={"a": _nested(32)}), Reason.SCHEMA_INVALID),               # 34 levels
    (_event().replace(b"}", b', "metadata": {"n": ' + b"9" * 5000 + b"}}"),
     Reason.SCHEMA_INVALID),                                                       # ValueError
    (_event().replace(b"}", b', "metadata": {"x": NaN}}'), Reason.SCHEMA_INVALID),
    (_event().replace(b"}", b', "metadata": {"x": -Infinity}}'), Reason.SCHEMA_INVALID),
    (_event().replace(b"}", b', "metadata": {"x": 1e999}}'), Reason.SCHEMA_INVALID),
])
def test_bad_events_are_rejected_with_a_reason(payload: bytes, reason: Reason) -> None:
    with pytest.raises(Rejected) as caught:
        parse_image_event(payload, **LIMITS)
    assert caught.value.reason == reason
    assert caught.value.detail


@pytest.fixture(scope="module")
def processor() -> Processor:
    settings = Settings(max_metadata_bytes=1_000, stages=["sha256"])
    return build_processor(settings, build_cascade(settings))


@pytest.mark.parametrize("payload, identity", [
    (b'{"image_id": "bad-1", "tenant": "js", "data": "!!!notbase64"}', ("bad-1", "js")),
    (_event(image_id="big", metadata={"blob": "x" * 2000}), ("big", "default")),
    (_event(image_id="b", tenant="../etc"), ("b", None)),            # an unsafe tenant: not echoed
    (_event(image_id=7), (None, "default")),
    (json.dumps({"image_id": "a"}).encode(), ("a", "default")),     # no data, still named
    (b"[1, 2]", (None, None)),
    (b"\xff\xfe not json", (None, None)),
])
def test_a_dead_letter_carries_whatever_of_the_event_could_be_read(payload, identity,
                                                                   processor) -> None:
    """A rejected event's dead letter names its image and tenant where the event did, so the
    uploader can be told (a kafkajs client's bad base64 came back with both null)."""
    letter = processor.handle(InputRecord(value=payload))
    assert isinstance(letter, DeadLetter)
    assert (letter.image_id, letter.tenant) == identity


def test_records_the_code_writes_validate(samples) -> None:
    cascade = build_cascade(Settings(top_k=3))
    original, copy = samples[0].file, next(s.file for s in samples if s.source == samples[0].file.image_id)
    for image in (original, copy):
        result = cascade.check("t", image.image_id, cascade.image(image.path.read_bytes()))
        verdict = result.to_verdict(image_id=image.image_id, tenant="t", worker="w",
                                    metadata={"order": 1})
        assert validate("verdict", verdict.to_dict()) == []
    letter = DeadLetter.build(Rejected(Reason.DECODE_FAILED, "bad"), b"x" * 5000, worker="w",
                              excerpt_bytes=100, key=b"k", headers=[("h", b"v")], topic="in",
                              partition=0, offset=9)
    assert validate("dead_letter", letter.to_dict()) == []
    assert len(base64.b64decode(letter.excerpt)) == 100 and letter.payload_bytes == 5000


def test_a_verdict_never_carries_nan_or_infinity() -> None:
    verdict = Verdict(image_id="a", tenant="t", verdict=VerdictLabel.UNIQUE, match_id=None,
                      stage=None, score=None, distance=None, candidates=[], timings_ms={},
                      worker="w", processed_at=utc_now(), metadata={"x": float("nan")})
    with pytest.raises(ValueError):
        verdict.to_json()
