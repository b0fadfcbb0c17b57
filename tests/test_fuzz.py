"""Fuzzing the two entry points of untrusted bytes: whatever comes in, the parser and the
decoder either succeed or raise Rejected (a dead letter with a reason), never anything else.

Derandomised, so CI runs the same cases every time; issue 6 widens this (atheris, bigger corpus).
"""
from __future__ import annotations

import io
import json

from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from dupwatch.detectors.image import DecodeLimits, decode
from dupwatch.schemas import Rejected, parse_image_event
from dupwatch.streams.samples import samples_dir

FUZZ = settings(max_examples=600, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


def _seed_files() -> list[bytes]:
    """One small real photo in every accepted format: the starting points for mutations."""
    photo = Image.open(samples_dir() / "originals" / "coffee.jpg").convert("RGB").resize((64, 48))
    files = []
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"):
        buffer = io.BytesIO()
        photo.save(buffer, fmt)
        files.append(buffer.getvalue())
    return files


SEEDS = _seed_files()


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw[: draw(st.integers(1, len(raw)))])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20)


@FUZZ
@given(damaged_images())
def test_damaged_images_decode_or_are_rejected(raw: bytes) -> None:
    try:
        assert decode(raw, DecodeLimits(max_pixels=4_000_000)).mode == "RGB"
    except Rejected as rejected:
        assert rejected.detail


@FUZZ
@given(json_values | st.fixed_dictionaries({"image_id": json_values, "data": json_values},
                                           optional={"tenant": json_values, "metadata": json_values}))
def test_any_json_parses_or_is_rejected(document: object) -> None:
    try:
        event = parse_image_event(json.dumps(document).encode(), max_event_bytes=10_000,
                                  max_metadata_bytes=1_000)
        assert event.image_id
    except Rejected as rejected:
        assert rejected.detail
