"""The cascade: run the stages cheapest first, stop at the first decisive one, index the image."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dupwatch.detectors.image import DecodeLimits, ImageInput
from dupwatch.detectors.phash import PHashStage
from dupwatch.detectors.protocol import Stage
from dupwatch.detectors.sha256 import Sha256Stage
from dupwatch.index import Hit, TenantIndexes, set_search_threads
from dupwatch.schemas import Candidate, Verdict, VerdictLabel, utc_now
from dupwatch.settings import Settings


@dataclass(frozen=True)
class CascadeResult:
    label: VerdictLabel
    match: Candidate | None          # the decisive candidate; None when unique
    candidates: list[Candidate]      # best candidates over the stages that ran, best first
    timings_ms: dict[str, float]

    def to_verdict(self, *, image_id: str, tenant: str, worker: str,
                   submitted_at: str | None = None,
                   metadata: dict[str, Any] | None = None) -> Verdict:
        match = self.match
        return Verdict(
            image_id=image_id, tenant=tenant, verdict=self.label,
            match_id=match.image_id if match else None, stage=match.stage if match else None,
            score=match.score if match else None, distance=match.distance if match else None,
            candidates=self.candidates, timings_ms=self.timings_ms, worker=worker,
            processed_at=utc_now(), submitted_at=submitted_at, metadata=metadata or {})


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

    def __init__(self, stages: list[Stage], limits: DecodeLimits, search_k: int = 8,
                 top_k: int = 0, search_threads: int = 1) -> None:
        self.stages = stages
        self.search_threads = search_threads
        self.limits = limits
        self.search_k = search_k
        self.top_k = top_k
        self.indexes: dict[str, TenantIndexes] = {
            stage.name: TenantIndexes(stage.new_index, stage.load_index) for stage in stages}

    def image(self, raw: bytes) -> ImageInput:
        return ImageInput(raw, self.limits)

    def check(self, tenant: str, image_id: str, image: ImageInput, *,
              index: bool = True) -> CascadeResult:
        """Compare one image with the tenant's earlier images, then (if ``index``) remember it.

        Raises :class:`dupwatch.schemas.Rejected` for bytes that cannot be decoded.
        """
        started = time.perf_counter()
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
        run.timings_ms["total"] = _ms_since(started)
        label = next(s.label for s in self.stages if s.name == match.stage) if match else VerdictLabel.UNIQUE
        best = _best_per_image(run.candidates)[: self.top_k]
        return CascadeResult(label, match, best, run.timings_ms)

    def _run_stage(self, stage: Stage, tenant: str, image_id: str, image: ImageInput,
                   run: _Run) -> Candidate | None:
        if stage.needs_pixels:
            image.pixels  # noqa: B018  decoded once (maybe ahead of time), timed on its own
            run.timings_ms["decode"] = round(image.decode_ms or 0.0, 3)
        started = time.perf_counter()
        signal = run.signals[stage.name] = stage.describe(image)
        index = self.indexes[stage.name].existing(tenant)
        found = index.search(signal, self.search_k + 1) if index is not None else []
        hits = [hit for hit in found if hit.key != image_id][: self.search_k]  # never itself
        run.timings_ms[stage.name] = _ms_since(started)
        run.candidates.extend(self._candidate(stage, hit) for hit in hits)
        decisive = [hit for hit in hits if stage.is_decisive(hit.distance)]
        return self._candidate(stage, min(decisive)) if decisive else None

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


def build_cascade(settings: Settings) -> Cascade:
    """The cascade the settings describe, with any saved indexes loaded."""
    stages: list[Stage] = [Sha256Stage(),
                           PHashStage(settings.phash_size, settings.phash_max_distance)]
    cascade = Cascade(stages, DecodeLimits(settings.max_image_pixels, settings.decode_draft_side),
                      search_k=settings.search_k, top_k=settings.top_k,
                      search_threads=settings.search_threads)
    state = settings.state_path()
    if state is not None:
        cascade.load(state)
    return cascade


def _best_per_image(candidates: list[Candidate]) -> list[Candidate]:
    """Each image once, at its best score over the stages, best first (stable for ties)."""
    best: dict[str, Candidate] = {}
    for candidate in candidates:
        if candidate.image_id not in best or candidate.score > best[candidate.image_id].score:
            best[candidate.image_id] = candidate
    return sorted(best.values(), key=lambda c: -c.score)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
