"""Stage 4: verification of the best candidates by local features, geometry and aligned content.

The earlier stages rank well but cannot decide crops, small rotations, perspective and stacked
edits, and a hash is fooled by distinct objects that share an outline on white. This stage
checks the few best candidates the earlier stages found (never the whole index): ORB keypoints
matched one to one, a similarity or homography fitted by RANSAC, then the aligned pictures
compared cell by cell (imaging/features.py). Its distance is one minus the strength of that
evidence, calibrated to a precision like every stage's, so ``min_score`` keeps its meaning.

Pictures whose content is graphic (pages, screenshots, UI, drawings, objects on a plain
background; judged from the reference's own pixels) need near-complete agreement: they share
layout, chrome and outlines with distinct pictures of their kind.

When this stage is in the cascade, earlier stages decide alone only at distances they are sure
of (``Stage.settles_alone``: the same bytes, a near-identical hash); every other would-be match
waits for verification, which confirms or refutes it. Where it finds no alignment at all
between two photos (a pixelated or tiny copy: no evidence either way) the earlier stages'
decision stands; with a graphic reference it must be confirmed.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from dupwatch.detectors.calibration import Calibration
from dupwatch.detectors.registry import StageContext, stage
from dupwatch.imaging import features
from dupwatch.imaging.features import LocalFeatures, PictureKind, Verification
from dupwatch.imaging.image import ImageInput
from dupwatch.index import FeatureIndex
from dupwatch.schemas import VerdictLabel

# Inliers at which the geometric evidence counts in full, by the reference's kind of picture.
FULL_INLIERS = {PictureKind.PHOTO: 15, PictureKind.GRAPHIC: 30}
# How strongly agreement is weighed: graphic pictures agree in most cells by layout alone.
AGREEMENT_POWER = {PictureKind.PHOTO: 1, PictureKind.GRAPHIC: 4}
# A copy showing at least this share of the reference, without perspective, is the same picture
# lightly edited (a near duplicate); less, or in perspective, is a variant (a crop, a photo of it).
NEAR_DUPLICATE_AREA = 0.9


class VerifyStage:
    """Verification by local features (see the module docstring). Its signal is a picture's packed
    :class:`~dupwatch.imaging.features.LocalFeatures` (at most ``features.MAX_BYTES``); its index
    checks a query against named candidates only."""
    name = "verify"
    label = VerdictLabel.VARIANT
    needs_pixels = True
    batched = False
    verifies = True      # checks the candidates of the earlier stages instead of searching

    def __init__(self, calibration: Calibration | None = None) -> None:
        # Uncalibrated: the strength of the evidence as it is.
        self.calibration = calibration or Calibration((0.0, 1.0), (1.0, 0.0))

    def describe(self, image: ImageInput) -> bytes:
        return features.extract(image.pixels).to_bytes()

    def new_index(self) -> FeatureIndex:
        return FeatureIndex(compare, features.MAX_BYTES)

    def load_index(self, path: Path) -> FeatureIndex:
        return FeatureIndex.load(path, compare, features.MAX_BYTES)

    def score(self, distance: float) -> float:
        return self.calibration.score(distance)

    def recognises(self, distance: float) -> bool:
        return False  # what it confirms is labelled by the stages that found it, else label_for

    def lets_stand(self, evidence: dict[str, Any]) -> bool:
        # A photo that cannot be aligned with the candidate at all (pixelated, heavily blurred,
        # a tiny copy) is no evidence against what the hashes or the embedding saw; graphic
        # pictures (pages, screenshots, objects on white) are where those are fooled, so theirs
        # must be confirmed.
        return evidence.get("kind") == PictureKind.PHOTO.label and \
            evidence.get("inliers", 0) < features.MIN_INLIERS

    def label_for(self, evidence: dict[str, Any]) -> VerdictLabel:
        region = evidence.get("region") or (0.0, 0.0, 0.0, 0.0)
        area = (region[2] - region[0]) * (region[3] - region[1])
        nearly_all = area >= NEAR_DUPLICATE_AREA and evidence.get("model") == "similarity"
        return VerdictLabel.NEAR_DUPLICATE if nearly_all else VerdictLabel.VARIANT

    def settles_alone(self, distance: float) -> bool:
        return True


def compare(query: bytes, stored: bytes) -> tuple[float, dict[str, Any]]:
    """The verification's distance (1 - strength) and evidence (the reference's kind of picture
    and what the check found; no inliers when either picture has too few keypoints)."""
    reference = LocalFeatures.from_bytes(stored)
    found = features.verify(_query_features(query), reference)
    evidence = {"kind": reference.kind.label, **found.as_dict()}
    return round(1.0 - strength(found, reference.kind), 6), evidence


@functools.lru_cache(maxsize=64)
def _query_features(query: bytes) -> LocalFeatures:
    """A query's features, unpacked once for all the candidates it is checked against (its
    thumbnail is a JPEG to decode)."""
    return LocalFeatures.from_bytes(query)


def strength(found: Verification, kind: PictureKind) -> float:
    """In [0, 1]: how much of the picture agrees once aligned, discounted while few keypoints
    support the alignment."""
    if found.inliers < features.MIN_INLIERS:
        return 0.0
    support = min(1.0, found.inliers / FULL_INLIERS[kind])
    return support * found.agreement ** AGREEMENT_POWER[kind]


@stage("verify")
def _build(context: StageContext) -> VerifyStage:
    return VerifyStage(context.calibrations.get("verify"))
