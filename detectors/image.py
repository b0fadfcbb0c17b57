"""The one decode every stage shares: bytes in, an upright 8-bit RGB picture out, or Rejected.

Bounds per image, so that no single image can stall a partition or exhaust the worker:

- bytes: the event (or fetched file) is at most ``max_event_bytes`` before decoding starts;
- pixels: the declared size is checked against ``max_pixels`` before any pixel is decoded (a
  50,000 x 50,000 PNG of a few KB is rejected from its header), and only the first frame of an
  animation or multi-page file is ever decoded, so frame counts do not multiply the work;
- memory: Pillow keeps at most 4 bytes per pixel, and the conversion to 8-bit RGB holds at most
  three such buffers at once: one decode peaks near 12 bytes x ``max_pixels`` (measured on 20
  MP: 12.0 for RGBA PNG, 9.6 palette with transparency, 8.5 16-bit grey, 4.1 RGB and 4.3
  CMYK), so about 600 MB at the default 50 megapixels; big JPEGs take far less, as they decode
  at reduced scale. At most ``decode_threads`` + ``MAX_OVERDUE_DECODES`` decodes run at once;
- time: most decodes take time in proportion to bytes and pixels, but some files take far
  longer (a progressive JPEG of thousands of scans redoes the picture per scan), so a decode
  still running after ``timeout_ms`` is abandoned (see :func:`decode_within_budget`).
"""
from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dupwatch.detectors.watchdog import Overdue, Watchdog
from dupwatch.schemas import Reason, Rejected

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# Formats Pillow cannot open but whose uploads are common enough to name in the dead letter.
_UNREADABLE_FORMATS = ((b"%PDF-", "PDF"), (b"8BPS", "Photoshop (PSD)"), (b"\xff\x0a", "JPEG XL"),
                       (b"\x00\x00\x00\x0cJXL ", "JPEG XL"))
_ISO_MEDIA_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF",
                     b"avif": "AVIF", b"avis": "AVIF"}
# Decodes that overran their budget and still run on in C code. Each holds a core and its
# image's memory until it ends; past this many, further images are dead-lettered at once
# rather than piling up more (memory bound: decode_threads + this many decodes at a time).
MAX_OVERDUE_DECODES = 4
_DECODES = Watchdog("decode", MAX_OVERDUE_DECODES)


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = 50_000_000
    # Large JPEGs decode at 1/2..1/8 scale (libjpeg's DCT scaling, much cheaper) as long as the
    # shorter side stays at least this long: every stage works on far smaller pictures.
    draft_min_side: int = 256
    # Longest one decode may take before its event is dead-lettered as decode_timeout (0: none).
    timeout_ms: int = 10_000


class ImageInput:
    """An image's bytes plus, on first use, its decoded pixels (decoded once, shared by stages)."""

    def __init__(self, raw: bytes, limits: DecodeLimits) -> None:
        self.raw = raw
        self.limits = limits
        self.decode_ms: float | None = None
        # Stage signals, by stage name, possibly computed ahead of the cascade (a batched
        # embedding), and the milliseconds each took (a batch's time shared out evenly).
        self.signals: dict[str, Any] = {}
        self.describe_ms: dict[str, float] = {}

    @cached_property
    def pixels(self) -> Image.Image:
        started = time.perf_counter()
        try:
            return decode_within_budget(self.raw, self.limits)
        finally:
            self.decode_ms = (time.perf_counter() - started) * 1000


def decode_within_budget(raw: bytes, limits: DecodeLimits) -> Image.Image:
    """:func:`decode`, or Rejected(decode_timeout) once it has run ``limits.timeout_ms``.

    Pillow decodes in C and cannot be interrupted, and a subprocess per image would cost more
    than most decodes. So the decode runs on a watchdog thread and the caller stops waiting at
    the budget: its event is dead-lettered and the worker goes on with the next events, while
    the abandoned decode finishes in the background (bounded by the byte and pixel limits) and
    its result is dropped.
    """
    if not limits.timeout_ms:
        return decode(raw, limits)
    try:
        return _DECODES.call(lambda: decode(raw, limits), limits.timeout_ms / 1000)
    except Overdue as exc:
        raise Rejected(Reason.DECODE_TIMEOUT, f"{exc} ({_magic(raw)})") from None


def decode(raw: bytes, limits: DecodeLimits) -> Image.Image:
    """Decode ``raw`` (first frame of animations), apply EXIF orientation, return 8-bit RGB."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(raw))
        except UnidentifiedImageError:
            raise _unidentified(raw) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Rejected(Reason.TOO_LARGE, str(exc)) from None
        except Exception as exc:  # a header Pillow recognised but could not read
            raise Rejected(Reason.DECODE_FAILED,
                           f"image header could not be read: {exc} ({_magic(raw)})") from None
        if image.format not in SUPPORTED_FORMATS:
            raise _unsupported(image.format)
        width, height = image.size
        if width * height > limits.max_pixels:
            raise Rejected(Reason.TOO_LARGE, f"image is {width}x{height} = {width * height} "
                                             f"pixels, the limit is {limits.max_pixels}")
        if image.format == "JPEG" and limits.draft_min_side:
            image.draft("RGB", _draft_size(width, height, limits.draft_min_side))
        try:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
        except Exception as exc:  # Pillow raises many types for corrupt data; all mean the same
            raise Rejected(Reason.DECODE_FAILED,
                           f"{image.format} data could not be decoded: {exc}") from None
    return _to_rgb(image)


def _unidentified(raw: bytes) -> Rejected:
    """Why Pillow could not open ``raw``: a known format it does not read, or no image at all."""
    if raw.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"<":  # SVG, XML or HTML, BOM or not
        return Rejected(Reason.UNSUPPORTED_FORMAT,
                        f"markup ({_magic(raw)}), e.g. SVG, is not supported")
    name = next((name for magic, name in _UNREADABLE_FORMATS if raw.startswith(magic)),
                _ISO_MEDIA_BRANDS.get(raw[8:12]) if raw[4:8] == b"ftyp" else None)
    if name:
        return _unsupported(name)
    return Rejected(Reason.DECODE_FAILED, f"not a recognisable image ({_magic(raw)})")


def _unsupported(name: str | None) -> Rejected:
    return Rejected(Reason.UNSUPPORTED_FORMAT, f"{name} images are not supported "
                                               f"(supported: {', '.join(sorted(SUPPORTED_FORMATS))})")


def _draft_size(width: int, height: int, min_side: int) -> tuple[int, int]:
    """The draft request that keeps the shorter side >= min_side after scaling."""
    scale = max(min_side / min(width, height), 1 / 8)
    return max(1, int(width * scale)), max(1, int(height * scale))


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, holding as few full-size buffers at once as it can (the memory bound)."""
    if image.mode in _WIDE_MODES:
        # Pillow's convert() clips 16-bit and float data to 255; rescale the real range instead.
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        values -= low
        values *= 255.0 / (high - low) if high > low else 0.0
        image = Image.fromarray(values.astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        white = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return white.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _magic(raw: bytes) -> str:
    if not raw:
        return "empty payload"
    return f"{len(raw)} bytes starting {raw[:8].hex(' ')}"
