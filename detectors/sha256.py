"""Stage 1: byte-identical copies, by SHA-256 of the raw bytes (no decode, no false positives)."""
from __future__ import annotations

from pathlib import Path

from dupwatch.imaging.image import ImageInput
from dupwatch.detectors.registry import StageContext, stage
from dupwatch.index import ExactIndex
from dupwatch.schemas import VerdictLabel


class Sha256Stage:
    """The cascade's first, cheapest stage: the SHA-256 of the raw bytes (no decode) looked up in an
    :class:`ExactIndex`. Distance is always 0 and the score 1: equal digests are the same bytes."""
    name = "sha256"
    label = VerdictLabel.EXACT_DUPLICATE
    needs_pixels = False
    batched = False
    verifies = False

    def describe(self, image: ImageInput) -> bytes:
        return image.digest

    def new_index(self) -> ExactIndex:
        return ExactIndex()

    def load_index(self, path: Path) -> ExactIndex:
        return ExactIndex.load(path)

    def score(self, distance: float) -> float:
        return 1.0  # same bytes: no false positives

    def recognises(self, distance: float) -> bool:
        return distance == 0

    def settles_alone(self, distance: float) -> bool:
        return True  # the same bytes


@stage("sha256")
def _build(context: StageContext) -> Sha256Stage:
    return Sha256Stage()
