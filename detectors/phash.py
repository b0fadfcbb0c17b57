"""Stage 2: perceptual hash (DCT pHash, imagehash) searched by Hamming distance.

Catches re-encodes, resizes, brightness/contrast edits and small crops. The default ``size``
of 16 gives 256-bit hashes: at 64 bits, distinct pages of one manual sit as close as a page and
its JPEG copy (on the calibration sources the nearest distinct document page was as near as
6 of 64 bits, at 256 bits no nearer than 40, with copies within 18; `dupwatch bench quality`
figures in artifacts/MODEL_CARD.md). Scores are calibrated (see calibration.py) and are 0 beyond
``max_distance`` bits, a cap against trusting look-alikes. A match within ``near_distance``
bits is a near duplicate; further matches the cascade accepts are variants.

Stage 2b, :class:`ReorientedPHashStage`: the same hash of the image turned by quarter turns
and mirrored, against the indexed upright hashes. A pHash is not invariant to those, and the
learned embedding is weakest on quarter turns; eight 64x64 DCTs cost a fraction of the
embedding (measured: docs/benchmarks.md, "Figures measured outside a bench command").
"""
from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from dupwatch.detectors.calibration import Calibration
from dupwatch.imaging.image import ImageInput
from dupwatch.detectors.registry import StageContext, stage
from dupwatch.index import BinaryIndex
from dupwatch.schemas import VerdictLabel


class PHashStage:
    name = "phash"
    label = VerdictLabel.NEAR_DUPLICATE
    needs_pixels = True
    batched = False

    def __init__(self, size: int = 16, max_distance: int = 64,
                 calibration: Calibration | None = None, near_distance: int = 32) -> None:
        if size < 4 or (size * size) % 8:
            raise ValueError(f"phash size must be >= 4 with size^2 a multiple of 8, got {size}")
        self.size = size
        self.bits = size * size
        self.max_distance = max_distance
        self.near_distance = near_distance
        # Uncalibrated (another hash size, no calibration file): certain up to the cap.
        self.calibration = calibration or Calibration((0.0, float(max_distance)), (1.0, 1.0))

    def describe(self, image: ImageInput) -> bytes:
        return _hash(image.pixels, self.size)

    def new_index(self) -> BinaryIndex:
        return BinaryIndex(self.bits)

    def load_index(self, path: Path) -> BinaryIndex:
        return BinaryIndex.load(path)

    def score(self, distance: float) -> float:
        return self.calibration.score(distance) if distance <= self.max_distance else 0.0

    def recognises(self, distance: float) -> bool:
        return distance <= self.near_distance


class ReorientedPHashStage(PHashStage):
    """Copies turned by 90, 180 or 270 degrees or mirrored: the query's pHash in all eight
    orientations (upright first) against each indexed image's upright pHash."""
    name = "phash_reoriented"
    label = VerdictLabel.VARIANT

    def describe(self, image: ImageInput) -> bytes:
        # Shrunk once, then turned: imagehash's own shrink of a picture already at its working
        # size changes nothing, so each view hashes as the turned upload would.
        small = _small_grey(image, self.size)
        views = [small, *(small.transpose(turn) for turn in _TURNED_AND_MIRRORED)]
        return b"".join(_hash(view, self.size) for view in views)

    def recognises(self, distance: float) -> bool:
        return False  # a turned or mirrored copy is a variant, however close


# After the upright view: three quarter turns, then the mirror image of the upright picture and
# of each turn. Only the upright hash, the signal's first code, is indexed (BinaryIndex's default).
_T = Image.Transpose
_TURNED_AND_MIRRORED = (_T.ROTATE_90, _T.ROTATE_180, _T.ROTATE_270,
                        _T.FLIP_LEFT_RIGHT, _T.TRANSVERSE, _T.FLIP_TOP_BOTTOM, _T.TRANSPOSE)


def _small_grey(image: ImageInput, size: int) -> Image.Image:
    """The picture as imagehash's pHash reduces it: grey, 4x the hash side, Lanczos."""
    side = size * 4
    return image.pixels.convert("L").resize((side, side), Image.Resampling.LANCZOS)


def _hash(picture: Image.Image, size: int) -> bytes:
    return np.packbits(imagehash.phash(picture, hash_size=size).hash.ravel()).tobytes()


@stage("phash")
def _build_phash(context: StageContext) -> PHashStage:
    return _build(PHashStage, context)


@stage("phash_reoriented")
def _build_reoriented(context: StageContext) -> ReorientedPHashStage:
    return _build(ReorientedPHashStage, context)


def _build(kind: type[PHashStage], context: StageContext) -> PHashStage:
    options = context.options.phash
    calibration = context.calibrations.get(kind.name)  # None: fitted for another hash size
    return kind(options.size, options.max_distance, calibration, options.near_distance)
