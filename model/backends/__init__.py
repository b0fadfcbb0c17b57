"""Ways to run the encoder, registered by name: ``onnx`` (the default: ONNX Runtime on the fp32
export of the weights, shipped for the bundled ones), ``onnx-int8`` (the export quantised to
int8) and ``torch`` (the trained module in PyTorch: the ``gpu`` or ``train`` extra). Each takes the same uint8 pixels and returns the same kind of descriptor; the contract
tests (tests/test_embedding_backends.py) hold every one of them to it.

A new backend is one module with a class and one ``@register("name")`` line, plus its name in
``_MODULES`` (the module imported when the name is asked for).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np


@dataclass(frozen=True)
class BackendOptions:
    """What every backend is built from: pinned weights, where to run, and the exports."""
    weights: Path
    weights_sha256: str          # already checked against the pin
    device: str = "auto"         # auto, cpu or cuda
    threads: int = 0             # intra-op CPU threads (0: the runtime's default)
    export_dir: Path | None = None   # None: model/backends/export.py's default folder


class EmbeddingBackend(Protocol):
    """The encoder behind one name, built by :func:`build` from :class:`BackendOptions`: ``embed``
    maps uint8 pixels (from :func:`pixels_of`) to ``dim`` float32 unit vectors, one per image, in
    order. ``device`` is where it actually runs. A backend that cannot be built raises
    BackendError. The cascade calls it from one thread; a backend need not be thread-safe."""
    name: str
    device: str
    dim: int
    version_suffix: str   # added to the model's version where descriptors differ beyond rounding

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """(N, R, R, 3) uint8 RGB -> (N, dim) float32 unit vectors."""
        ...


BackendFactory = Callable[[BackendOptions], EmbeddingBackend]
BACKENDS: dict[str, BackendFactory] = {}
# Module of each backend, imported only when it is asked for (torch and onnxruntime are heavy).
_MODULES = {"torch": "torch_backend", "onnx": "onnx_backend", "onnx-int8": "onnx_backend"}
NAMES = tuple(_MODULES)


class BackendError(ValueError):
    """A backend that cannot be built, and what to do about it."""


def register(name: str) -> Callable[[BackendFactory], BackendFactory]:
    def add(factory: BackendFactory) -> BackendFactory:
        if name in BACKENDS and BACKENDS[name] is not factory:
            raise ValueError(f"embedding backend {name!r} registered twice")
        BACKENDS[name] = factory
        return factory
    return add


def build(name: str, options: BackendOptions) -> EmbeddingBackend:
    if name not in _MODULES:
        raise BackendError(f"unknown embedding backend {name!r} (choose from {', '.join(NAMES)})")
    importlib.import_module(f"{__name__}.{_MODULES[name]}")
    return BACKENDS[name](options)


def pixels_of(images: list, resolution: int) -> np.ndarray:
    """PIL RGB images -> (N, R, R, 3) uint8, what every backend takes. The whole picture is
    kept (squashed, not cropped): for copy detection the borders matter as much as the centre."""
    from PIL import Image

    return np.stack([np.asarray(image.resize((resolution, resolution), Image.Resampling.BILINEAR))
                     for image in images])
