"""Calibrated scores: a stage's native distance mapped to the precision measured at it.

Fitted by the quality benchmark (``dupwatch bench quality --write-calibration``) on held-out
photos, as isotonic regression of "the top candidate is the true original" on distance. Every
stage's score then means the same thing, so one threshold (``min_score``) serves the cascade;
when several stages point at the same earlier image, their scores combine (``combine_scores``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Calibration:
    distances: tuple[float, ...]   # increasing
    scores: tuple[float, ...]      # non-increasing: precision of a top match at that distance

    def score(self, distance: float) -> float:
        return float(np.interp(distance, self.distances, self.scores))

    def to_dict(self) -> dict:
        return {"distances": list(self.distances), "scores": list(self.scores)}

    @classmethod
    def linear(cls, max_distance: float) -> "Calibration":
        """Uncalibrated fallback: 1 at distance 0 falling to 0 at ``max_distance``."""
        return cls((0.0, float(max_distance)), (1.0, 0.0))

    @classmethod
    def fit(cls, distances: list[float], correct: list[bool]) -> "Calibration":
        """Isotonic (non-increasing) precision over distance.

        Kept as the first and last distance of each constant step of the fit, so the curve
        keeps its full resolution where precision falls and np.interp joins the steps.
        """
        order = np.argsort(distances, kind="stable")
        x = np.asarray(distances, dtype=float)[order]
        y = _pool_adjacent_violators(np.asarray(correct, dtype=float)[order])
        step_edges = np.flatnonzero(np.diff(y)) if len(y) > 1 else np.array([], dtype=int)
        keep = np.unique(np.concatenate([[0, len(x) - 1], step_edges, step_edges + 1]))
        xs, first = np.unique(x[keep], return_index=True)  # np.interp needs distinct x
        return cls(tuple(round(float(v), 6) for v in xs),
                   tuple(round(float(v), 6) for v in y[keep][first]))


def combine_scores(scores: list[float]) -> float:
    """Evidence from several stages for the same candidate (noisy-OR).

    Each calibrated score is the probability that the stage's candidate is a true copy; the
    stages err on different images (a hash is fooled by look-alike photos, the embedding by
    look-alike content), so the chance that all of them are wrong is the product of theirs.
    """
    return 1.0 - math.prod(1.0 - score for score in scores)


def _pool_adjacent_violators(values: np.ndarray) -> np.ndarray:
    """The closest non-increasing sequence (least squares): isotonic regression."""
    blocks: list[list[float]] = []  # [mean, weight]
    for value in values:
        blocks.append([float(value), 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            mean, weight = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + mean * weight) / (blocks[-1][1] + weight),
                          blocks[-1][1] + weight]
    return np.concatenate([np.full(int(w), m) for m, w in blocks])


def load_calibrations(path: Path) -> dict[str, Calibration]:
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    return {stage: Calibration(tuple(c["distances"]), tuple(c["scores"]))
            for stage, c in doc["stages"].items()}


def save_calibrations(path: Path, calibrations: dict[str, Calibration], source: dict) -> None:
    path.write_text(json.dumps({"source": source, "stages": {
        stage: c.to_dict() for stage, c in calibrations.items()}}, indent=1) + "\n")
