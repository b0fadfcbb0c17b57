"""The one decode every stage shares: bytes in, an upright 8-bit RGB picture out, or Rejected.

Bounds per image, so that no single image can stall a partition or exhaust the worker:

- bytes: the event (or fetched file) is at most ``max_event_bytes`` before decoding starts;
- structure: a JPEG with more than ``max_scans`` scans is refused from its markers (see
  imaging/jpeg.py), before any decoding;
- pixels: the declared size is checked against ``max_pixels`` before any pixel is decoded (a
  50,000 x 50,000 PNG of a few KB is rejected from its header), and only the first frame of an
  animation, multi-page file or MPO is ever decoded, so frame counts do not multiply the work;
- memory: Pillow keeps at most 4 bytes per pixel, and the conversion to 8-bit RGB holds at most
  three such buffers at once: one decode peaks near 12 bytes x ``max_pixels`` (measured on 20
  MP: 12.0 for RGBA PNG, 9.6 palette with transparency, 8.5 16-bit grey, 4.1 RGB and 4.3
  CMYK), so about 600 MB at the default 50 megapixels; big JPEGs take far less, as they decode
  at reduced scale. In a worker each decode runs in a process of its own capped at
  ``memory_mb`` (imaging/decode_pool.py);
- time: most decodes take time in proportion to bytes and pixels, but some files take far
  longer, so in a worker a decode still running after ``timeout_ms`` is stopped for good (its
  process is killed; see imaging/decode_pool.py).
"""
from __future__ import annotations

import hashlib
import io
import time
import warnings
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dupwatch.imaging import jpeg
from dupwatch.schemas import Reason, Rejected

# MPO (multi-picture JPEG, as many phones and cameras write) is read as its first picture.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# Formats Pillow cannot open but whose uploads are common enough to name in the dead letter.
_UNREADABLE_FORMATS = ((b"%PDF-", "PDF"), (b"8BPS", "Photoshop (PSD)"), (b"\xff\x0a", "JPEG XL"),
                       (b"\x00\x00\x00\x0cJXL ", "JPEG XL"))
_ISO_MEDIA_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF",
                     b"avif": "AVIF", b"avis": "AVIF"}
# A picture whose every colour channel varies less than this (standard deviation, 0-255 scale)
# at 32 x 32 pixels, the scale pHash looks at, is flat: a hash or a descriptor of it is noise.
# Measured: solid colours 0, JPEG re-encodes and flat pictures with pixel noise (sigma 8) or a
# line of small text under 1; the flattest of 839 real photos (the bundled samples and the
# training photos) 7.2, a brick texture 11.5.
LOW_INFORMATION_STD = 4.0


@dataclass(frozen=True)
class DecodeLimits:
    """Per-image bounds on a decode (see the module docstring): area in pixels (from the header),
    JPEG scans, and time in ms and memory in MB, which only decode processes enforce
    (imaging/decode_pool.py); 0 lifts any but the area. An image past one is Rejected with a
    reason. ``draft_min_side`` (pixels, 0: off) only makes big JPEGs cheaper to decode."""
    max_pixels: int = 50_000_000
    # Large JPEGs decode at 1/2..1/8 scale (libjpeg's DCT scaling, much cheaper) as long as the
    # shorter side stays at least this long: every stage works on far smaller pictures.
    draft_min_side: int = 256
    # Longest one decode may take before its event is dead-lettered as decode_timeout (0: none).
    timeout_ms: int = 10_000
    # Most scans a JPEG may have (0: no limit); see imaging/jpeg.py.
    max_scans: int = 100
    # Memory one decode process may add to what it holds at start (0: no limit).
    memory_mb: int = 1024


class ImageInput:
    """An image's bytes plus, on first use, its decoded pixels (decoded once, shared by stages).

    ``decoder`` turns the bytes into pixels: by default :func:`decode` on the calling thread; a
    worker passes its decode processes'. A decode pool may also settle the outcome ahead.
    """

    def __init__(self, raw: bytes, limits: DecodeLimits,
                 decoder: Callable[[bytes], Image.Image] | None = None) -> None:
        self.raw = raw
        self._decoder = decoder or partial(decode, limits=limits)
        self._decoded: Image.Image | Exception | None = None
        self.decode_ms: float | None = None
        # Stage signals, by stage name, possibly computed ahead of the cascade (a batched
        # embedding), and the milliseconds each took (a batch's time shared out evenly).
        self.signals: dict[str, Any] = {}
        self.describe_ms: dict[str, float] = {}
        # Per-image work a stage did ahead or shares with another, by key (the embedding's
        # resized views, the pHash stages' DCT).
        self.prepared: dict[str, Any] = {}

    @property
    def pixels(self) -> Image.Image:
        """The decoded picture; raises what decoding raised (Rejected for bad bytes)."""
        if self._decoded is None:
            started = time.perf_counter()
            try:
                outcome: Image.Image | Exception = self._decoder(self.raw)
            except Exception as exc:  # kept, and raised to every caller
                outcome = exc
            self.settle(outcome, (time.perf_counter() - started) * 1000)
        if isinstance(self._decoded, Exception):
            raise self._decoded
        return self._decoded  # type: ignore[return-value]

    def settle(self, outcome: Image.Image | Exception, decode_ms: float) -> None:
        """Record the decode's outcome, found elsewhere (a decode pool)."""
        self._decoded, self.decode_ms = outcome, decode_ms

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of the bytes: the exact stage's signal, and what tells a re-delivery (same
        bytes under the same id) from new content under a reused id."""
        return hashlib.sha256(self.raw).digest()

    @cached_property
    def low_information(self) -> bool:
        """Flat or nearly flat (a solid colour, a blank page): no hash or descriptor of it can
        tell it from another flat picture of a different colour."""
        small = self.pixels.resize((32, 32), Image.Resampling.BOX, reducing_gap=2.0)
        return float(np.asarray(small, dtype=np.float32).std(axis=(0, 1)).max()) < LOW_INFORMATION_STD


def decode(raw: bytes, limits: DecodeLimits) -> Image.Image:
    """Decode ``raw`` (first frame of animations), apply EXIF orientation, return 8-bit RGB."""
    _check_structure(raw, limits)
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
                           f"image header could not be read: {exc} ({bytes_summary(raw)})") from None
        if image.format not in SUPPORTED_FORMATS:
            raise _unsupported(image.format)
        width, height = image.size
        if width * height > limits.max_pixels:
            raise Rejected(Reason.TOO_LARGE, f"image is {width}x{height} = {width * height} "
                                             f"pixels, the limit is {limits.max_pixels}")
        if image.format in _JPEG_FORMATS and limits.draft_min_side:
            image.draft("RGB", _draft_size(width, height, limits.draft_min_side))
        try:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
        except MemoryError:
            raise _over_memory(image, limits) from None
        except Exception as exc:  # Pillow raises many types for corrupt data; all mean the same
            raise Rejected(Reason.DECODE_FAILED,
                           f"{image.format} data could not be decoded: {exc}") from None
    try:
        return _to_rgb(image)
    except MemoryError:
        raise _over_memory(image, limits) from None


def _over_memory(image: Image.Image, limits: DecodeLimits) -> Rejected:
    return Rejected(Reason.TOO_LARGE, f"decoding this {image.width}x{image.height} {image.format} "
                                      f"needs more memory than decode_memory_mb "
                                      f"({limits.memory_mb} MB)")


def _check_structure(raw: bytes, limits: DecodeLimits) -> None:
    """Refuse, before decoding, what the file's structure says would cost too much."""
    if limits.max_scans and jpeg.is_jpeg(raw):
        scans = jpeg.count_scans(raw)
        if scans > limits.max_scans:
            raise Rejected(Reason.TOO_COMPLEX,
                           f"JPEG with {scans} scans, the limit is {limits.max_scans} "
                           "(max_jpeg_scans): each scan costs a pass over the whole picture")


def _unidentified(raw: bytes) -> Rejected:
    """Why Pillow could not open ``raw``: a known format it does not read, or no image at all."""
    if raw.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"<":  # SVG, XML or HTML, BOM or not
        return Rejected(Reason.UNSUPPORTED_FORMAT,
                        f"markup ({bytes_summary(raw)}), e.g. SVG, is not supported")
    name = next((name for magic, name in _UNREADABLE_FORMATS if raw.startswith(magic)),
                _ISO_MEDIA_BRANDS.get(raw[8:12]) if raw[4:8] == b"ftyp" else None)
    if name:
        return _unsupported(name)
    return Rejected(Reason.DECODE_FAILED, f"not a recognisable image ({bytes_summary(raw)})")


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


def bytes_summary(raw: bytes) -> str:
    """The size and first bytes of a payload, for a dead letter's detail."""
    if not raw:
        return "empty payload"
    return f"{len(raw)} bytes starting {raw[:8].hex(' ')}"
