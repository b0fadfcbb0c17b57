"""`dupwatch bench soak`, briefly: mixed traffic with bad input, and nothing lost."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_a_short_soak_answers_every_event_and_writes_its_series(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run([sys.executable, "-m", "dupwatch", "bench", "soak", "--minutes", "0.25",
                             "--rate", "15", "--warmup-minutes", "0.1", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    summary = report["summary"]
    assert summary["missing"] == 0
    assert summary["verdicts"] + summary["dead_letters"] - summary["redelivered"] == summary["published"]
    # the bad kinds: an oversized event first, then undecodable bytes, schema violations and an
    # image over the pixel limit, in turn
    assert set(report["dead_letter_reasons"]) == {"too_large", "decode_failed", "schema_invalid"}
    assert set(report["verdict_mix"]) == {"fresh", "exact", "variant", "bad"}
    assert report["series"] and all(s["worker_rss_mb"] > 0 for s in report["series"])
    assert "| t | phase |" in result.stdout
