"""Settings turned into typed options, in one place.

:class:`Settings` is what the user gave (flags, ``DUPWATCH_*``); :class:`Options` is what each
part of dupwatch takes: the decode limits, each stage's options, the vector index's (and
:func:`store_options`, a worker's store's).
Every command that runs the cascade builds it from ``Options.from_settings``, so a setting read
here reaches every worker, shard and benchmark alike. Values that cannot work raise
:class:`~dupwatch.errors.ConfigError` naming the setting.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dupwatch.imaging.image import DecodeLimits
from dupwatch.errors import ConfigError
from dupwatch.index.vector import VectorIndexOptions
from dupwatch.settings import Settings


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
class StoreOptions:
    """Where a worker's index lives: ``shards`` changelog partitions (fixed for the index's
    life), snapshots under ``state_dir`` every ``snapshot_interval_s``."""
    shards: int
    state_dir: Path | None
    snapshot_interval_s: float
    lookup_retry_s: float


@dataclass(frozen=True)
class Options:
    """Everything a cascade needs, typed and grouped by the part that takes it; built only by
    :meth:`from_settings` (a worker's store options come from :func:`store_options`)."""
    cascade: CascadeOptions
    decode: DecodeLimits
    phash: PHashOptions
    embedding: EmbeddingOptions
    vector: VectorIndexOptions

    @classmethod
    def from_settings(cls, settings: Settings) -> Options:
        return cls(
            cascade=CascadeOptions(tuple(settings.stages), settings.min_score, settings.search_k,
                                   settings.top_k, settings.search_threads,
                                   frozenset(settings.match_only_tenants)),
            decode=DecodeLimits(settings.max_image_pixels, settings.decode_draft_side,
                                settings.decode_timeout_ms, settings.max_jpeg_scans,
                                settings.decode_memory_mb),
            phash=PHashOptions(settings.phash_size, settings.phash_max_distance,
                               settings.phash_near_distance, settings.phash_settle_distance),
            embedding=EmbeddingOptions(Path(settings.weights) if settings.weights else None,
                                       settings.weights_sha256 or None,
                                       settings.embedding_resolution, settings.embedding_device,
                                       settings.embedding_threads, settings.embedding_backend,
                                       settings.export_path()),
            vector=vector_options(settings))


def vector_options(settings: Settings) -> VectorIndexOptions:
    try:
        return VectorIndexOptions(settings.vector_index, settings.vector_train_after,
                                  settings.vector_nprobe, settings.vector_ef_search)
    except ValueError as exc:
        raise ConfigError(f"{exc} (--vector-index, --vector-train-after, --vector-nprobe, "
                          "--vector-ef-search)") from None


def store_options(settings: Settings) -> StoreOptions:
    """A worker's store (only workers have one: ``scan`` keeps its index in memory)."""
    if settings.shards < 1:
        raise ConfigError(f"shards must be at least 1, got {settings.shards} (--shards): a "
                          "worker keeps its index in changelog-backed shards; one worker hosts "
                          "them all")
    return StoreOptions(settings.shards, settings.state_path(), settings.snapshot_interval_s,
                        settings.lookup_retry_s)
