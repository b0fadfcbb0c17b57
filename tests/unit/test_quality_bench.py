"""`dupwatch bench quality` measures what the worker does: its cascade replay, in-process.

The command itself (both splits, the look-alikes): tests/integration/test_quality_bench.py;
the `gathered` folder both use is a fixture in tests/conftest.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from dupwatch.bench import quality
from dupwatch.detectors.cascade import Cascade
from dupwatch.detectors.embedding import EmbeddingModel
from dupwatch.imaging.image import DecodeLimits
from dupwatch.model.data import Photo
from dupwatch.schemas import VerdictLabel
from dupwatch.settings import Settings

HALF = 12


def test_the_cascade_it_scores_decides_as_the_workers_cascade(gathered: Path) -> None:
    """The bench scores pairs by replaying the cascade over each stage's candidates; every
    decision it replays must be the one the worker's Cascade takes on the same images."""
    settings = Settings()
    limits = DecodeLimits(settings.max_image_pixels, settings.decode_draft_side)
    # Half the gathered folder (its two dialogs and ten photos) is enough: every edit family
    # still has six copies to decide, and the replay is checked on each of them (the whole
    # folder took three times as long, the unit tier's largest share; the bench test uses it).
    files = sorted(gathered.glob("*.*g"))[:HALF]
    photos = [Photo(path, path.name, "p", "photo") for path in files]
    evaluation = quality._eval_set(photos, limits, seed=7)
    stages, evidence = quality._fit(settings, EmbeddingModel.load(), evaluation)
    predictions = quality._predict_all(stages, evaluation)
    scored = quality._cascade(stages, predictions, evidence, settings.min_score)

    cascade = Cascade(stages, limits, min_score=settings.min_score, search_k=quality.TOP_K,
                      evidence=evidence)
    for number, reference in enumerate(evaluation.references):  # every stage indexes each
        cascade.add_to_bank("t", str(number), reference)
    decided = 0
    for q, query in enumerate(evaluation.queries):
        result = cascade.check("t", f"q{q}", query.image, index=False)
        replayed = {ref: score for (i, ref), score in scored.items()
                    if i == q and score >= settings.min_score}
        if result.label is VerdictLabel.UNIQUE:
            assert not replayed, (query.family, replayed)
            continue
        decided += 1
        assert result.match.score == pytest.approx(max(replayed.values()), abs=1e-6)
        assert replayed.get(int(result.match.image_id)) == pytest.approx(result.match.score, abs=1e-6)
    assert decided > len(evaluation.queries) // 3  # most copies of real photos are found
