"""Stage 2: perceptual hash (DCT pHash, imagehash) searched by Hamming distance.

Catches re-encodes, resizes, brightness/contrast edits and small crops. The default ``size``
of 16 gives 256-bit hashes: at 64 bits, distinct pages of one manual sit as close as a page and
its JPEG copy (on the calibration sources the nearest distinct document page was as near as
6 of 64 bits, at 256 bits no nearer than 40, with copies within 18; `dupwatch bench quality`
figures in artifacts/MODEL_CARD.md). Scores are calibrated (see calibration.py) and are 0 beyond
``max_distance`` bits, a cap against trusting look-alikes. A match within ``near_distance``
bits is labelled a near duplicate even when a later stage settled it (Cascade._label).

Stage 2b, :class:`ReorientedPHashStage`: the same hash of the image turned by quarter turns
and mirrored, against the indexed upright hashes. A pHash is not invariant to those, and the
learned embedding is weakest on quarter turns; the eight views cost one DCT (see ``describe``;
measured: docs/benchmarks.md).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from dupwatch.detectors.calibration import Calibration
from dupwatch.imaging.image import ImageInput
from dupwatch.detectors.registry import StageContext, stage
from dupwatch.index import BinaryIndex
from dupwatch.schemas import VerdictLabel


class PHashStage:
    """Perceptual-hash stage: a ``size``^2-bit DCT pHash of the decoded pixels, searched by Hamming
    distance (bits) in a :class:`BinaryIndex`. Scores 0 beyond ``max_distance``; labels a match
    within ``near_distance`` a near duplicate. Without a calibration (none fitted for this size) it
    scores 1 up to the cap. Raises ValueError for a size under 4 or with size^2 not whole bytes."""
    name = "phash"
    label = VerdictLabel.NEAR_DUPLICATE
    needs_pixels = True
    batched = False
    verifies = False

    def __init__(self, size: int = 16, max_distance: int = 64,
                 calibration: Calibration | None = None, near_distance: int = 32,
                 settle_distance: int = 12) -> None:
        if size < 4 or (size * size) % 8:
            raise ValueError(f"phash size must be >= 4 with size^2 a multiple of 8, got {size}")
        self.size = size
        self.bits = size * size
        self.max_distance = max_distance
        self.near_distance = near_distance
        self.settle_distance = settle_distance
        # Uncalibrated (another hash size, no calibration file): certain up to the cap.
        self.calibration = calibration or Calibration((0.0, float(max_distance)), (1.0, 1.0))

    def describe(self, image: ImageInput) -> bytes:
        return _bits(_low_dct(image, self.size))

    def new_index(self) -> BinaryIndex:
        return BinaryIndex(self.bits)

    def load_index(self, path: Path) -> BinaryIndex:
        return BinaryIndex.load(path)

    def score(self, distance: float) -> float:
        return self.calibration.score(distance) if distance <= self.max_distance else 0.0

    def recognises(self, distance: float) -> bool:
        return distance <= self.near_distance

    def settles_alone(self, distance: float) -> bool:
        # Beyond a near-identical hash, distinct objects sharing an outline on a plain
        # background match too (docs/benchmarks.md, verification): those are verified.
        return distance <= self.settle_distance


class ReorientedPHashStage(PHashStage):
    """Copies turned by 90, 180 or 270 degrees or mirrored: the query's pHash in all eight
    orientations (upright first) against each indexed image's upright pHash."""
    name = "phash_reoriented"
    label = VerdictLabel.VARIANT

    def describe(self, image: ImageInput) -> bytes:
        # One DCT for all eight views: turning or mirroring the shrunk picture only transposes
        # the DCT's coefficients or flips the sign of its odd frequencies, so each view's hash
        # is the one imagehash would give the turned picture (a test compares them), at an
        # eighth of the cost.
        block = _low_dct(image, self.size)
        return b"".join(_bits(view) for view in (block, *(turn(block) for turn in _TURNED_AND_MIRRORED)))

    def recognises(self, distance: float) -> bool:
        return False  # a turned or mirrored copy is a variant, however close


def _transpose(block: np.ndarray) -> np.ndarray:
    return block.T


def _mirror_columns(block: np.ndarray) -> np.ndarray:
    """The DCT of the picture mirrored left to right: odd horizontal frequencies change sign."""
    return block * _ALTERNATING[: block.shape[1]][None, :]


def _mirror_rows(block: np.ndarray) -> np.ndarray:
    """The DCT of the picture mirrored top to bottom: odd vertical frequencies change sign."""
    return block * _ALTERNATING[: block.shape[0]][:, None]


def _then(*steps: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda block: functools.reduce(lambda done, step: step(done), steps, block)


_ALTERNATING = np.array([(-1.0) ** k for k in range(256)])
# After the upright view, as PIL's transposes of the picture (in this order): ROTATE_90 (counter-
# clockwise), ROTATE_180, ROTATE_270, FLIP_LEFT_RIGHT, TRANSVERSE, FLIP_TOP_BOTTOM, TRANSPOSE,
# each written as transposes and mirrors of the DCT. Only the upright hash, the signal's first
# code, is indexed (BinaryIndex's default).
_TURNED_AND_MIRRORED = (
    _then(_transpose, _mirror_rows),
    _then(_mirror_columns, _mirror_rows),
    _then(_transpose, _mirror_columns),
    _mirror_columns,
    _then(_transpose, _mirror_columns, _mirror_rows),
    _mirror_rows,
    _transpose,
)


def _small_grey(image: ImageInput, size: int) -> Image.Image:
    """The picture as imagehash's pHash reduces it: grey, 4x the hash side, Lanczos."""
    side = size * 4
    return image.pixels.convert("L").resize((side, side), Image.Resampling.LANCZOS)


def _low_dct(image: ImageInput, size: int) -> np.ndarray:
    """imagehash's pHash up to its threshold: the size x size lowest frequencies of the 2-D DCT
    of the shrunk grey picture. Kept on the image, so the upright and reoriented stages share it."""
    key = f"phash_dct_{size}"
    block = image.prepared.get(key)
    if block is None:
        pixels = np.asarray(_small_grey(image, size), dtype=np.float64)
        basis = _dct_rows(size * 4, size)
        block = basis @ pixels @ basis.T
        image.prepared[key] = block
    return block


@functools.cache
def _dct_rows(length: int, count: int) -> np.ndarray:
    """The first ``count`` rows of the unnormalised DCT-II of ``length`` points, scipy's default
    scaling (``2 cos(pi k (2n + 1) / 2N)``), so ``rows @ x`` is ``scipy.fftpack.dct(x)[:count]``.
    Two small products give only the coefficients the hash reads, without SciPy (a third of the
    default install's size)."""
    k = np.arange(count)[:, None]
    n = np.arange(length)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * length))


def _bits(block: np.ndarray) -> bytes:
    """imagehash's threshold: a bit per coefficient above the block's median."""
    return np.packbits((block > np.median(block)).ravel()).tobytes()


@stage("phash")
def _build_phash(context: StageContext) -> PHashStage:
    return _build(PHashStage, context)


@stage("phash_reoriented")
def _build_reoriented(context: StageContext) -> ReorientedPHashStage:
    return _build(ReorientedPHashStage, context)


def _build(kind: type[PHashStage], context: StageContext) -> PHashStage:
    options = context.options.phash
    calibration = context.calibrations.get(kind.name)  # None: fitted for another hash size
    return kind(options.size, options.max_distance, calibration, options.near_distance,
                options.settle_distance)
