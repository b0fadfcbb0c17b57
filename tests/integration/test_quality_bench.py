"""`dupwatch bench quality` run as a user runs it: both splits, the look-alikes and the objects
on white, each with the verify stage and without.
(The `gathered` folder is a fixture in tests/conftest.py; the cascade replay is checked
in-process in tests/unit/test_quality_bench.py.)"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


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
    for method in ("cascade", "no_verify"):  # the worker's default, and without verification
        assert set(sources[f"{method}_at_min_score"]["recall_per_family"]) == set(families)
    for stream in ("lookalikes", "lookalikes_no_verify"):
        assert report[stream]["images"] == 12 and 0 <= report[stream]["matched"] <= 12
        assert f"{stream} matched" in result.stdout
    for stream in ("plain_background", "plain_background_no_verify"):
        # objects on white, one per gathered image, sharing ten outlines
        assert report[stream]["images"] == 12 and 0 <= report[stream]["matched"] <= 12
        assert f"{stream} matched" in result.stdout
