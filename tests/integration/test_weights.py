"""Unpinned weights, as a user meets them: `dupwatch scan` says so in one line, a worker exits
with the reason. (The other_weights fixture is in tests/conftest.py, shared with the unit tier.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dupwatch.settings import Settings
from dupwatch.messaging.broker import free_port
from dupwatch.locations import samples_dir
from dupwatch.streams.worker_process import WorkerProcess

PHOTO = samples_dir() / "originals" / "coffee.jpg"


def dupwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dupwatch", *args], capture_output=True,
                          text=True, timeout=300)


def test_scan_with_unpinned_weights_says_so_in_one_line(other_weights) -> None:
    weights, digest = other_weights
    refused = dupwatch("scan", "--weights", str(weights), str(PHOTO))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"dupwatch: weights {weights} are not pinned: give their SHA-256 with --weights-sha256 "
        f"(DUPWATCH_WEIGHTS_SHA256), e.g. from `sha256sum {weights}` or the training run's "
        "training.json, after checking where the file came from"]
    # PyTorch runs weights of one's own as they are (ONNX Runtime needs `dupwatch model export`)
    pinned_run = dupwatch("scan", "--weights", str(weights), "--weights-sha256", digest,
                          "--embedding-backend", "torch", str(PHOTO))
    assert pinned_run.returncode == 0, pinned_run.stderr
    assert f'"model_version":"encoder-custom+{digest[:12]}"' in pinned_run.stdout


def test_a_worker_with_unpinned_weights_exits_with_the_reason(bootstrap_servers: str, other_weights,
                                                               tmp_path: Path) -> None:
    weights, _ = other_weights
    settings = Settings(bootstrap_servers=bootstrap_servers, weights=str(weights),
                        web_port=free_port(), group_id="dupwatch-weights-test")
    log = tmp_path / "worker.log"
    worker = WorkerProcess(settings, log).start()
    try:
        code = worker.process.wait(timeout=180)
    finally:
        worker.stop()
    text = log.read_text()
    assert code != 0 and "Traceback" not in text
    assert f"dupwatch: weights {weights} are not pinned" in text
