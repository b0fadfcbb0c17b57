"""The typed options of the detectors: each stage's, the cascade's, and :class:`Options`, all
of them together (what :func:`~dupwatch.detectors.cascade.new_cascade` takes).
``dupwatch.wiring`` builds them from the settings."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dupwatch.imaging.image import DecodeLimits
from dupwatch.index.vector import VectorIndexOptions


@dataclass(frozen=True)
class PHashOptions:
    """The pHash stages' options (the ``phash_*`` settings); distances are in bits of the
    size^2-bit hash."""
    size: int                    # grid side: size^2 bits
    max_distance: int            # beyond this a match is no evidence at all
    near_distance: int           # up to this the pHash calls a match a near duplicate
    settle_distance: int         # up to this a match decides without verification


@dataclass(frozen=True)
class EmbeddingOptions:
    """How to load and run the encoder (``weights``, ``embedding_*``, ``export_dir``):
    ``resolution`` in pixels, ``threads`` 0 for the backend's default. EmbeddingModel.from_options
    checks ``weights`` against ``sha256`` (or the bundled pin) before anything loads."""
    weights: Path | None = None  # None: the bundled weights
    sha256: str | None = None
    resolution: int = 160
    device: str = "auto"
    threads: int = 0
    backend: str = "onnx"        # model/backends/ registers the names
    export_dir: Path | None = None  # None: the default place for ONNX exports


@dataclass(frozen=True)
class CascadeOptions:
    """What the cascade itself takes: stage names in order, the calibrated score a match needs,
    candidates fetched per stage (``search_k``) and listed per verdict (``top_k``), FAISS threads
    per search, and the tenants that are matched against their bank but never indexed."""
    stages: tuple[str, ...]
    min_score: float
    search_k: int
    top_k: int
    search_threads: int
    match_only_tenants: frozenset[str]


@dataclass(frozen=True)
class Options:
    """Everything a cascade needs, typed and grouped by the part that takes it (built from the
    settings by :func:`dupwatch.wiring.cascade_options`)."""
    cascade: CascadeOptions
    decode: DecodeLimits
    phash: PHashOptions
    embedding: EmbeddingOptions
    vector: VectorIndexOptions
