"""The shared decode: real photos in every mode come out upright 8-bit RGB; bad bytes are rejected."""
from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import imagehash
import numpy as np
import pytest
from PIL import Image

from dupwatch.imaging.image import DecodeLimits, decode
from dupwatch.imaging.watchdog import Overdue, Watchdog
from dupwatch.schemas import Reason, Rejected

LIMITS = DecodeLimits()


@pytest.fixture(scope="module")
def photo(samples) -> Image.Image:
    return Image.open(next(s for s in samples if s.file.image_id == "originals/coffee.jpg").file.path).convert("RGB")


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _distance(a: Image.Image, b: Image.Image) -> int:
    return int(imagehash.phash(a) - imagehash.phash(b))


def test_every_sample_decodes_to_rgb(samples) -> None:
    for sample in samples:
        image = decode(sample.file.path.read_bytes(), LIMITS)
        assert image.mode == "RGB" and min(image.size) > 0


def test_exif_orientation_is_applied(photo: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned left: viewers rotate it 90° clockwise
    stored = photo.transpose(Image.Transpose.ROTATE_90)
    upright = decode(_encode(stored, "JPEG", quality=95, exif=exif), LIMITS)
    assert upright.size == photo.size
    assert _distance(upright, photo) <= 2
    assert _distance(decode(_encode(stored, "JPEG", quality=95), LIMITS), photo) > 10


@pytest.mark.parametrize("mode, fmt", [
    ("RGBA", "PNG"), ("LA", "PNG"), ("L", "PNG"), ("1", "PNG"), ("CMYK", "JPEG"),
    ("CMYK", "TIFF"), ("RGB", "WEBP"), ("RGB", "BMP"), ("P", "GIF"), ("I;16", "TIFF"),
    ("I;16B", "TIFF"), ("F", "TIFF"), ("RGBA", "WEBP"), ("LA", "WEBP"), ("RGBA", "TIFF"),
])
def test_modes_normalise_to_rgb_and_keep_the_picture(photo: Image.Image, mode: str, fmt: str) -> None:
    decoded = decode(_encode(photo.convert(mode), fmt), LIMITS)
    assert decoded.mode == "RGB" and decoded.size == photo.size
    assert _distance(decoded, photo) <= (12 if mode == "1" else 4)


def test_transparency_is_flattened_on_white(photo: Image.Image) -> None:
    rgba = photo.convert("RGBA")
    rgba.putalpha(0)
    assert np.asarray(decode(_encode(rgba, "PNG"), LIMITS)).min() == 255
    palette = photo.convert("P")
    palette.info["transparency"] = 0
    assert decode(_encode(palette, "PNG"), LIMITS).mode == "RGB"
    # palette with alpha: a tRNS entry per palette colour, and GIF's one transparent index
    clear = photo.convert("RGBA")
    clear.putalpha(0)
    assert np.asarray(decode(_encode(clear.quantize(), "PNG"), LIMITS)).min() == 255
    assert _distance(decode(_encode(palette, "GIF", transparency=200), LIMITS), photo) <= 6


def test_sixteen_bit_images_use_their_whole_range(photo: Image.Image) -> None:
    grey = np.asarray(photo.convert("L"), dtype=np.uint16) * 257  # 0..65535
    decoded = decode(_encode(Image.fromarray(grey), "PNG"), LIMITS)
    assert _distance(decoded, photo.convert("L")) <= 2
    assert np.asarray(decoded).max() == 255  # not clipped into a white picture


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])  # PNG: APNG
def test_animations_use_their_first_frame(photo: Image.Image, fmt: str) -> None:
    other = photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    raw = _encode(photo, fmt, save_all=True, append_images=[other, photo], duration=100, loop=0)
    assert Image.open(io.BytesIO(raw)).n_frames == 3
    assert _distance(decode(raw, LIMITS), photo) <= 4


def test_an_mpo_decodes_as_its_first_picture(photo: Image.Image) -> None:
    other = photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    raw = _encode(photo, "MPO", save_all=True, append_images=[other], quality=95)
    assert Image.open(io.BytesIO(raw)).format == "MPO"
    assert _distance(decode(raw, LIMITS), photo) <= 2


def _exif_orientation(field_type: int, count: int, value: bytes) -> bytes:
    """Raw EXIF (little-endian TIFF) whose only entry is Orientation, typed and sized at will."""
    entry = struct.pack("<HHHI", 1, 0x0112, field_type, count) + value.ljust(4, b"\0")[:4]
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + entry + struct.pack("<I", 0)


@pytest.mark.parametrize("exif", [
    _exif_orientation(3, 1, struct.pack("<H", 0)), _exif_orientation(3, 1, struct.pack("<H", 9)),
    _exif_orientation(3, 1, struct.pack("<H", 65535)),
    _exif_orientation(4, 1, struct.pack("<I", 0xFFFFFFFF)),  # LONG
    _exif_orientation(8, 1, struct.pack("<h", -1)),          # SSHORT
    _exif_orientation(2, 4, b"abc\0"),                       # ASCII
    _exif_orientation(5, 1, struct.pack("<I", 8)),           # RATIONAL
    _exif_orientation(3, 1000, b"\0\0\0\0"),               # count past the end of the data
], ids=["0", "9", "65535", "long-max", "sshort-minus-1", "ascii", "rational", "count-1000"])
def test_extreme_exif_orientation_values_are_ignored(photo: Image.Image, exif: bytes) -> None:
    stored = photo.transpose(Image.Transpose.ROTATE_90)
    decoded = decode(_encode(stored, "JPEG", quality=95, exif=exif), LIMITS)
    assert decoded.size == stored.size  # kept as stored: only 1..8 mean a turn or a flip
    assert _distance(decoded, stored) <= 2


def test_jpeg_draft_decoding_keeps_the_hash(photo: Image.Image) -> None:
    big = photo.resize((photo.width * 4, photo.height * 4), Image.Resampling.LANCZOS)
    raw = _encode(big, "JPEG", quality=90)
    drafted = decode(raw, DecodeLimits(draft_min_side=256))
    full = decode(raw, DecodeLimits(draft_min_side=0))
    assert drafted.size[0] < full.size[0]  # it really decoded at reduced scale
    assert min(drafted.size) >= 256
    assert _distance(drafted, full) <= 2


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds almost no data: a decompression bomb's shape."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("raw, reason", [
    (b"", Reason.DECODE_FAILED),
    (bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), Reason.DECODE_FAILED),
    (b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>", Reason.UNSUPPORTED_FORMAT),
    (_png_header_only(50_000, 50_000), Reason.TOO_LARGE),
    (_png_header_only(9_000, 9_000), Reason.TOO_LARGE),
    (b"\xef\xbb\xbf<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>",
     Reason.UNSUPPORTED_FORMAT),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", Reason.UNSUPPORTED_FORMAT),
    (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64), Reason.UNSUPPORTED_FORMAT),
])
def test_bad_bytes_are_rejected_with_a_reason(raw: bytes, reason: Reason) -> None:
    with pytest.raises(Rejected) as caught:
        decode(raw, DecodeLimits(max_pixels=50_000_000))
    assert caught.value.reason == reason


def test_truncated_and_unsupported_images_are_rejected(photo: Image.Image) -> None:
    jpeg = _encode(photo, "JPEG")
    with pytest.raises(Rejected) as caught:
        decode(jpeg[: len(jpeg) // 2], LIMITS)
    assert caught.value.reason == Reason.DECODE_FAILED
    with pytest.raises(Rejected) as caught:
        decode(_encode(photo, "PPM"), LIMITS)
    assert caught.value.reason == Reason.UNSUPPORTED_FORMAT


def _with_declared_size(raw: bytes, offset: int, layout: str, *size: int) -> bytes:
    patched = bytearray(raw)
    patched[offset:offset + struct.calcsize(layout)] = struct.pack(layout, *size)
    return bytes(patched)


def test_huge_declared_dimensions_are_rejected_before_decoding(photo: Image.Image) -> None:
    small = photo.resize((64, 48))
    jpeg = _encode(small, "JPEG")
    sof = jpeg.index(b"\xff\xc0") + 5  # SOF0: height, width
    for raw in (_with_declared_size(jpeg, sof, ">HH", 65_500, 65_500),
                _with_declared_size(_encode(small, "GIF"), 6, "<HH", 65_535, 65_535),
                _with_declared_size(_encode(small, "BMP"), 18, "<ii", 100_000, 100_000),
                # VP8L: 14 bits each of width - 1 and height - 1, right after the 0x2f signature
                _with_declared_size(_encode(small, "WEBP", lossless=True), 21, "<I", 2**28 - 1)):
        with pytest.raises(Rejected) as caught:
            decode(raw, LIMITS)
        assert caught.value.reason == Reason.TOO_LARGE, caught.value.detail


def test_the_watchdog_caps_the_calls_still_running_past_their_budget() -> None:
    watchdog, release = Watchdog("test", max_overdue=2), threading.Event()
    for _ in range(2):
        with pytest.raises(Overdue, match="did not finish"):
            watchdog.call(lambda: release.wait(60), budget_s=0.01)
    assert watchdog.overdue == 2
    with pytest.raises(Overdue, match="2 earlier test calls are still running"):
        watchdog.call(lambda: 1, budget_s=10)
    release.set()
    deadline = time.monotonic() + 30
    while watchdog.overdue and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watchdog.call(lambda: 7, budget_s=10) == 7
    with pytest.raises(TimeoutError):  # the call's own exception, not mistaken for overdue
        watchdog.call(lambda: (_ for _ in ()).throw(TimeoutError("socket")), budget_s=10)
