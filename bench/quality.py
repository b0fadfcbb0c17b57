"""`dupwatch bench quality`: detection quality on held-out real photos, per transform family.

From held-out photos (never seen in training) it builds, with fixed seeds, two disjoint halves,
each with references, one transformed copy of every reference per family (positive queries),
transformed copies of unrelated photos (negative queries) and distractor references. The
first half calibrates every stage's score (isotonic precision over distance); the second is
where everything is measured: micro-AP as defined for DISC2021 (all (query, reference, score)
predictions ranked together), recall at precision 0.99, and recall per family at that
operating point, for pHash alone, the embedding alone, and the calibrated cascade (pHash, pHash
of the query turned and mirrored, embedding).
"""
from __future__ import annotations

import io
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dupwatch.bench.report import machine, write_results
from dupwatch.detectors.calibration import Calibration, combine_scores, save_calibrations
from dupwatch.detectors.cascade import CALIBRATION_FILE
from dupwatch.detectors.embedding import EmbeddingModel, EmbeddingStage
from dupwatch.detectors.image import DecodeLimits, ImageInput
from dupwatch.detectors.phash import PHashStage, ReorientedPHashStage
from dupwatch.index import BinaryIndex
from dupwatch.model.augment import FAMILIES
from dupwatch.model.data import list_photos, load_rgb, split
from dupwatch.settings import Settings

SEED = 2021
TOP_K = 10


@dataclass(frozen=True)
class Query:
    image: ImageInput
    family: str
    truth: int | None       # index of the true reference; None for a negative query


@dataclass(frozen=True)
class Half:
    references: list[ImageInput]
    queries: list[Query]


@dataclass
class Predictions:
    """Per query, the top candidates as (reference, native distance)."""
    hits: list[list[tuple[int, float]]]


def run_quality_bench(settings: Settings, photos_dir: str, use_all: bool, out: str,
                      write_calibration: bool) -> int:
    photos = list_photos(Path(photos_dir))
    held_out = photos if use_all else split(photos)[1]
    if len(held_out) < 20:
        raise SystemExit(f"dupwatch bench quality: only {len(held_out)} held-out photos in {photos_dir}")
    rng = random.Random(SEED)
    rng.shuffle(held_out)
    limits = DecodeLimits(settings.max_image_pixels, settings.decode_draft_side)
    images = [load_rgb(p.path, 512) for p in held_out]
    middle = len(images) // 2
    calibration_half = _half(images[:middle], limits, random.Random(SEED + 1))
    test_half = _half(images[middle:], limits, random.Random(SEED + 2))
    # Raw stages: their scores are what this run calibrates, so no calibration is loaded.
    phash = PHashStage(settings.phash_size, settings.phash_max_distance)
    reoriented = ReorientedPHashStage(settings.phash_size, settings.phash_max_distance)
    model = EmbeddingModel.load(Path(settings.weights) if settings.weights else None,
                                settings.embedding_resolution, settings.embedding_device,
                                settings.embedding_threads, sha256=settings.weights_sha256 or None)
    embedding = EmbeddingStage(model, Calibration.linear(2.0))
    stages = [phash, reoriented, embedding]
    say(f"{len(held_out)} held-out photos; calibration half {len(calibration_half.queries)} "
        f"queries, test half {len(test_half.queries)} queries")

    calibrations = {stage.name: _fit(_predict(stage, calibration_half), calibration_half)
                    for stage in stages}
    if write_calibration:
        save_calibrations(CALIBRATION_FILE, calibrations, {
            "photos": len(held_out), "queries": len(calibration_half.queries), "seed": SEED,
            "note": "fitted on the calibration half of the held-out photos"})
        say(f"calibration written to {CALIBRATION_FILE}")
    predictions = {stage.name: _predict(stage, test_half) for stage in stages}
    methods = {
        "phash": _scored(predictions["phash"], lambda d: 1.0 - d / phash.bits),
        **_pdq_if_installed(test_half),
        "embedding": _scored(predictions["embedding"], lambda d: 1.0 - d),
        "cascade": _combine([_scored(predictions[stage.name],
                                     _calibrated(stage, calibrations[stage.name]))
                             for stage in stages]),
    }
    results = {"benchmark": "quality", "held_out_photos": len(held_out),
               "test_queries": len(test_half.queries),
               "positive_queries": sum(q.truth is not None for q in test_half.queries),
               "references": len(test_half.references), "families": sorted(FAMILIES),
               "model_version": model.version, "machine": machine(),
               "methods": {name: _metrics(scored, test_half) for name, scored in methods.items()},
               # What a worker does: a match needs a calibrated score of at least min_score.
               "cascade_at_min_score": _at_threshold(methods["cascade"], test_half, settings.min_score)}
    write_results(out, results, _table(results))
    return 0


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _half(images: list[Image.Image], limits: DecodeLimits, rng: random.Random) -> Half:
    """Half the photos become references with a copy per family, a quarter distractor
    references, a quarter the sources of negative queries (three random copies each)."""
    n = len(images)
    with_copies, distractors, negatives = images[: n // 2], images[n // 2: 3 * n // 4], images[3 * n // 4:]
    references = [_encode(im, limits) for im in with_copies + distractors]
    queries = [Query(_encode(FAMILIES[family](im, rng), limits), family, i)
               for i, im in enumerate(with_copies) for family in sorted(FAMILIES)]
    queries += [Query(_encode(FAMILIES[rng.choice(sorted(FAMILIES))](im, rng), limits), "negative", None)
                for im in negatives for _ in range(3)]
    return Half(references, queries)


def _encode(image: Image.Image, limits: DecodeLimits) -> ImageInput:
    """As an upload would arrive: a JPEG file (quality 90)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=90)
    return ImageInput(buffer.getvalue(), limits)


def _calibrated(stage, calibration: Calibration):
    """The stage's score function as the worker has it, with this run's calibration."""
    if isinstance(stage, PHashStage):  # and so capped at max_distance
        return type(stage)(stage.size, stage.max_distance, calibration).score
    return calibration.score


def _predict(stage, half: Half) -> Predictions:
    index = stage.new_index()
    signals = _signals(stage, half.references)
    for number, signal in enumerate(signals):
        index.add(str(number), signal)
    query_signals = _signals(stage, [q.image for q in half.queries])
    return Predictions([[(int(h.key), h.distance) for h in index.search(s, TOP_K)]
                        for s in query_signals])


def _signals(stage, images: list[ImageInput]) -> list:
    if getattr(stage, "batched", False):
        return [s for start in range(0, len(images), 64)
                for s in stage.describe_batch(images[start:start + 64])]
    return [stage.describe(image) for image in images]


class _PdqReference:
    """Meta's PDQ hash (pdqhash package), for comparison only: not a cascade stage."""
    name = "pdq"

    def __init__(self, pdqhash) -> None:
        self._pdqhash = pdqhash

    def describe(self, image: ImageInput) -> bytes:
        bits, _quality = self._pdqhash.compute(np.asarray(image.pixels))
        return np.packbits(bits.astype(np.uint8)).tobytes()

    def new_index(self) -> BinaryIndex:
        return BinaryIndex(256)


def _pdq_if_installed(half: Half) -> dict[str, Scored]:
    try:
        import pdqhash
    except ImportError:
        say("pdqhash is not installed (pip install 'dupwatch[bench]'): no PDQ column")
        return {}
    return {"pdq": _scored(_predict(_PdqReference(pdqhash), half), lambda d: 1.0 - d / 256)}


def _fit(predictions: Predictions, half: Half) -> Calibration:
    """Precision of a candidate (any of a query's top ones) as a function of its distance."""
    pairs = [(distance, ref == q.truth) for hits, q in zip(predictions.hits, half.queries)
             for ref, distance in hits]
    return Calibration.fit([d for d, _ in pairs], [c for _, c in pairs])


Scored = dict[tuple[int, int], float]  # (query, reference) -> score


def _scored(predictions: Predictions, score) -> Scored:
    return {(q, ref): score(distance) for q, hits in enumerate(predictions.hits)
            for ref, distance in hits}


def _combine(all_scored: list[Scored]) -> Scored:
    """The cascade's score for each pair: its stages' calibrated scores combined."""
    pairs = set().union(*all_scored)
    return {pair: combine_scores([scored[pair] for scored in all_scored if pair in scored])
            for pair in pairs}


def _metrics(scored: Scored, half: Half) -> dict:
    positives = sum(q.truth is not None for q in half.queries)
    ranked = sorted(scored.items(), key=lambda item: -item[1])
    correct = np.array([half.queries[q].truth == ref for (q, ref), _ in ranked], dtype=float)
    true_positives = np.cumsum(correct)
    precision = true_positives / np.arange(1, len(ranked) + 1)
    recall = true_positives / positives
    micro_ap = float((precision * correct).sum() / positives)
    ok = np.nonzero(precision >= 0.99)[0]
    cut = int(ok.max()) if len(ok) else -1
    threshold = ranked[cut][1] if cut >= 0 else float("inf")
    found = {q for (q, ref), s in scored.items() if s >= threshold and half.queries[q].truth == ref}
    per_family = {}
    for family in sorted(FAMILIES):
        members = [i for i, q in enumerate(half.queries) if q.family == family]
        per_family[family] = round(len(found.intersection(members)) / len(members), 3)
    return {"micro_ap": round(micro_ap, 4), "recall_at_p99": round(float(recall[cut]) if cut >= 0 else 0.0, 4),
            "threshold_at_p99": None if cut < 0 else round(threshold, 6), "recall_per_family": per_family}


def _at_threshold(scored: Scored, half: Half, threshold: float) -> dict:
    accepted = [(q, ref) for (q, ref), score in scored.items() if score >= threshold]
    correct = {q for q, ref in accepted if half.queries[q].truth == ref}
    positives = [i for i, q in enumerate(half.queries) if q.truth is not None]
    per_family = {family: round(len(correct.intersection(
        i for i in positives if half.queries[i].family == family)) / max(1, sum(
            half.queries[i].family == family for i in positives)), 3) for family in sorted(FAMILIES)}
    return {"min_score": threshold,
            "precision": round(len(correct) / len(accepted), 4) if accepted else None,
            "recall": round(len(correct) / len(positives), 4), "recall_per_family": per_family}


def _table(results: dict) -> list[tuple[str, str]]:
    methods = results["methods"]
    rows = [("method", "  ".join(f"{name:>9}" for name in methods)),
            ("micro-AP", "  ".join(f"{m['micro_ap']:>9.3f}" for m in methods.values())),
            ("recall@P99", "  ".join(f"{m['recall_at_p99']:>9.3f}" for m in methods.values()))]
    for family in results["families"]:
        rows.append((f"  {family}", "  ".join(f"{m['recall_per_family'][family]:>9.2f}"
                                              for m in methods.values())))
    live = results["cascade_at_min_score"]
    rows.append((f"cascade at min_score {live['min_score']}",
                 f"precision {live['precision']}, recall {live['recall']}"))
    return rows
