"""Stage 2: perceptual hash (DCT pHash, imagehash) searched by Hamming distance.

Catches re-encodes, resizes, brightness/contrast edits and small crops. A ``size`` of 8 gives
64-bit hashes; ``max_distance`` is the largest Hamming distance called a near duplicate.
"""
from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np

from dupwatch.detectors.image import ImageInput
from dupwatch.index import BinaryIndex
from dupwatch.schemas import VerdictLabel


class PHashStage:
    name = "phash"
    label = VerdictLabel.NEAR_DUPLICATE
    needs_pixels = True

    def __init__(self, size: int = 8, max_distance: int = 10) -> None:
        if size < 4 or (size * size) % 8:
            raise ValueError(f"phash size must be >= 4 with size^2 a multiple of 8, got {size}")
        self.size = size
        self.bits = size * size
        self.max_distance = max_distance

    def describe(self, image: ImageInput) -> bytes:
        bits = imagehash.phash(image.pixels, hash_size=self.size).hash
        return np.packbits(bits.ravel()).tobytes()

    def new_index(self) -> BinaryIndex:
        return BinaryIndex(self.bits)

    def load_index(self, path: Path) -> BinaryIndex:
        return BinaryIndex.load(path)

    def score(self, distance: float) -> float:
        return 1.0 - distance / self.bits

    def is_decisive(self, distance: float) -> bool:
        return distance <= self.max_distance
