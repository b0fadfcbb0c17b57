"""`dupwatch bench quality`: it measures what the worker does, on the splits it says it uses."""
from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from dupwatch.bench import quality
from dupwatch.detectors.cascade import Cascade
from dupwatch.detectors.embedding import EmbeddingModel
from dupwatch.imaging.image import DecodeLimits
from dupwatch.model.data import CALIBRATION_SOURCES, TEST_SOURCES, Photo
from dupwatch.schemas import VerdictLabel
from dupwatch.settings import Settings


def _dialog(number: int) -> Image.Image:
    """A distinct synthetic application dialog: title bar, fields, buttons."""
    rng = random.Random(number)
    image = Image.new("RGB", (320, 220), (236, 236, 236))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 320, 24), fill=(rng.randint(40, 90), rng.randint(60, 120), 160))
    draw.text((8, 6), f"Settings {number}: {'abcdefgh'[number % 8] * 5}", fill=(255, 255, 255))
    for row in range(rng.randint(2, 5)):
        y = 40 + row * 30
        draw.text((12, y + 4), f"Option {rng.randint(100, 999)}", fill=(20, 20, 20))
        draw.rectangle((120, y, 120 + rng.randint(60, 180), y + 20), outline=(90, 90, 90), fill="white")
    draw.rounded_rectangle((220, 185, 300, 210), 4, outline=(60, 60, 60), fill=(210, 210, 210))
    return image


@pytest.fixture(scope="module")
def gathered(tmp_path_factory: pytest.TempPathFactory, samples) -> Path:
    """A gathered folder as model/gather.py writes it: photos and dialogs from two calibration
    packages and two test packages (names from model/data.py's source split)."""
    folder = tmp_path_factory.mktemp("gathered")
    photos = [s.file.path for s in samples if s.role != "copy"]
    packages = {"calibration": sorted(CALIBRATION_SOURCES)[:2], "test": sorted(TEST_SOURCES)[:2]}
    rows = []
    for number in range(24):
        side = "calibration" if number % 2 else "test"
        if number < len(photos):
            name, package, kind = f"p{number}.jpg", packages[side][0], "photo"
            Image.open(photos[number]).convert("RGB").save(folder / name, quality=92)
        else:
            name, package, kind = f"d{number}.png", packages[side][1], "screenshot"
            _dialog(number).save(folder / name)
        rows.append({"file": name, "source_package": package, "kind": kind, "near_dup_group": ""})
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_the_cascade_it_scores_decides_as_the_workers_cascade(gathered: Path) -> None:
    """The bench scores pairs by replaying the cascade over each stage's candidates; every
    decision it replays must be the one the worker's Cascade takes on the same images."""
    settings = Settings()
    limits = DecodeLimits(settings.max_image_pixels, settings.decode_draft_side)
    photos = [Photo(path, path.name, "p", "photo") for path in sorted(gathered.glob("*.*g"))]
    evaluation = quality._eval_set(photos, limits, seed=7)
    stages, evidence = quality._fit(settings, EmbeddingModel.load(), evaluation)
    predictions = {stage.name: quality._predict(stage, evaluation) for stage in stages}
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


@pytest.mark.slow
def test_the_bench_reports_both_splits_and_the_lookalikes(gathered: Path, tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    result = subprocess.run([sys.executable, "-m", "dupwatch", "bench", "quality",
                             "--photos", str(gathered), "--out", str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["images"]["calibration"] == report["images"]["sources"] == 12
    sources = report["splits"]["sources"]
    families = sources["families"]
    assert "patch" in families and "combo" in families and len(families) == 19
    assert sources["positive_queries"] == 6 * len(families)  # half of 12 references, a copy each
    for method in sources["methods"].values():
        assert 0.0 <= method["micro_ap"] <= 1.0
        assert set(method["recall_per_family"]) == set(families)
        assert set(method["recall_per_kind"]) == {"photo", "other"}
    assert report["lookalikes"]["images"] == 12
    assert 0 <= report["lookalikes"]["matched"] <= 12
    assert "look-alikes matched" in result.stdout
