"""Where dupwatch's bundled files live: the one lookup the code uses for them.

``artifacts/`` holds the versioned model artifacts, apart from the code: the encoder weights
(``weights/``, pinned by model/pinned.py), the calibration the cascade scores with, the quality
figures and data/training records, and the model card. Commands write them there
(``dupwatch train`` into its --out folder, then copied in with a new pin; ``dupwatch bench
quality --write-calibration``) and the code reads them only through :func:`artifact`.
``samples/`` holds the bundled sample photos (tests, demo, benchmarks).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def artifact(name: str) -> Path:
    """Path of the bundled artifact ``name`` (e.g. ``calibration.json``, ``weights/x.pt``)."""
    return Path(str(resources.files("dupwatch").joinpath("artifacts", name)))


def samples_dir() -> Path:
    """Folder of the bundled sample photos and their manifest."""
    return Path(str(resources.files("dupwatch").joinpath("samples")))


def docs_page(name: str) -> Path:
    """Path of the documentation page ``name`` in ``docs/`` (e.g. ``configuration.md``)."""
    return Path(str(resources.files("dupwatch").joinpath("docs", name)))
