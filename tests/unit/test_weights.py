"""Weights are code: only weights whose SHA-256 the package pins (or the operator gives) load,
and training checkpoints load as plain tensors, never as pickled objects.

`dupwatch scan` and a worker given unpinned weights: tests/integration/test_weights.py."""
from __future__ import annotations

import hashlib
import pathlib
from pathlib import Path

import pytest
import torch

from dupwatch.detectors.embedding import DEFAULT_WEIGHTS, EmbeddingModel, WeightsError, WeightsMismatch
from dupwatch.model import pinned
from dupwatch.model.train import TrainConfig, TrainingError, train


def test_the_bundled_weights_are_pinned_in_the_package_with_no_file_beside_them() -> None:
    assert pinned.BUNDLED_WEIGHTS[pinned.DEFAULT] == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    shipped = {name for name, _ in pinned.BUNDLED_EXPORTS.values()}
    # the weights and their shipped ONNX export, each pinned above; no .sha256 file beside them
    assert {p.name for p in DEFAULT_WEIGHTS.parent.iterdir()} == {DEFAULT_WEIGHTS.name, *shipped}
    assert EmbeddingModel.load().version == f"encoder-v3+{pinned.BUNDLED_WEIGHTS['encoder-v3.pt'][:12]}"


def test_weights_the_code_does_not_pin_are_refused_whatever_lies_beside_them(other_weights) -> None:
    weights, _ = other_weights
    with pytest.raises(WeightsError, match="not pinned: give their SHA-256 with --weights-sha256"):
        EmbeddingModel.load(weights)


def test_weights_load_with_the_sha256_given_for_them(other_weights) -> None:
    weights, digest = other_weights
    model = EmbeddingModel.load(weights, sha256=digest.upper(), backend="torch")
    assert model.version == f"encoder-custom+{digest[:12]}"
    with pytest.raises(WeightsMismatch, match="changed, damaged or swapped"):
        EmbeddingModel.load(weights, sha256=pinned.BUNDLED_WEIGHTS["encoder-v3.pt"])
    with pytest.raises(WeightsError, match="cannot read weights"):
        EmbeddingModel.load(weights.with_name("missing.pt"), sha256=digest)


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
