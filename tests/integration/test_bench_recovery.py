"""`dupwatch bench recovery` at a toy size, run as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_recovery_bench_replays_snapshots_in_the_background_and_rebuilds_through_a_broker(
        tmp_path: Path) -> None:
    out = tmp_path / "recovery.json"
    result = subprocess.run([sys.executable, "-m", "dupwatch", "bench", "recovery", "--sizes",
                             "2500", "--tail", "300", "--broker-records", "1500",
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert run["images"] == 2500 and run["tail"] == 300
    assert run["replay_per_s"] > 0 and run["reference_per_s"] > 0
    # the snapshot written by the forked child holds the whole shard: its load gave it back
    assert run["snapshot_mb"] > 2500 * 8000 / 1e6 and run["structure"] == "flat"
    assert run["lookups_during_snapshot"] >= 1 and run["fork_pause_ms"] > 0
    assert abs(run["recovery_from_snapshot_s"] - run["load_s"] - run["tail_s"]) <= 0.011  # rounded
    assert report["through_broker"]["records"] == 1500
    assert report["through_broker"]["rebuild_per_s"] > 0
    assert "records through the bundled broker" in result.stdout
