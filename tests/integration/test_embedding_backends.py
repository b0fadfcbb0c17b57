"""`dupwatch scan` with the int8 backend and no export says how to make one.
(The backends themselves: tests/unit/test_embedding_backends.py.)"""
from __future__ import annotations

import subprocess
import sys

from dupwatch.locations import samples_dir


def test_scan_without_an_export_says_how_to_make_one(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dupwatch", "scan", "--embedding-backend", "onnx-int8",
         "--export-dir", str(tmp_path), str(samples_dir() / "originals")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"run `dupwatch model export --export-dir {tmp_path}`" in result.stderr
