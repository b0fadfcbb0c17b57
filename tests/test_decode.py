"""The shared decode: real photos in every mode come out upright 8-bit RGB; bad bytes are rejected."""
from __future__ import annotations

import io
import struct
import zlib

import imagehash
import numpy as np
import pytest
from PIL import Image

from dupwatch.detectors.image import DecodeLimits, decode
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
    ("CMYK", "TIFF"), ("RGB", "WEBP"), ("RGB", "BMP"), ("P", "GIF"),
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


def test_sixteen_bit_images_use_their_whole_range(photo: Image.Image) -> None:
    grey = np.asarray(photo.convert("L"), dtype=np.uint16) * 257  # 0..65535
    decoded = decode(_encode(Image.fromarray(grey), "PNG"), LIMITS)
    assert _distance(decoded, photo.convert("L")) <= 2
    assert np.asarray(decoded).max() == 255  # not clipped into a white picture


def test_animated_gif_uses_its_first_frame(photo: Image.Image) -> None:
    other = photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    raw = _encode(photo, "GIF", save_all=True, append_images=[other], duration=100)
    assert _distance(decode(raw, LIMITS), photo) <= 4


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
