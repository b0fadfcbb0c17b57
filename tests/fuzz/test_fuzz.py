"""Fuzzing the entry points of untrusted bytes: whatever comes in, the parser and the decoder
either succeed or raise Rejected (a dead letter with a reason), never anything else, and a
bad event in a batch costs only itself.

Hypothesis runs derandomised, so CI sees the same cases every time; the atheris (libFuzzer)
harness in tests/fuzz/ runs for a fixed number of inputs from a fixed seed.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from dupwatch.wiring.cascade import build_cascade, build_processor
from dupwatch.imaging.image import DecodeLimits, decode
from dupwatch.schemas import DeadLetter, Reason, Rejected, Verdict, parse_image_event
from dupwatch.settings import Settings
from dupwatch.pipeline.processor import InputRecord, Processor
from dupwatch.locations import samples_dir

FUZZ = settings(max_examples=600, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
HARNESS = Path(__file__).parent / "fuzz_inputs.py"
ATHERIS_RUNS = 3000


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _png_bomb(width: int, height: int) -> bytes:
    """A PNG header declaring width x height around a few bytes of data (50,000^2 in ~100 B)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _seed_files() -> list[bytes]:
    """Small real images covering the issue's corpus: every accepted format, the awkward
    modes, animations, odd EXIF, bombs and formats we refuse. Mutations start from these."""
    photo = Image.open(samples_dir() / "originals" / "coffee.jpg").convert("RGB").resize((64, 48))
    clear = photo.convert("RGBA")
    clear.putalpha(96)
    flipped = photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    exif = Image.Exif()
    exif[0x0112] = 65535  # an orientation no viewer knows
    files = [_encode(photo, fmt) for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")]
    files += [
        _encode(photo.convert("CMYK"), "JPEG"), _encode(photo.convert("CMYK"), "TIFF"),
        _encode(photo.convert("I;16"), "PNG"), _encode(photo.convert("F"), "TIFF"),
        _encode(clear.quantize(), "PNG"),                       # palette with alpha
        _encode(photo.convert("P"), "GIF", transparency=3),
        _encode(clear, "WEBP"), _encode(photo, "JPEG", progressive=True),
        _encode(photo, "JPEG", exif=exif),
        *(_encode(photo, fmt, save_all=True, append_images=[flipped], duration=50)
          for fmt in ("GIF", "WEBP", "PNG")),                   # animations: first frame only
        _encode(photo, "TIFF", save_all=True, append_images=[flipped]),  # two pages
        _encode(photo, "MPO", save_all=True, append_images=[flipped]),   # two pictures
        _png_bomb(50_000, 50_000), _encode(photo, "ICO"), _encode(photo, "PPM"),
        b"<svg xmlns='http://www.w3.org/2000/svg' width='1' height='1'/>", b"%PDF-1.4\n", b"",
    ]
    return files


SEEDS = _seed_files()
MAGICS = sorted({seed[:4] for seed in SEEDS if len(seed) >= 4})


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    """A seed with bytes changed, maybe another format's magic in front, maybe truncated."""
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    if raw and draw(st.booleans()):
        raw[:4] = draw(st.sampled_from(MAGICS))  # wrong magic for the rest of the file
    for _ in range(draw(st.integers(0, 8)) if raw else 0):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw[: draw(st.integers(0, len(raw)))])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20)
CONTENT_TYPES = ["image/jpeg", "image/png", "image/webp", "image/gif", "image/svg+xml",
                 "application/pdf", "text/plain"]
URIS = st.sampled_from(["file:///etc/passwd", "file:///", "file://host/x", "http://127.0.0.1/x",
                        "https://169.254.169.254/latest", "http://[::1]/", "gopher://x/",
                        "file:///%2e%2e/etc/passwd"]) | st.builds(
    str.__add__, st.sampled_from(["file://", "file:///", "http://", "https://127.0.0.1"]),
    st.text(max_size=40))


@FUZZ
@given(damaged_images() | st.binary(max_size=2048))
def test_damaged_images_decode_or_are_rejected(raw: bytes) -> None:
    try:
        assert decode(raw, DecodeLimits(max_pixels=4_000_000)).mode == "RGB"
    except Rejected as rejected:
        assert rejected.detail


@FUZZ
@given(json_values | st.fixed_dictionaries(
    {"image_id": json_values, "data": json_values},
    optional={"tenant": json_values, "metadata": json_values, "schema_version": json_values,
              "uri": json_values | URIS, "content_type": json_values,
              "submitted_at": json_values}))
def test_any_json_parses_or_is_rejected(document: object) -> None:
    try:
        event = parse_image_event(json.dumps(document).encode(), max_event_bytes=10_000,
                                  max_metadata_bytes=1_000)
        assert event.image_id
    except Rejected as rejected:
        assert rejected.detail


@FUZZ
@given(st.binary(max_size=512) | st.text(max_size=200).map(str.encode))
def test_any_bytes_parse_or_are_rejected(payload: bytes) -> None:
    try:
        assert parse_image_event(payload, max_event_bytes=10_000, max_metadata_bytes=1_000).image_id
    except Rejected as rejected:
        assert rejected.detail


@pytest.fixture(scope="module")
def processor(tmp_path_factory) -> Processor:
    settings = Settings(stages=["sha256", "phash"], decode_threads=2, max_event_bytes=100_000,
                        uri_roots=[str(tmp_path_factory.mktemp("uploads"))],
                        fetch_allow_hosts=["127.0.0.1"])
    return build_processor(settings, build_cascade(settings))


@st.composite
def fuzzed_events(draw: st.DrawFn) -> bytes:
    """Events as a producer might get them wrong: any image bytes under any declared type, a
    bad URI, base64 that is not, wrong types and sizes."""
    event: dict = {"image_id": draw(st.text(min_size=1, max_size=8)), "tenant": "fuzz"}
    source = draw(st.sampled_from(["data", "uri", "bad-base64"]))
    if source == "data":
        event["data"] = base64.b64encode(draw(damaged_images())).decode() or "AA=="
    elif source == "uri":
        event["uri"] = draw(URIS)
    else:
        event["data"] = draw(st.text(min_size=1, max_size=30))
    if draw(st.booleans()):
        event["content_type"] = draw(st.sampled_from(CONTENT_TYPES))
    if draw(st.booleans()):
        event["metadata"] = draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3))
    return json.dumps(event).encode()


@settings(FUZZ, max_examples=200)
@given(fuzzed_events())
def test_a_bad_event_costs_only_itself(processor: Processor, payload: bytes) -> None:
    good = json.dumps({"image_id": "good", "tenant": "fuzz",
                       "data": base64.b64encode(SEEDS[0]).decode()}).encode()
    fuzzed, after = processor.handle_batch([InputRecord(payload), InputRecord(good)])
    assert isinstance(after, Verdict)
    if isinstance(fuzzed, DeadLetter):
        assert fuzzed.reason != Reason.PROCESSING_FAILED, fuzzed.detail  # that would be a bug
        assert fuzzed.detail


def test_atheris_finds_only_rejections(tmp_path: Path) -> None:
    try:
        import atheris  # noqa: F401  (the harness imports it in its own process)
    except ImportError as exc:
        pytest.skip(f"atheris cannot be imported here ({exc}); it ships wheels for Linux x86_64 "
                    "only, see pyproject's test extra")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for number, seed in enumerate(SEEDS):
        (corpus / f"image-{number}").write_bytes(b"\x01" + seed)
    for number, event in enumerate([{"image_id": "a", "data": base64.b64encode(SEEDS[1]).decode()},
                                    {"image_id": "b", "uri": "file:///x.jpg", "metadata": {"k": [1]}},
                                    {"image_id": "c", "data": "%%", "schema_version": 2}]):
        (corpus / f"event-{number}").write_bytes(b"\x00" + json.dumps(event).encode())
    result = subprocess.run(
        [sys.executable, str(HARNESS), f"-runs={ATHERIS_RUNS}", "-seed=1", "-max_len=20000",
         "-timeout=20", "-rss_limit_mb=4096", str(corpus)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONHASHSEED": "0"})
    assert result.returncode == 0, result.stderr[-5000:]
    # libFuzzer counts the seed corpus's inputs on top of -runs (seen: "Done 3018 runs")
    done = re.search(r"^Done (\d+) runs", result.stderr, flags=re.M)
    assert done is not None and int(done.group(1)) >= ATHERIS_RUNS, result.stderr[-2000:]
