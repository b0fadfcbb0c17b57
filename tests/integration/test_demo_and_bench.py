"""The README's first command and the benchmark, run as a newcomer runs them."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from support.without_pytorch import env_without_pytorch


def test_demo_prints_a_verdict_for_every_sample_and_exits_cleanly(samples, tmp_path) -> None:
    # As the README's first command installs it: no PyTorch, in the demo or its worker.
    result = subprocess.run([sys.executable, "-m", "dupwatch", "demo"], capture_output=True,
                            text=True, timeout=300, env=env_without_pytorch(tmp_path / "hidden"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert len(rows) == len(samples)
    expected = {s.file.image_id: s.expected_verdict for s in samples}
    assert {row[1]: row[2] for row in rows} == expected  # tenant, image, verdict, ...
    assert "every verdict matches" in result.stderr
    # The worker's log outlives the demo, and says what the worker did.
    log = Path(re.search(r"\(log: (\S+),", result.stderr).group(1))
    assert "starting: broker" in log.read_text() and "\x1b" not in log.read_text()


def test_throughput_bench_writes_json_and_a_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "dupwatch", "bench", "throughput",
                             "--count", "120", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["events"] == 120
    for part in ("in_process", "end_to_end", "worker_drain"):
        assert report[part]["images_per_s"] > 0
    assert report["end_to_end"]["latency_ms"]["p99"] >= report["end_to_end"]["latency_ms"]["p50"]
    assert "(b) / (a)" in result.stdout
