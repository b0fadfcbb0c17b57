"""The cascade: run the stages cheapest first, stop at the first decisive one, index the image."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, cast

from dupwatch.detectors.calibration import Evidence, load_calibrations
from dupwatch.imaging.image import DecodeLimits, ImageInput
from dupwatch.detectors.protocol import BatchedStage, Stage, VerifyingStage
from dupwatch.detectors.registry import StageContext, build_stage
from dupwatch.index import CandidateQuery, Entry, Hit, LocalStore, Lookup, Store, set_search_threads
from dupwatch.schemas import Candidate, Flag, Rejected, Verdict, VerdictLabel, utc_now
from dupwatch.locations import artifact
from dupwatch.detectors.options import Options

CALIBRATION_FILE = artifact("calibration.json")
# The image id a lookup is checked under: no event has it (the schema asks for one character at
# least), so a lookup is never taken for a re-delivery and hides no indexed image from itself.
LOOKUP_ID = ""
# Images per call of a batched stage (the embedding): a batch of 16 already runs much faster per
# image than one by one (docs/benchmarks.md, embedding speed), and between calls the cascade may
# pause for waiting lookups (see ``pause_point``), so a lookup waits for at most 16 of a
# stream batch's images, not all of them.
DESCRIBE_CHUNK = 16
# Candidates a verifying stage checks: each earlier stage's best few, at most VERIFY_MAX in all
# (each check reads the candidate's features and verifies them, milliseconds: `dupwatch bench
# features`).
VERIFY_PER_STAGE = 3
VERIFY_MAX = 8


@dataclass(frozen=True)
class CascadeResult:
    """One image's outcome: its label, the decisive candidate (None when unique), the best
    candidates (at most ``top_k``, one per image, best first), timings in ms, and flags.
    :meth:`to_verdict` makes the published record; :meth:`to_record` is what the store keeps with
    the indexed image, so a re-delivery gets the same verdict back through :meth:`from_record`."""
    label: VerdictLabel
    match: Candidate | None          # the decisive candidate; None when unique
    candidates: list[Candidate]      # best candidates over the stages that ran, best first
    timings_ms: dict[str, float]
    flags: tuple[Flag, ...] = ()
    evidence: dict[str, Any] | None = None   # what the verifying stage found, when it decided

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
            metadata=metadata or {}, flags=list(self.flags), evidence=self.evidence)

    def to_record(self) -> dict:
        """What is stored with the indexed image, so a re-delivery gets the same verdict."""
        return {"label": self.label.value,
                "match": _candidate_fields(self.match) if self.match else None,
                "candidates": [_candidate_fields(c) for c in self.candidates],
                "flags": [flag.value for flag in self.flags], "evidence": self.evidence}

    @classmethod
    def from_record(cls, record: dict, timings_ms: dict[str, float]) -> "CascadeResult":
        match = record.get("match")
        return cls(VerdictLabel(record["label"]), Candidate(*match) if match else None,
                   [Candidate(*c) for c in record.get("candidates", [])], timings_ms,
                   tuple(Flag(flag) for flag in record.get("flags", [])), record.get("evidence"))


@dataclass
class _Run:
    """What one image's check has learned so far."""
    tenant: str
    image_id: str
    image: ImageInput
    signals: dict[str, Any] = field(default_factory=dict)   # of the stages that ran
    candidates: list[Candidate] = field(default_factory=list)
    # Decisive matches an earlier stage could not settle alone, waiting for verification
    pending: dict[str, Candidate] = field(default_factory=dict)
    evidence: dict[str, Any] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    result: CascadeResult | Rejected | None = None
    redelivered: bool = False
    flags: set[Flag] = field(default_factory=set)
    top_k: int = 0                  # candidates listed in its result


class Cascade:
    """Stages in order over one :class:`Store` of tenant-namespaced indexes.

    ``check_batch`` is not thread-safe: callers serialise it, which also makes "search, then
    add" atomic within the process, so two copies checked by one worker can never both come
    out unique. The store answers a whole batch per lookup, which is one round trip to the
    shards when the store is sharded.
    """

    def __init__(self, stages: list[Stage], limits: DecodeLimits, min_score: float = 0.99,
                 search_k: int = 8, top_k: int = 0, search_threads: int = 1,
                 model_version: str | None = None, store: Store | None = None,
                 match_only_tenants: frozenset[str] = frozenset(),
                 evidence: Evidence = Evidence()) -> None:
        self.stages = stages
        self._verifying = frozenset(stage.name for stage in stages if stage.verifies)
        self.evidence = evidence
        self.min_score = min_score
        self.limits = limits
        self.search_k = search_k
        self.top_k = top_k
        self.search_threads = search_threads
        self.model_version = model_version
        self.match_only_tenants = match_only_tenants
        self.store: Store = store if store is not None else self.new_local_store()
        # Called on the checking thread between the steps of a check (rounds, chunks of a
        # batched stage), where nothing is half done: a worker runs waiting lookups there.
        self.pause_point: Callable[[], None] = lambda: None

    def new_local_store(self) -> LocalStore:
        return LocalStore({stage.name: (stage.new_index, stage.load_index) for stage in self.stages})

    def image(self, raw: bytes) -> ImageInput:
        return ImageInput(raw, self.limits)

    def check(self, tenant: str, image_id: str, image: ImageInput, *,
              index: bool = True) -> CascadeResult:
        """Compare one image with the tenant's earlier images, then (if ``index``) remember it.

        Raises :class:`dupwatch.schemas.Rejected` for bytes that cannot be decoded.
        """
        result = self.check_batch([(tenant, image_id, image)], index=index)[0]
        if isinstance(result, Rejected):
            raise result
        return result

    def look_up(self, tenant: str, image: ImageInput, top_k: int | None = None) -> CascadeResult:
        """What checking the image would answer now, listing ``top_k`` candidates (default: the
        cascade's), without indexing it: the index is left exactly as it was.

        Raises :class:`dupwatch.schemas.Rejected` for bytes that cannot be decoded.
        """
        answers: dict[int, CascadeResult | Rejected] = {}
        self.look_up_batch([(tenant, image, top_k)], answers.__setitem__)
        if isinstance(answers[0], Rejected):
            raise answers[0]
        return answers[0]

    def look_up_batch(self, queries: list[tuple[str, ImageInput, int | None]],
                      answered: Callable[[int, CascadeResult | Rejected], None]) -> None:
        """:meth:`look_up` for several images at once (one forward pass for those that need
        the embedding), each against the index alone, never against another query. Calls
        ``answered(i, result)`` as soon as query ``i`` is settled: a query the hashes settle
        is answered before the others' embedding runs."""
        set_search_threads(self.search_threads)
        runs = [_Run(tenant, LOOKUP_ID, image, top_k=self.top_k if top_k is None else top_k)
                for tenant, image, top_k in queries]
        number_of = {id(run): n for n, run in enumerate(runs)}
        self._check_runs(runs, None, lambda run: answered(number_of[id(run)], run.result))

    def check_batch(self, items: list[tuple[str, str, ImageInput]], *,
                    index: bool = True, top_k: int | None = None) -> list[CascadeResult | Rejected]:
        """Check images as if one by one in this order, each against everything before it
        (indexed earlier, or earlier in the batch), then index them unless ``index`` is False
        or their tenant is match-only. A re-delivered image (the same bytes under the same id,
        already indexed) gets the verdict it got then, and is not indexed again; different bytes
        under an indexed id are new content (flagged image_id_reused) and replace the old.
        """
        # OpenMP's thread count is per calling thread, and workers call from their own thread.
        set_search_threads(self.search_threads)
        runs: dict[tuple[str, str, bytes], _Run] = {}
        for tenant, image_id, image in items:  # an image twice in a batch is checked once
            if (tenant, image_id, image.digest) not in runs:
                run = runs[tenant, image_id, image.digest] = _Run(
                    tenant, image_id, image, top_k=self.top_k if top_k is None else top_k)
                if any(key[:2] == (tenant, image_id) for key in runs if key[2] != image.digest):
                    run.flags.add(Flag.IMAGE_ID_REUSED)
        self._check_runs(list(runs.values()), self.new_local_store())
        if index:
            self.store.add([self._entry(run) for run in runs.values() if self._indexes(run)])
        return [runs[tenant, image_id, image.digest].result  # type: ignore[misc]
                for tenant, image_id, image in items]

    def _check_runs(self, runs: list[_Run], within_batch: LocalStore | None,
                    settled: Callable[[_Run], None] = lambda run: None) -> None:
        """Every run's result, round by round; ``settled(run)`` as each one's is final. Runs are
        checked against each other too (as if one by one) when ``within_batch`` holds them."""
        pending = runs
        for number, stages in enumerate(self._rounds()):
            if number:
                self.pause_point()
            still_open = self._run_round(stages, pending, within_batch, first=number == 0)
            for run in pending:
                if run.result is not None:
                    settled(run)
            pending = still_open
        for run in pending:
            run.result = self._result(None, run)
            settled(run)

    def add_to_bank(self, tenant: str, image_id: str, image: ImageInput) -> None:
        """Index an image under every stage, with no verdict: an entry of a moderation bank
        that a match-only tenant's uploads are checked against."""
        run = _Run(tenant, image_id, image)
        described = self._describe(self.stages, [run])
        if isinstance(run.result, Rejected):
            raise run.result
        self.store.add([Entry(tenant, image_id, described[0][1], {}, time.time_ns())])

    def describe_ahead(self, image: ImageInput) -> None:
        """Do the per-image work of every stage for a decoded image before check_batch asks for
        it (the signals of unbatched stages, what batched ones prepare), e.g. on another thread
        while this one runs a batch's forward pass. It changes no verdict: check_batch uses
        what is there and computes the rest. Raises what decoding raised."""
        for stage in self.stages:
            if _applies(stage, image):
                if getattr(stage, "batched", False):
                    stage.prepare(image)  # type: ignore[attr-defined]
                else:
                    _signal(stage, image)

    def _rounds(self) -> list[list[Stage]]:
        """Stages grouped into lookups. In memory each stage has its own, so no stage describes
        an image an earlier one settled; when a lookup is a round trip to the shards, the cheap
        stages share one and only a batched (costly) stage starts a new group."""
        if not self.store.round_trip:
            return [[stage] for stage in self.stages]
        rounds: list[list[Stage]] = []
        for stage in self.stages:
            if not rounds or stage.batched or stage.verifies:
                rounds.append([])
            rounds[-1].append(stage)
        return rounds

    def _run_round(self, stages: list[Stage], runs: list[_Run], within_batch: LocalStore | None,
                   first: bool) -> list[_Run]:
        """One lookup for these stages; returns the runs still open after them."""
        described = self._describe(stages, runs)
        queries = [Lookup(run.tenant, run.image_id, self._query_signals(run, signals))
                   for run, signals in described]
        started = time.perf_counter()
        answers = self.store.lookup(queries, self.search_k)
        lookup_ms = _ms_since(started) / max(1, len(queries) * len(stages))
        still_open = []
        for (run, signals), query, answer in zip(described, queries, answers):
            if first and answer.earlier is not None:
                if _same_bytes(answer.earlier, run.image):
                    run.result = CascadeResult.from_record(answer.earlier, {"lookup": lookup_ms})
                    run.redelivered = True
                    continue
                run.flags.add(Flag.IMAGE_ID_REUSED)
            if within_batch is not None:
                answer.merge(within_batch.lookup([query], self.search_k)[0], self.search_k)
            for stage in (stage for stage in stages if stage.name in signals):
                match = self._run_stage(stage, run, signals[stage.name],
                                        answer.hits.get(stage.name, []), lookup_ms)
                if match is not None:
                    run.result = self._result(match, run)
                    break
            if within_batch is not None:
                within_batch.add([self._entry(run)])
            if run.result is None:
                still_open.append(run)
        return still_open

    def _describe(self, stages: list[Stage], runs: list[_Run]) -> list[tuple[_Run, dict[str, Any]]]:
        """Each run's signals for these stages (those that apply to its image). Batched stages
        describe all images in one call; a run whose image cannot be decoded ends with the
        rejection."""
        described = []
        for run in runs:
            try:
                if any(stage.needs_pixels for stage in stages):
                    run.image.pixels  # noqa: B018  decoded once (maybe ahead), timed on its own
                    run.timings_ms["decode"] = round(run.image.decode_ms or 0.0, 3)
                for stage in stages:
                    if not stage.batched and _applies(stage, run.image):
                        _signal(stage, run.image)
                described.append(run)
            except Rejected as error:
                run.result = error
        for stage in stages:
            if stage.batched:
                images = [run.image for run in described if _applies(stage, run.image)]
                for start in range(0, len(images), DESCRIBE_CHUNK):
                    if start:
                        self.pause_point()
                    _describe_batch(stage, images[start:start + DESCRIBE_CHUNK])
        return [(run, {stage.name: run.image.signals[stage.name] for stage in stages
                       if _applies(stage, run.image)}) for run in described]

    def _query_signals(self, run: _Run, signals: dict[str, Any]) -> dict[str, Any]:
        """What each stage searches with: its signal, or for a verifying stage its signal and the
        candidates to check."""
        return {name: CandidateQuery(signal, to_verify(run.candidates))
                if name in self._verifying else signal for name, signal in signals.items()}

    def _run_stage(self, stage: Stage, run: _Run, signal: Any, hits: list[Hit],
                   lookup_ms: float) -> Candidate | None:
        run.signals[stage.name] = signal
        run.timings_ms[stage.name] = round(run.image.describe_ms[stage.name] + lookup_ms, 3)
        return self._decide(stage, hits, run)

    def _result(self, match: Candidate | None, run: _Run) -> CascadeResult:
        run.timings_ms["total"] = round(sum(run.timings_ms.values()), 3)
        label = self._label(match, run) if match else VerdictLabel.UNIQUE
        best = _best_per_image(run.candidates)[: run.top_k]
        if any(stage.needs_pixels for stage in self.stages) and _flat(run.image):
            run.flags.add(Flag.LOW_INFORMATION)
        evidence = run.evidence if match is not None and match.stage in self._verifying else None
        return CascadeResult(label, match, best, run.timings_ms, tuple(sorted(run.flags)), evidence)

    def _indexes(self, run: _Run) -> bool:
        return (isinstance(run.result, CascadeResult) and not run.redelivered
                and run.tenant not in self.match_only_tenants)

    @staticmethod
    def _entry(run: _Run) -> Entry:
        record = ({**run.result.to_record(), "sha256": run.image.digest.hex()}
                  if isinstance(run.result, CascadeResult) else {})
        return Entry(run.tenant, run.image_id, dict(run.signals), record, time.time_ns())

    def _label(self, match: Candidate, run: _Run) -> VerdictLabel:
        """The label of the cheapest stage that recognises the match as its kind of copy: a copy
        the pHash still finds close is a near duplicate even when the embedding settled it; else
        the deciding stage's (a verifying stage's from what it found)."""
        recognised = {c.stage for c in run.candidates
                      if c.image_id == match.image_id and self._stage(c.stage).recognises(c.distance)}
        deciding = self._stage(match.stage)
        own = (cast(VerifyingStage, deciding).label_for(run.evidence)
               if deciding.verifies and run.evidence else deciding.label)
        return next((stage.label for stage in self.stages if stage.name in recognised), own)

    def _stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)

    def _decide(self, stage: Stage, hits: list[Hit], run: _Run) -> Candidate | None:
        """The best candidate whose score, combined over the stages run so far, is decisive;
        when a verifying stage follows, only one this stage may settle alone.

        Hits come closest (then earliest) first, so ties go to the earliest image.
        """
        fresh = [self._candidate(stage, hit) for hit in hits]
        run.candidates.extend(fresh)
        position = self.stages.index(stage)
        if stage.verifies:
            return self._decide_verified(stage, hits, run)
        verified_later = any(later.verifies for later in self.stages[position + 1:])
        stages_run = tuple(s.name for s in self.stages[: position + 1])
        best = None
        for candidate in fresh:
            combined = round(self.evidence.combine(stages_run, [
                c.score for c in run.candidates
                if c.image_id == candidate.image_id and c.stage not in self._verifying]), 6)
            if combined < self.min_score:
                continue
            scored = Candidate(candidate.image_id, stage.name, combined, candidate.distance)
            if verified_later and not stage.settles_alone(candidate.distance):
                run.pending[candidate.image_id] = scored
            elif best is None or combined > best.score:
                best = scored
        return best

    def _decide_verified(self, stage: Stage, hits: list[Hit], run: _Run) -> Candidate | None:
        """After verification, a checked candidate's score is the verification's: it confirms or
        refutes what the earlier stages saw. An earlier stage's decisive match stands where the
        verification lets it (``VerifyingStage.lets_stand``: photos it found no alignment for
        either way, as pixelated copies)."""
        best, evidence = None, None
        for hit in hits:
            found, found_evidence = _after_check(cast(VerifyingStage, stage), hit, run.pending)
            if found.score >= self.min_score and (best is None or found.score > best.score):
                best, evidence = found, found_evidence
        run.evidence = evidence
        return best

    @staticmethod
    def _candidate(stage: Stage, hit: Hit) -> Candidate:
        return Candidate(image_id=hit.key, stage=stage.name,
                         score=round(stage.score(hit.distance), 6), distance=hit.distance)


def new_cascade(options: Options,
                on_embedding_batch: Callable[[int, float], None] | None = None) -> Cascade:
    """The cascade the options describe, over an empty in-memory store (a worker gives it
    the sharded store instead: dupwatch.wiring)."""
    calibrations, evidence = load_calibrations(CALIBRATION_FILE, options.phash.size)
    context = StageContext(options, calibrations, on_embedding_batch)
    stages = [build_stage(name, context) for name in options.cascade.stages]
    model_version = next((stage.model.version for stage in stages  # type: ignore[attr-defined]
                          if stage.name == "embedding"), None)
    cascade_options = options.cascade
    return Cascade(stages, options.decode, min_score=cascade_options.min_score,
                   search_k=cascade_options.search_k, top_k=cascade_options.top_k,
                   search_threads=cascade_options.search_threads, model_version=model_version,
                   match_only_tenants=cascade_options.match_only_tenants, evidence=evidence)


def _after_check(stage: VerifyingStage, hit: Hit, pending: dict[str, Candidate]
                 ) -> tuple[Candidate, dict[str, Any] | None]:
    """A checked candidate as the verification leaves it, with the evidence the verdict carries:
    the verification's own score, or the earlier stages' decisive one where it lets that stand."""
    score = round(stage.score(hit.distance), 6)
    earlier = pending.get(hit.key)
    if earlier is not None and earlier.score > score and stage.lets_stand(hit.evidence or {}):
        return earlier, None
    return Candidate(hit.key, stage.name, score, hit.distance), hit.evidence


def to_verify(candidates: list[Candidate]) -> tuple[str, ...]:
    """The images a verifying stage checks, of the candidates the earlier stages found (in
    their order, best first per stage): each stage's best VERIFY_PER_STAGE, at most VERIFY_MAX."""
    per_stage: dict[str, list[str]] = {}
    for candidate in candidates:
        chosen = per_stage.setdefault(candidate.stage, [])
        if len(chosen) < VERIFY_PER_STAGE and candidate.image_id not in chosen:
            chosen.append(candidate.image_id)
    return tuple(dict.fromkeys(i for chosen in per_stage.values() for i in chosen))[:VERIFY_MAX]


def _best_per_image(candidates: list[Candidate]) -> list[Candidate]:
    """Each image once, at its best score over the stages, best first (stable for ties)."""
    best: dict[str, Candidate] = {}
    for candidate in candidates:
        if candidate.image_id not in best or candidate.score > best[candidate.image_id].score:
            best[candidate.image_id] = candidate
    return sorted(best.values(), key=lambda c: -c.score)


def _applies(stage: Stage, image: ImageInput) -> bool:
    """Stages that look at the pixels pass over flat pictures: a hash or descriptor of a flat
    picture is noise that matches any other flat picture, whatever its colour. (Call after
    decoding: it reads the pixels.)"""
    return not (stage.needs_pixels and image.low_information)


def _flat(image: ImageInput) -> bool:
    try:
        return image.low_information
    except Rejected:  # bytes that were never decoded (settled by SHA-256) and cannot be
        return False


def _same_bytes(record: dict, image: ImageInput) -> bool:
    """Whether an indexed image's record is of these very bytes (a re-delivery). Records from
    before dupwatch kept the digest count as the same, as they always did."""
    return record.get("sha256", image.digest.hex()) == image.digest.hex()


def _signal(stage: Stage, image: ImageInput) -> Any:
    """The stage's signal for the image, computed once (and timed) whoever asks first."""
    if stage.name not in image.signals:
        started = time.perf_counter()
        image.signals[stage.name] = stage.describe(image)
        image.describe_ms[stage.name] = _ms_since(started)
    return image.signals[stage.name]


def _describe_batch(stage: Stage, images: list[ImageInput]) -> None:
    """One call for every image still without the stage's signal; each is timed at its share."""
    missing = [image for image in images if stage.name not in image.signals]
    if not missing:
        return
    started = time.perf_counter()
    signals = cast(BatchedStage, stage).describe_batch(missing)
    share = _ms_since(started) / len(missing)
    for image, signal in zip(missing, signals, strict=True):
        image.signals[stage.name] = signal
        image.describe_ms[stage.name] = round(share, 3)


def _candidate_fields(candidate: Candidate) -> list:
    return [candidate.image_id, candidate.stage, candidate.score, candidate.distance]


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
