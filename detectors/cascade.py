"""The cascade: run the stages cheapest first, stop at the first decisive one, index the image."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from dupwatch.detectors.calibration import combine_scores, load_calibrations
from dupwatch.detectors.image import DecodeLimits, ImageInput
from dupwatch.detectors.phash import PHashStage
from dupwatch.detectors.protocol import Stage
from dupwatch.detectors.sha256 import Sha256Stage
from dupwatch.index import Hit, TenantIndexes, set_search_threads
from dupwatch.schemas import Candidate, Verdict, VerdictLabel, utc_now
from dupwatch.settings import Settings

CALIBRATION_FILE = Path(__file__).resolve().parents[1] / "model" / "calibration.json"


@dataclass(frozen=True)
class CascadeResult:
    label: VerdictLabel
    match: Candidate | None          # the decisive candidate; None when unique
    candidates: list[Candidate]      # best candidates over the stages that ran, best first
    timings_ms: dict[str, float]

    def to_verdict(self, *, image_id: str, tenant: str, worker: str,
                   model_version: str | None = None, submitted_at: str | None = None,
                   metadata: dict[str, Any] | None = None) -> Verdict:
        match = self.match
        return Verdict(
            image_id=image_id, tenant=tenant, verdict=self.label,
            match_id=match.image_id if match else None, stage=match.stage if match else None,
            score=match.score if match else None, distance=match.distance if match else None,
            candidates=self.candidates, timings_ms=self.timings_ms, worker=worker,
            processed_at=utc_now(), model_version=model_version, submitted_at=submitted_at,
            metadata=metadata or {})


@dataclass
class _Run:
    """What one check has learned so far."""
    signals: dict[str, Any] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


class Cascade:
    """Stages in order with one tenant-namespaced index each.

    ``check`` is not thread-safe: callers serialise it, which also makes "search, then add"
    atomic, so two copies checked by one process can never both come out unique.
    """

    def __init__(self, stages: list[Stage], limits: DecodeLimits, min_score: float = 0.99,
                 search_k: int = 8, top_k: int = 0, search_threads: int = 1,
                 model_version: str | None = None) -> None:
        self.stages = stages
        self.min_score = min_score
        self.limits = limits
        self.search_k = search_k
        self.top_k = top_k
        self.search_threads = search_threads
        self.model_version = model_version
        self.indexes: dict[str, TenantIndexes] = {
            stage.name: TenantIndexes(stage.new_index, stage.load_index) for stage in stages}

    def image(self, raw: bytes) -> ImageInput:
        return ImageInput(raw, self.limits)

    @property
    def batches(self) -> bool:
        """Whether a stage describes whole batches at once (so ``prefetch`` pays off)."""
        return any(getattr(stage, "batched", False) for stage in self.stages)

    def prefetch(self, batch: Iterable[tuple[str, str, ImageInput]]) -> None:
        """Compute batched stages' signals for a whole batch in one go (one forward pass).

        Only for images the cheaper stages do not already settle against the indexes as they
        are now; ``check`` reuses these signals and computes any that are missing, so the
        verdicts are the same as one by one. ``batch`` is consumed lazily: the cheap stages
        run on each image as soon as it arrives (while later ones are still being decoded).
        """
        pending: Iterable[tuple[str, str, ImageInput, _Run]] = (
            (tenant, image_id, image, _Run()) for tenant, image_id, image in batch)
        for stage in self.stages:
            if getattr(stage, "batched", False):
                pending = list(pending)
                images = [image for _, _, image, _ in pending]
                started = time.perf_counter()
                signals = stage.describe_batch(images) if images else []
                share = _ms_since(started) / max(1, len(images))
                for image, signal in zip(images, signals):
                    image.signals[stage.name] = signal
                    image.describe_ms[stage.name] = round(share, 3)
            pending = self._unsettled(stage, pending)
        for _ in pending:  # run the stages after the last batched one too
            pass

    def _unsettled(self, stage: Stage, items: Iterable[tuple[str, str, ImageInput, _Run]]
                   ) -> Iterator[tuple[str, str, ImageInput, _Run]]:
        for tenant, image_id, image, run in items:
            hits = self._search(stage, tenant, image_id, self._signal(stage, image))
            if self._decide(stage, hits, run) is None:
                yield tenant, image_id, image, run

    def check(self, tenant: str, image_id: str, image: ImageInput, *,
              index: bool = True) -> CascadeResult:
        """Compare one image with the tenant's earlier images, then (if ``index``) remember it.

        Raises :class:`dupwatch.schemas.Rejected` for bytes that cannot be decoded.
        """
        # OpenMP's thread count is per calling thread, and workers call from their own thread.
        set_search_threads(self.search_threads)
        run = _Run()
        match = None
        for stage in self.stages:
            match = self._run_stage(stage, tenant, image_id, image, run)
            if match is not None:
                break
        if index:
            for name, signal in run.signals.items():
                self.indexes[name].for_tenant(tenant).add(image_id, signal)
        run.timings_ms["total"] = round(sum(run.timings_ms.values()), 3)
        label = self._label(match, run) if match else VerdictLabel.UNIQUE
        best = _best_per_image(run.candidates)[: self.top_k]
        return CascadeResult(label, match, best, run.timings_ms)

    def _label(self, match: Candidate, run: _Run) -> VerdictLabel:
        """The label of the cheapest stage that recognises the match as its kind of copy: a copy
        the pHash still finds close is a near duplicate even when the embedding settled it."""
        recognised = {c.stage for c in run.candidates
                      if c.image_id == match.image_id and self._stage(c.stage).recognises(c.distance)}
        return next((stage.label for stage in self.stages if stage.name in recognised),
                    self._stage(match.stage).label)

    def _stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)

    def _run_stage(self, stage: Stage, tenant: str, image_id: str, image: ImageInput,
                   run: _Run) -> Candidate | None:
        if stage.needs_pixels:
            image.pixels  # noqa: B018  decoded once (maybe ahead of time), timed on its own
            run.timings_ms["decode"] = round(image.decode_ms or 0.0, 3)
        signal = run.signals[stage.name] = self._signal(stage, image)
        started = time.perf_counter()
        hits = self._search(stage, tenant, image_id, signal)
        run.timings_ms[stage.name] = round(image.describe_ms[stage.name] + _ms_since(started), 3)
        return self._decide(stage, hits, run)

    @staticmethod
    def _signal(stage: Stage, image: ImageInput) -> Any:
        """The stage's signal for the image, computed once (and timed) whoever asks first."""
        if stage.name not in image.signals:
            started = time.perf_counter()
            image.signals[stage.name] = stage.describe(image)
            image.describe_ms[stage.name] = _ms_since(started)
        return image.signals[stage.name]

    def _search(self, stage: Stage, tenant: str, image_id: str, signal: Any) -> list[Hit]:
        index = self.indexes[stage.name].existing(tenant)
        found = index.search(signal, self.search_k + 1) if index is not None else []
        return [hit for hit in found if hit.key != image_id][: self.search_k]  # never itself

    def _decide(self, stage: Stage, hits: list[Hit], run: _Run) -> Candidate | None:
        """The best candidate whose score, combined over the stages run so far, is decisive.

        Hits come closest (then earliest) first, so ties go to the earliest image.
        """
        fresh = [self._candidate(stage, hit) for hit in hits]
        run.candidates.extend(fresh)
        best = None
        for candidate in fresh:
            combined = round(combine_scores([c.score for c in run.candidates
                                             if c.image_id == candidate.image_id]), 6)
            if combined >= self.min_score and (best is None or combined > best.score):
                best = Candidate(candidate.image_id, stage.name, combined, candidate.distance)
        return best

    @staticmethod
    def _candidate(stage: Stage, hit: Hit) -> Candidate:
        return Candidate(image_id=hit.key, stage=stage.name,
                         score=round(stage.score(hit.distance), 6), distance=hit.distance)

    def size(self) -> dict[str, dict[str, int]]:
        """Entries per stage and tenant."""
        return {name: {tenant: len(index) for tenant, index in indexes.tenants()}
                for name, indexes in self.indexes.items()}

    def save(self, path: Path) -> None:
        for name, indexes in self.indexes.items():
            indexes.save(path / name)

    def load(self, path: Path) -> None:
        for name, indexes in self.indexes.items():
            indexes.load(path / name)


def build_cascade(settings: Settings,
                  on_embedding_batch: Callable[[int, float], None] | None = None) -> Cascade:
    """The cascade the settings describe, with any saved indexes loaded."""
    calibrations = load_calibrations(CALIBRATION_FILE)
    stages: list[Stage] = []
    model_version = None
    for name in settings.stages:
        if name == "sha256":
            stages.append(Sha256Stage())
        elif name == "phash":
            # The shipped calibration was fitted for 64-bit hashes.
            calibration = calibrations.get("phash") if settings.phash_size == 8 else None
            stages.append(PHashStage(settings.phash_size, settings.phash_max_distance, calibration,
                                     settings.phash_near_distance))
        elif name == "embedding":
            stage = _embedding_stage(settings, calibrations, on_embedding_batch)
            model_version = stage.model.version
            stages.append(stage)
        else:
            raise SystemExit(f"dupwatch: unknown stage {name!r} in stages "
                             "(choose from sha256, phash, embedding)")
    cascade = Cascade(stages, DecodeLimits(settings.max_image_pixels, settings.decode_draft_side),
                      min_score=settings.min_score, search_k=settings.search_k, top_k=settings.top_k,
                      search_threads=settings.search_threads, model_version=model_version)
    state = settings.state_path()
    if state is not None:
        cascade.load(state)
    return cascade


def _embedding_stage(settings: Settings, calibrations: dict,
                     on_batch: Callable[[int, float], None] | None) -> Stage:
    from dupwatch.detectors.embedding import DEFAULT_WEIGHTS, EmbeddingModel, EmbeddingStage

    if "embedding" not in calibrations:
        raise SystemExit(f"dupwatch: {CALIBRATION_FILE} has no embedding calibration; "
                         "run `dupwatch bench quality --write-calibration`")
    model = EmbeddingModel.load(Path(settings.weights or DEFAULT_WEIGHTS),
                                settings.embedding_resolution, settings.embedding_device,
                                settings.embedding_threads)
    return EmbeddingStage(model, calibrations["embedding"], on_batch)


def _best_per_image(candidates: list[Candidate]) -> list[Candidate]:
    """Each image once, at its best score over the stages, best first (stable for ties)."""
    best: dict[str, Candidate] = {}
    for candidate in candidates:
        if candidate.image_id not in best or candidate.score > best[candidate.image_id].score:
            best[candidate.image_id] = candidate
    return sorted(best.values(), key=lambda c: -c.score)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
