"""`dupwatch bench quality`: detection quality on images from sources training never saw.

Images come from gathered folders (photos, screenshots, documents, clip art; model/data.py).
Two evaluation splits, both held out of training:

- ``sources``: whole source packages training never saw (model/data.py's TEST_SOURCES). This is
  the honest figure: a package shares a camera, an application, a style.
- ``photos``: photos held out *within* the training packages (how encoder v2 was measured;
  it flatters, and is kept for comparison).

The worker's calibration is fitted on a third, disjoint group of packages (CALIBRATION_SOURCES)
and measured on both. Each evaluation set, built with fixed seeds, has references with one
copy per edit family (positive queries), distractor references, and negative queries: edited
copies of unrelated images and, the hardest, the unrelated images themselves, drawn from the
same packages as the references (same application, different dialog). Reported per method
(pHash, PDQ, the embedding alone, the cascade as the worker runs it): micro-AP as defined for
DISC2021, recall at precision 0.99 (overall, per family, per kind of content), and precision and
recall at the worker's own ``min_score``.

Look-alikes: every distinct image of the test sources goes through the worker's cascade in
order, each checked against the ones before it, as a stream of uploads would; every match is a
false positive (images of one near-duplicate group are kept once). The same for distinct objects
on a white background that share their outlines (``plain_background``), the hash stages' blind
spot. Everything is reported with the verify stage (the worker's default) and without it.
"""
from __future__ import annotations

import io
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dupwatch.bench.report import machine, write_results
from dupwatch.detectors.calibration import (Calibration, Evidence, combine_scores,
                                             load_calibrations, run_key, save_calibrations)
from dupwatch.detectors.cascade import CALIBRATION_FILE, Cascade, to_verify
from dupwatch.detectors.embedding import EmbeddingModel, EmbeddingStage
from dupwatch.detectors.verify import VerifyStage
from dupwatch.imaging.image import DecodeLimits, ImageInput
from dupwatch.detectors.phash import PHashStage, ReorientedPHashStage
from dupwatch.detectors.sha256 import Sha256Stage
from dupwatch.index import BinaryIndex, CandidateQuery
from dupwatch.model.augment import families
from dupwatch.model.data import PHOTO_KINDS, Photo, by_source, list_photos, load_all
from dupwatch.schemas import Candidate, VerdictLabel
from dupwatch.settings import Settings
from dupwatch.wiring.cascade import cascade_options

SEED = 2021
TOP_K = 10
SET_SIZE = 480          # images per evaluation set at most: 1/2 references, 1/4 each other role
LOOKALIKES = 600        # distinct test-source images streamed through the cascade, at most
PLAIN_BACKGROUND = 500  # distinct objects on white sharing SHAPES outlines, at most
SHAPES = 10
OBJECT_SIDE = 320
MIN_SET_IMAGES = 8      # fewer cannot fill every role of an evaluation set


@dataclass(frozen=True)
class Query:
    """One query of an evaluation set: an encoded image, its ``family`` (the edit that made it,
    or negative / lookalike: an unrelated image, edited or not), ``truth``, the index in
    ``references`` of the image it copies (None for an unrelated one), and its source's kind."""
    image: ImageInput
    family: str             # the edit, "negative" (an edited unrelated image) or "lookalike"
    truth: int | None       # index of the true reference; None for a negative query
    kind: str               # of the image it was made from (photo, screenshot, ...)


@dataclass(frozen=True)
class EvalSet:
    """Reference images to index and the queries run against them (see :func:`_eval_set`): every
    copied reference has one query per edit family in ``families``."""
    references: list[ImageInput]
    queries: list[Query]
    families: list[str]


@dataclass
class Predictions:
    """Per query, the top candidates as (reference, native distance); for a verifying stage,
    also what it found for each (in the same order)."""
    hits: list[list[tuple[int, float]]]
    evidence: list[list[dict]] | None = None


Scored = dict[tuple[int, int], float]  # (query, reference) -> score


def run_quality_bench(settings: Settings, folders: list[str], use_all: bool, out: str,
                      write_calibration: bool) -> int:
    photos = list_photos(*map(Path, folders))
    limits = DecodeLimits(settings.max_image_pixels, settings.decode_draft_side)
    model = EmbeddingModel.from_options(cascade_options(settings).embedding)
    groups = _groups(photos, use_all)
    sizes = {name: len(members) for name, members in groups.items()}
    say(", ".join(f"{name}: {size} images" for name, size in sizes.items()))
    if use_all:
        calibrations, evidence = load_calibrations(CALIBRATION_FILE, settings.phash_size)
        stages = _stages(settings, model, calibrations)
    else:
        # Each set keeps its decoded images (~4 GB): only its size outlives the fit.
        calibration_set = _eval_set(groups.pop("calibration"), limits, SEED + 1)
        stages, evidence = _fit(settings, model, calibration_set)
        calibration_queries = len(calibration_set.queries)
        del calibration_set
    if write_calibration and not use_all:
        save_calibrations(CALIBRATION_FILE, {s.name: s.calibration for s in stages[1:]}, evidence,
                          settings.phash_size, {
            "sources": "CALIBRATION_SOURCES (model/data.py)", "seed": SEED,
            "queries": calibration_queries, "model_version": model.version,
            "note": "fitted on source packages that neither training nor the test split uses"})
        say(f"calibration written to {CALIBRATION_FILE}")
    splits = {name: _evaluate(_eval_set(members, limits, SEED + 2), stages, evidence,
                              settings.min_score) if len(members) >= MIN_SET_IMAGES
              else {"skipped": f"only {len(members)} images (fewer than {MIN_SET_IMAGES})"}
              for name, members in groups.items() if name != "lookalikes"}
    results = {"benchmark": "quality", "model_version": model.version, "machine": machine(),
               "images": sizes,
               "splits": splits,
               **{f"{name}{suffix}": _stream(images, chosen, evidence, settings, limits)
                  for suffix, chosen in (("", stages), ("_no_verify", stages[:-1]))
                  for name, images in (("lookalikes", _distinct(groups["lookalikes"])),
                                       ("plain_background", _objects_on_white(groups["lookalikes"])))}}
    write_results(out, results, _table(results))
    return 0


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _groups(photos: list[Photo], use_all: bool) -> dict[str, list[Photo]]:
    """Which images calibrate, which are measured, which stream as look-alikes."""
    if use_all:  # a folder reserved for evaluation: every image is unseen
        return {"all": photos, "lookalikes": photos}
    sources = by_source(photos)
    held_out_photos = [p for p in sources["train"] if p.held_out_photo]
    return {"calibration": sources["calibration"], "sources": sources["test"],
            "photos": held_out_photos, "lookalikes": sources["test"]}


def _eval_set(photos: list[Photo], limits: DecodeLimits, seed: int) -> EvalSet:
    """Up to SET_SIZE images, photos up to half of them: half become references with a copy
    per family, a quarter distractor references, a quarter unrelated images queried as they are
    and as three edited copies. One image per near-duplicate group, so no negative is secretly
    a copy."""
    rng = random.Random(seed)
    distinct = _one_per_group(photos)
    rng.shuffle(distinct)
    real = [p for p in distinct if p.kind in PHOTO_KINDS][: SET_SIZE // 2]
    chosen = real + [p for p in distinct if p.kind not in PHOTO_KINDS][: SET_SIZE - len(real)]
    rng.shuffle(chosen)
    chosen, images = load_all(chosen, 512, say)
    n = len(images)
    copied, negatives = range(n // 2), range(3 * n // 4, n)
    edits = families(donors=[images[i] for i in negatives])
    names = sorted(edits)
    references = [_encode(images[i], limits) for i in range(3 * n // 4)]
    queries = [Query(_encode(edits[family](images[i], rng), limits), family, i, chosen[i].kind)
               for i in copied for family in names]
    for i in negatives:
        queries.append(Query(_encode(images[i], limits), "lookalike", None, chosen[i].kind))
        queries += [Query(_encode(edits[rng.choice(names)](images[i], rng), limits), "negative",
                          None, chosen[i].kind) for _ in range(3)]
    return EvalSet(references, queries, names)


def _one_per_group(photos: list[Photo]) -> list[Photo]:
    kept: dict[str, Photo] = {}
    for photo in photos:
        kept.setdefault(photo.near_duplicates_key, photo)
    return list(kept.values())


def _encode(image: Image.Image, limits: DecodeLimits) -> ImageInput:
    """As an upload would arrive: a JPEG file (quality 90)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=90)
    return ImageInput(buffer.getvalue(), limits)


def _evaluate(evaluation: EvalSet, stages: list, evidence: Evidence, min_score: float) -> dict:
    """``stages`` calibrated, in the worker's order (sha256, phash, ..., embedding)."""
    say(f"measuring: {len(evaluation.references)} references, {len(evaluation.queries)} queries")
    predictions = _predict_all(stages, evaluation)
    phash, embedding = stages[1], stages[-2]
    methods = {
        "phash": _scored(predictions[phash.name], lambda d: 1.0 - d / phash.bits),
        **_pdq_if_installed(evaluation),
        "embedding": _scored(predictions[embedding.name], lambda d: 1.0 - d),
        "no_verify": _cascade(stages[:-1], predictions, evidence, min_score),
        "cascade": _cascade(stages, predictions, evidence, min_score),
    }
    queries = evaluation.queries
    return {"queries": len(queries), "references": len(evaluation.references),
            "positive_queries": sum(q.truth is not None for q in queries),
            "kinds": dict(Counter(q.kind for q in queries if q.truth is not None)),
            "families": evaluation.families,
            "methods": {name: _metrics(scored, evaluation) for name, scored in methods.items()},
            # What a worker does: a match needs a calibrated score of at least min_score; the
            # same without the verify stage (--stages sha256,phash,phash_reoriented,embedding).
            "cascade_at_min_score": _at_threshold(methods["cascade"], evaluation, min_score),
            "no_verify_at_min_score": _at_threshold(methods["no_verify"], evaluation, min_score)}


def _cascade(stages: list, predictions: dict[str, Predictions], evidence: Evidence,
             min_score: float, truths: list[int | None] | None = None) -> Scored:
    """Each pair's score as the worker reports it (detectors/cascade.py, ``_decide``): stages
    run in order; when a stage finds a candidate, its score combines the stages run so far
    (``evidence``); a query stops at the first stage where a candidate it found reaches
    ``min_score``, so later stages never see it.

    When a verifying stage follows, a stage decides only the matches it may settle alone; the
    verifying stage then scores the candidates it checked, and every other candidate of a query
    it saw ranks below all decided pairs (in its earlier order), as the worker never decides it.

    With ``truths``, ``evidence`` is fitted on the way: before each stage decides, the
    calibration of the combined score for the stages run so far, from the queries still open.
    """
    queries = range(len(predictions[stages[0].name].hits))
    seen: list[dict[int, list[float]]] = [{} for _ in queries]
    pending: list[dict[int, float]] = [{} for _ in queries]  # decisive, not settled alone
    scored: Scored = {}
    open_queries = list(queries)
    for number, stage in enumerate(stages):
        if stage.verifies:
            verified = predictions[stage.name]
            for q in open_queries:
                _verified(q, stage, list(zip(verified.hits[q], verified.evidence[q])), seen[q],
                          pending[q], scored, min_score)
            break
        verified_later = any(later.verifies for later in stages[number + 1:])
        stages_run = tuple(s.name for s in stages[: number + 1])
        fresh = {q: [(ref, round(stage.score(distance), 6), distance)
                     for ref, distance in predictions[stage.name].hits[q]] for q in open_queries}
        for q, found in fresh.items():
            for ref, score, _ in found:
                seen[q].setdefault(ref, []).append(score)
        if truths is not None and number > 0:  # the exact stage's matches stay certain
            pairs = [(combine_scores(seen[q][ref]), ref == truths[q])
                     for q, found in fresh.items() for ref, _, _ in found]
            evidence.after[run_key(stages_run)] = Calibration.fit(
                [1.0 - raw for raw, _ in pairs], [correct for _, correct in pairs])
        still_open = []
        for q, found in fresh.items():
            decided = False
            for ref, _, distance in found:
                score = round(evidence.combine(stages_run, seen[q][ref]), 6)
                settles = not verified_later or stage.settles_alone(distance)
                decided |= score >= min_score and settles
                scored[q, ref] = score if settles else _undecided(score, min_score)
                if score >= min_score and not settles:
                    pending[q][ref] = score
            if not decided:
                still_open.append(q)
        open_queries = still_open
    return scored


def _verified(q: int, stage, checked: list[tuple[tuple[int, float], dict]],
              seen: dict[int, list[float]], pending: dict[int, float], scored: Scored,
              min_score: float) -> None:
    """A query's pairs once the verifying stage has checked its candidates (``seen``: those
    the earlier stages scored; ``pending``: their decisive scores that waited for it), as
    ``Cascade._decide_verified`` decides them."""
    verified = {}
    for (ref, distance), evidence in checked:
        score = round(stage.score(distance), 6)
        standing = pending.get(ref, 0.0) if stage.lets_stand(evidence) else 0.0
        verified[ref] = max(score, standing)
    for ref in seen:
        scored[q, ref] = verified.get(ref, _undecided(scored[q, ref], min_score))
    scored.update({(q, ref): score for ref, score in verified.items()})


def _undecided(score: float, min_score: float) -> float:
    """A score the worker never decides at: below min_score, in the same order."""
    return max(0.0, min(score, score * min_score - 1e-9))


def _predict_all(stages: list, evaluation: EvalSet) -> dict[str, Predictions]:
    """Each stage's top candidates per query; a verifying stage checks the ones the stages before
    it found, as the worker's cascade picks them (detectors/cascade.py, ``to_verify``)."""
    predictions: dict[str, Predictions] = {}
    for stage in stages:
        predictions[stage.name] = (_verify(stage, evaluation, predictions) if stage.verifies
                                   else _predict(stage, evaluation))
    return predictions


def _verify(stage, evaluation: EvalSet, earlier: dict[str, Predictions]) -> Predictions:
    say(f"  {stage.name}")
    index = stage.new_index()
    for number, signal in enumerate(_signals(stage, evaluation.references)):
        index.add(str(number), signal)
    hits, evidence = [], []
    for q, signal in enumerate(_signals(stage, [query.image for query in evaluation.queries])):
        candidates = [Candidate(str(ref), name, 0.0, distance)
                      for name, found in earlier.items() for ref, distance in found.hits[q]]
        found = index.search(CandidateQuery(signal, to_verify(candidates)), TOP_K)
        hits.append([(int(h.key), h.distance) for h in found])
        evidence.append([h.evidence for h in found])
    return Predictions(hits, evidence)


def _predict(stage, evaluation: EvalSet) -> Predictions:
    say(f"  {stage.name}")
    index = stage.new_index()
    for number, signal in enumerate(_signals(stage, evaluation.references)):
        index.add(str(number), signal)
    query_signals = _signals(stage, [q.image for q in evaluation.queries])
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


def _pdq_if_installed(evaluation: EvalSet) -> dict[str, Scored]:
    try:
        import pdqhash
    except ImportError:
        say("pdqhash is not installed (pip install 'dupwatch[bench]'): no PDQ column")
        return {}
    return {"pdq": _scored(_predict(_PdqReference(pdqhash), evaluation), lambda d: 1.0 - d / 256)}


def _stages(settings: Settings, model: EmbeddingModel,
            calibrations: dict[str, Calibration]) -> list:
    """The worker's default stages, in its order, with these calibrations."""
    phash = (settings.phash_size, settings.phash_max_distance)
    near = (settings.phash_near_distance, settings.phash_settle_distance)
    return [Sha256Stage(),
            PHashStage(*phash, calibrations["phash"], *near),
            ReorientedPHashStage(*phash, calibrations["phash_reoriented"], *near),
            EmbeddingStage(model, calibrations["embedding"]),
            VerifyStage(calibrations.get("verify"))]


def _fit(settings: Settings, model: EmbeddingModel, evaluation: EvalSet) -> tuple[list, Evidence]:
    """Every stage's calibration (precision of a candidate, any of a query's top ones, as a
    function of its distance), then the combined evidence's, as the worker will use them."""
    say(f"fitting the calibration: {len(evaluation.references)} references, "
        f"{len(evaluation.queries)} queries")
    raw = _stages(settings, model, {name: Calibration.linear(2.0)
                                    for name in ("phash", "phash_reoriented", "embedding")})
    predictions = _predict_all(raw, evaluation)
    truths = [q.truth for q in evaluation.queries]
    calibrations = {}
    for stage in raw[1:]:
        pairs = [(distance, ref == truths[q]) for q, hits in enumerate(predictions[stage.name].hits)
                 for ref, distance in hits]
        calibrations[stage.name] = Calibration.fit([d for d, _ in pairs], [c for _, c in pairs])
    stages = _stages(settings, model, calibrations)
    evidence = Evidence()
    _cascade(stages, predictions, evidence, settings.min_score, truths)
    return stages, evidence


def _scored(predictions: Predictions, score) -> Scored:
    return {(q, ref): score(distance) for q, hits in enumerate(predictions.hits)
            for ref, distance in hits}


def _metrics(scored: Scored, evaluation: EvalSet) -> dict:
    queries = evaluation.queries
    positives = sum(q.truth is not None for q in queries)
    ranked = sorted(scored.items(), key=lambda item: -item[1])
    correct = np.array([queries[q].truth == ref for (q, ref), _ in ranked], dtype=float)
    true_positives = np.cumsum(correct)
    precision = true_positives / np.arange(1, len(ranked) + 1)
    recall = true_positives / positives
    micro_ap = float((precision * correct).sum() / positives)
    ok = np.nonzero(precision >= 0.99)[0]
    cut = int(ok.max()) if len(ok) else -1
    threshold = ranked[cut][1] if cut >= 0 else float("inf")
    found = {q for (q, ref), s in scored.items() if s >= threshold and queries[q].truth == ref}
    return {"micro_ap": round(micro_ap, 4),
            "recall_at_p99": round(float(recall[cut]) if cut >= 0 else 0.0, 4),
            "threshold_at_p99": None if cut < 0 else round(threshold, 6),
            "recall_per_family": _recall_by(found, queries, lambda q: q.family),
            "recall_per_kind": _recall_by(found, queries, lambda q: _kind_bucket(q.kind))}


def _kind_bucket(kind: str) -> str:
    return "photo" if kind in PHOTO_KINDS else "other"


def _recall_by(found: set[int], queries: list[Query], key) -> dict[str, float]:
    totals = Counter(key(q) for q in queries if q.truth is not None)
    hits = Counter(key(queries[i]) for i in found)
    return {name: round(hits[name] / total, 3) for name, total in sorted(totals.items())}


def _at_threshold(scored: Scored, evaluation: EvalSet, threshold: float) -> dict:
    queries = evaluation.queries
    accepted = [(q, ref) for (q, ref), score in scored.items() if score >= threshold]
    correct = {q for q, ref in accepted if queries[q].truth == ref}
    positives = sum(q.truth is not None for q in queries)
    return {"min_score": threshold,
            "precision": round(len(correct) / len(accepted), 4) if accepted else None,
            "recall": round(len(correct) / positives, 4),
            "false_matches": len(accepted) - len(correct),
            "recall_per_family": _recall_by(correct, queries, lambda q: q.family)}


@dataclass(frozen=True)
class Distinct:
    """An image of a look-alike stream: every one is distinct from every other."""
    name: str
    kind: str
    raw: bytes


def _distinct(photos: list[Photo]) -> list[Distinct]:
    """Up to LOOKALIKES distinct test-source images (one per near-duplicate group)."""
    chosen = _one_per_group(photos)
    random.Random(SEED + 3).shuffle(chosen)
    return [Distinct(p.path.name, _kind_bucket(p.kind), p.path.read_bytes())
            for p in chosen[:LOOKALIKES]]


def _objects_on_white(photos: list[Photo]) -> list[Distinct]:
    """Distinct objects that share an outline on a white background, the hash stages' blind
    spot (puzzle pieces of different paintings, two planets, two products of one shape): each of
    SHAPES outlines, drawn at a slightly different size and place, filled with a different
    test-source image, on white."""
    rng = random.Random(SEED + 4)
    fills = _one_per_group(photos)
    rng.shuffle(fills)
    outlines = [_outline(random.Random(SEED + 5 + n)) for n in range(SHAPES)]
    images = []
    for number, photo in enumerate(fills[:PLAIN_BACKGROUND]):
        fill = Image.open(photo.path).convert("RGB").resize((OBJECT_SIDE, OBJECT_SIDE))
        mask = outlines[number % SHAPES].rotate(rng.uniform(-3, 3)).resize(
            (int(OBJECT_SIDE * rng.uniform(0.9, 1.0)),) * 2)
        canvas = Image.new("RGB", (OBJECT_SIDE + 40, OBJECT_SIDE + 40), (255, 255, 255))
        canvas.paste(fill.resize(mask.size), (rng.randint(5, 35), rng.randint(5, 35)), mask)
        buffer = io.BytesIO()
        canvas.save(buffer, "JPEG", quality=90)
        images.append(Distinct(f"object-{number}", f"outline-{number % SHAPES}", buffer.getvalue()))
    return images


def _outline(rng: random.Random) -> Image.Image:
    """A random star-shaped outline with tabs (a puzzle piece, a bottle, a blob) as a mask."""
    mask = Image.new("L", (OBJECT_SIDE, OBJECT_SIDE), 0)
    centre, corners = OBJECT_SIDE / 2, rng.randint(5, 14)
    radii = [rng.uniform(0.55, 1.0) * centre * 0.95 for _ in range(corners)]
    points = [(centre + r * np.cos(2 * np.pi * i / corners), centre + r * np.sin(2 * np.pi * i / corners))
              for i, r in enumerate(radii)]
    draw = ImageDraw.Draw(mask)
    draw.polygon(points, fill=255)
    for x, y in rng.sample(points, min(4, corners)):  # round tabs on some corners
        tab = rng.uniform(0.08, 0.15) * OBJECT_SIDE
        draw.ellipse((x - tab, y - tab, x + tab, y + tab), fill=255)
    return mask


def _stream(images: list[Distinct], stages: list, evidence: Evidence, settings: Settings,
            limits: DecodeLimits) -> dict:
    """Distinct images streamed through the worker's cascade: every match is a false one."""
    cascade = Cascade(stages, limits, min_score=settings.min_score, search_k=settings.search_k,
                      evidence=evidence)
    matched: list[dict] = []
    for number, image in enumerate(images):
        result = cascade.check("lookalikes", image.name, ImageInput(image.raw, limits))
        if result.label is not VerdictLabel.UNIQUE and result.match is not None:
            matched.append({"image": image.name, "kind": image.kind, "match": result.match.image_id,
                            "stage": result.match.stage, "score": result.match.score})
        if number % 100 == 99:
            say(f"distinct images: {number + 1}/{len(images)}, {len(matched)} matched")
    by_kind = Counter(image.kind for image in images)
    wrong = Counter(m["kind"] for m in matched)
    return {"images": len(images), "matched": len(matched),
            "false_positive_rate": round(len(matched) / max(1, len(images)), 4),
            "false_positive_rate_per_kind": {k: round(wrong[k] / n, 4) for k, n in by_kind.items()},
            "images_per_kind": dict(by_kind), "matches": matched}


def _table(results: dict) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for split_name, result in results["splits"].items():
        if "skipped" in result:
            rows.append((f"[{split_name}]", f"skipped: {result['skipped']}"))
            continue
        methods = result["methods"]
        rows += [(f"[{split_name}] method", "  ".join(f"{name:>9}" for name in methods)),
                 ("micro-AP", "  ".join(f"{m['micro_ap']:>9.3f}" for m in methods.values())),
                 ("recall@P99", "  ".join(f"{m['recall_at_p99']:>9.3f}" for m in methods.values()))]
        for family in result["families"]:
            rows.append((f"  {family}", "  ".join(f"{m['recall_per_family'][family]:>9.2f}"
                                                  for m in methods.values())))
        for kind in next(iter(methods.values()))["recall_per_kind"]:
            rows.append((f"  kind: {kind}", "  ".join(f"{m['recall_per_kind'][kind]:>9.2f}"
                                                      for m in methods.values())))
        for name in ("no_verify", "cascade"):
            live = result[f"{name}_at_min_score"]
            rows.append((f"{name} at min_score {live['min_score']}",
                         f"precision {live['precision']}, recall {live['recall']}, "
                         f"{live['false_matches']} false matches"))
            rows += [(f"  {family}", f"{recall:.2f}") for family, recall
                     in live["recall_per_family"].items()]
    for name in ("lookalikes", "lookalikes_no_verify", "plain_background",
                 "plain_background_no_verify"):
        looks = results[name]
        per_kind = (f"; per kind {looks['false_positive_rate_per_kind']}"
                    if name.startswith("lookalikes") else "")
        rows.append((f"{name} matched", f"{looks['matched']} of {looks['images']} distinct "
                     f"images ({looks['false_positive_rate']:.1%}{per_kind})"))
    return rows
