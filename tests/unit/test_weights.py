"""Weights are code: only weights whose SHA-256 the package pins (or the operator gives) load,
and training checkpoints load as plain tensors, never as pickled objects."""
from __future__ import annotations

import hashlib
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dupwatch.detectors.embedding import DEFAULT_WEIGHTS, EmbeddingModel, WeightsError, WeightsMismatch
from dupwatch.model import pinned
from dupwatch.model.train import TrainConfig, TrainingError, train
from dupwatch.settings import Settings
from dupwatch.messaging.broker import free_port
from dupwatch.locations import samples_dir
from dupwatch.streams.worker_process import WorkerProcess

PHOTO = samples_dir() / "originals" / "coffee.jpg"


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory) -> tuple[Path, str]:
    """Different, working weights (one tensor changed) with a correct .sha256 file beside them:
    what the sidecar check let through."""
    folder = tmp_path_factory.mktemp("weights")
    state = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    state["project.bias"] = state["project.bias"] + 0.5
    weights = folder / "encoder-custom.pt"
    torch.save(state, weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    (folder / "encoder-custom.pt.sha256").write_text(f"{digest}  encoder-custom.pt\n")
    return weights, digest


def dupwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dupwatch", *args], capture_output=True,
                          text=True, timeout=300)


def test_the_bundled_weights_are_pinned_in_the_package_with_no_file_beside_them() -> None:
    assert pinned.BUNDLED_WEIGHTS[pinned.DEFAULT] == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    assert [p.name for p in DEFAULT_WEIGHTS.parent.iterdir()] == [DEFAULT_WEIGHTS.name]
    assert EmbeddingModel.load().version == f"encoder-v3+{pinned.BUNDLED_WEIGHTS['encoder-v3.pt'][:12]}"


def test_weights_the_code_does_not_pin_are_refused_whatever_lies_beside_them(other_weights) -> None:
    weights, _ = other_weights
    with pytest.raises(WeightsError, match="not pinned: give their SHA-256 with --weights-sha256"):
        EmbeddingModel.load(weights)


def test_weights_load_with_the_sha256_given_for_them(other_weights) -> None:
    weights, digest = other_weights
    model = EmbeddingModel.load(weights, sha256=digest.upper())
    assert model.version == f"encoder-custom+{digest[:12]}"
    with pytest.raises(WeightsMismatch, match="changed, damaged or swapped"):
        EmbeddingModel.load(weights, sha256=pinned.BUNDLED_WEIGHTS["encoder-v3.pt"])
    with pytest.raises(WeightsError, match="cannot read weights"):
        EmbeddingModel.load(weights.with_name("missing.pt"), sha256=digest)


def test_scan_with_unpinned_weights_says_so_in_one_line(other_weights) -> None:
    weights, digest = other_weights
    refused = dupwatch("scan", "--weights", str(weights), str(PHOTO))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"dupwatch: weights {weights} are not pinned: give their SHA-256 with --weights-sha256 "
        f"(DUPWATCH_WEIGHTS_SHA256), e.g. from `sha256sum {weights}` or the training run's "
        "training.json, after checking where the file came from"]
    pinned_run = dupwatch("scan", "--weights", str(weights), "--weights-sha256", digest, str(PHOTO))
    assert pinned_run.returncode == 0, pinned_run.stderr
    assert f'"model_version":"encoder-custom+{digest[:12]}"' in pinned_run.stdout


class _RunsCode:
    """Pickles to a call of Path.touch: loading it with weights_only=False creates the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_checkpoint_that_holds_code_is_refused_not_run(tmp_path: Path, samples) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for sample in samples[:6]:
        (photos / Path(sample.file.image_id).name).write_bytes(sample.file.path.read_bytes())
    config = TrainConfig(photos=(str(photos),), out=str(tmp_path / "run"), steps=1, batch=4,
                         resolution=64, init="scratch")
    train(config, log=lambda line: None)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)  # our own checkpoints load as data
    marker = tmp_path / "code-ran"
    torch.save({**state, "extra": _RunsCode(marker)}, checkpoint)
    with pytest.raises(TrainingError, match="holds more than tensors and plain values"):
        train(TrainConfig(**{**config.__dict__, "steps": 2}), resume=True, log=lambda line: None)
    assert not marker.exists()


@pytest.mark.broker
@pytest.mark.slow
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
