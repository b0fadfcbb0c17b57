"""`dupwatch bench index` at a toy size, run as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_index_bench_measures_every_option_against_exact_search(tmp_path: Path) -> None:
    out = tmp_path / "bench-index.json"
    result = subprocess.run([sys.executable, "-m", "dupwatch", "bench", "index", "--sizes", "3000",
                             "--queries", "100", "--vector-train-after", "2000",
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["index"]: row for row in json.loads(out.read_text())["results"]}
    assert sorted(rows) == ["flat", "hnsw-sq8", "ivf-sq8"]
    assert rows["flat"]["recall_at_10"] == 1.0 and rows["flat"]["structure"] == "flat"
    assert rows["ivf-sq8"]["options"]["lists"] == 40
    for kind in ("hnsw-sq8", "ivf-sq8"):
        row = rows[kind]
        assert row["structure"] == kind and row["training_s"] is not None
        assert 0.8 <= row["recall_at_10"] <= 1.0 and row["copy_at_1"] >= 0.95
    flat_bytes = rows["flat"]["snapshot_bytes_per_vector"]
    assert rows["ivf-sq8"]["snapshot_bytes_per_vector"] < flat_bytes / 2
    for row in rows.values():
        assert row["search_p99_ms"] >= row["search_p50_ms"] > 0
    table = out.with_suffix(".md").read_text()
    assert table.startswith("| vectors | index |")
    assert "ivf-sq8 (40 lists, nprobe 16)" in table and "hnsw-sq8 (ef_search 256)" in table
