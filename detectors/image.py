"""The one decode every stage shares: bytes in, an upright 8-bit RGB picture out, or Rejected."""
from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dupwatch.schemas import Reason, Rejected

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = 50_000_000
    # Large JPEGs decode at 1/2..1/8 scale (libjpeg's DCT scaling, much cheaper) as long as the
    # shorter side stays at least this long: every stage works on far smaller pictures.
    draft_min_side: int = 256


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
            return decode(self.raw, self.limits)
        finally:
            self.decode_ms = (time.perf_counter() - started) * 1000


def decode(raw: bytes, limits: DecodeLimits) -> Image.Image:
    """Decode ``raw`` (first frame of animations), apply EXIF orientation, return 8-bit RGB."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(raw))
        except UnidentifiedImageError:
            if raw.lstrip()[:1] == b"<":  # SVG, XML or HTML: text formats we do not render
                raise Rejected(Reason.UNSUPPORTED_FORMAT,
                               f"markup ({_magic(raw)}), e.g. SVG, is not supported") from None
            raise Rejected(Reason.DECODE_FAILED,
                           f"not a recognisable image ({_magic(raw)})") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Rejected(Reason.TOO_LARGE, str(exc)) from None
        except Exception as exc:  # a header Pillow recognised but could not read
            raise Rejected(Reason.DECODE_FAILED,
                           f"image header could not be read: {exc} ({_magic(raw)})") from None
        if image.format not in SUPPORTED_FORMATS:
            raise Rejected(Reason.UNSUPPORTED_FORMAT,
                           f"{image.format} images are not supported "
                           f"(supported: {', '.join(sorted(SUPPORTED_FORMATS))})")
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


def _draft_size(width: int, height: int, min_side: int) -> tuple[int, int]:
    """The draft request that keeps the shorter side >= min_side after scaling."""
    scale = max(min_side / min(width, height), 1 / 8)
    return max(1, int(width * scale)), max(1, int(height * scale))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _WIDE_MODES:
        # Pillow's convert() clips 16-bit and float data to 255; rescale the real range instead.
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        image = Image.fromarray(scaled.astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _magic(raw: bytes) -> str:
    if not raw:
        return "empty payload"
    return f"{len(raw)} bytes starting {raw[:8].hex(' ')}"
