"""Stage 2: perceptual hash (DCT pHash, imagehash) searched by Hamming distance.

Catches re-encodes, resizes, brightness/contrast edits and small crops. A ``size`` of 8 gives
64-bit hashes. Scores are calibrated (see calibration.py) and are 0 beyond ``max_distance``
bits, a cap against trusting look-alike photos. A match within ``near_distance`` bits is a
near duplicate (re-encodes, resizes, 15 % brightness changes and 2 % crops of the bundled
samples land at 0-8 bits); further matches the cascade accepts are variants.
"""
from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np

from dupwatch.detectors.calibration import Calibration
from dupwatch.detectors.image import ImageInput
from dupwatch.index import BinaryIndex
from dupwatch.schemas import VerdictLabel


class PHashStage:
    name = "phash"
    label = VerdictLabel.NEAR_DUPLICATE
    needs_pixels = True

    def __init__(self, size: int = 8, max_distance: int = 16,
                 calibration: Calibration | None = None, near_distance: int = 8) -> None:
        if size < 4 or (size * size) % 8:
            raise ValueError(f"phash size must be >= 4 with size^2 a multiple of 8, got {size}")
        self.size = size
        self.bits = size * size
        self.max_distance = max_distance
        self.near_distance = near_distance
        # Uncalibrated (another hash size, no calibration file): certain up to the cap.
        self.calibration = calibration or Calibration((0.0, float(max_distance)), (1.0, 1.0))

    def describe(self, image: ImageInput) -> bytes:
        bits = imagehash.phash(image.pixels, hash_size=self.size).hash
        return np.packbits(bits.ravel()).tobytes()

    def new_index(self) -> BinaryIndex:
        return BinaryIndex(self.bits)

    def load_index(self, path: Path) -> BinaryIndex:
        return BinaryIndex.load(path)

    def score(self, distance: float) -> float:
        return self.calibration.score(distance) if distance <= self.max_distance else 0.0

    def recognises(self, distance: float) -> bool:
        return distance <= self.near_distance
