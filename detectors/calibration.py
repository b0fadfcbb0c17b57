"""Calibrated scores: a stage's native distance mapped to the precision measured at it.

Fitted by the quality benchmark (``dupwatch bench quality --write-calibration``) on source
packages that neither training nor the test split uses, as isotonic regression of "this
candidate is the true original" on distance. Every stage's score then means the same thing, so
one threshold (``min_score``) serves the cascade.

When several stages point at the same earlier image, their evidence combines (:class:`Evidence`):
the noisy-OR of their scores, itself calibrated for the stages run so far. The noisy-OR alone
would treat the stages as independent witnesses, but on look-alikes (two dialogs of one
application, two products on white) the hashes and the embedding are fooled together; the
second calibration measures how often a combined score of that height was right.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """A stage's score curve: the precision measured at each distance, linear between the points
    (flat beyond the ends), so a score is in [0, 1] and means the same for every stage. Made by
    :meth:`fit` (the quality benchmark) or :meth:`linear`; read from calibration.json by
    ``load_calibrations``. Distances are in the stage's own unit (bits, cosine distance)."""
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
        keeps its full resolution where precision falls and np.interp joins the steps. Each
        step also falls by a hair (TIE_BREAK) from its first distance to its last, so the score
        still ranks candidates by distance within a step (ranking metrics need it; a flat
        step would tie a close candidate with a far one).
        """
        order = np.argsort(distances, kind="stable")
        x = np.asarray(distances, dtype=float)[order]
        y = _pool_adjacent_violators(np.asarray(correct, dtype=float)[order])
        step_edges = np.flatnonzero(np.diff(y)) if len(y) > 1 else np.array([], dtype=int)
        keep = np.unique(np.concatenate([[0, len(x) - 1], step_edges, step_edges + 1]))
        xs, first = np.unique(x[keep], return_index=True)  # np.interp needs distinct x
        ys = y[keep][first]
        step_ends = np.flatnonzero(np.diff(ys, append=-1.0) < 0)   # last point of each step
        step_starts = np.concatenate([[0], step_ends[:-1] + 1])
        below = np.append(ys[step_ends[:-1] + 1], 0.0)              # the next step's score
        room = np.where(step_ends > step_starts, np.minimum(TIE_BREAK, (ys[step_ends] - below) / 2), 0)
        ys[step_ends] -= room
        return cls(tuple(round(float(v), 6) for v in xs), tuple(round(float(v), 6) for v in ys))


TIE_BREAK = 1e-4


def combine_scores(scores: list[float]) -> float:
    """Evidence from several stages for the same candidate (noisy-OR).

    Each calibrated score is the probability that the stage's candidate is a true copy; the
    stages err on different images (a hash is fooled by look-alike photos, the embedding by
    look-alike content), so the chance that all of them are wrong is the product of theirs.
    """
    return 1.0 - math.prod(1.0 - score for score in scores)


@dataclass(frozen=True)
class Evidence:
    """A candidate's score from its stages' calibrated scores (see the module docstring).

    ``after`` maps the stages run so far ("sha256+phash", ...) to the calibration of their
    noisy-OR; a run with none (the exact stage alone, whose matches cannot be wrong) keeps
    the noisy-OR as it is.
    """
    after: dict[str, Calibration] = field(default_factory=dict)

    def combine(self, stages_run: tuple[str, ...], scores: list[float]) -> float:
        raw = combine_scores(scores)
        calibration = self.after.get(run_key(stages_run))
        return raw if calibration is None else calibration.score(1.0 - raw)


def run_key(stages_run: tuple[str, ...]) -> str:
    return "+".join(stages_run)


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


def load_calibrations(path: Path, phash_size: int) -> tuple[dict[str, Calibration], Evidence]:
    """Each stage's calibration and the combined evidence's, as ``save_calibrations`` wrote them.

    The pHash stages' calibrations hold only for the hash size they were fitted with (files
    without ``phash_size`` were fitted with 8); for another size they are left out and those
    stages score as uncalibrated."""
    if not path.exists():
        return {}, Evidence()
    doc = json.loads(path.read_text())
    stages = _calibrations(doc["stages"])
    if doc.get("phash_size", 8) != phash_size:
        stages = {name: c for name, c in stages.items() if not name.startswith("phash")}
    return stages, Evidence(_calibrations(doc.get("combined", {})))


def _calibrations(doc: dict[str, dict]) -> dict[str, Calibration]:
    return {name: Calibration(tuple(c["distances"]), tuple(c["scores"])) for name, c in doc.items()}


def save_calibrations(path: Path, calibrations: dict[str, Calibration], evidence: Evidence,
                      phash_size: int, source: dict) -> None:
    path.write_text(json.dumps({
        "source": source,
        "phash_size": phash_size,
        "stages": {stage: c.to_dict() for stage, c in calibrations.items()},
        "combined": {run: c.to_dict() for run, c in evidence.after.items()}}, indent=1) + "\n")
