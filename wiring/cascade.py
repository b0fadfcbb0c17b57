"""Settings -> the cascade's and the processor's options, and the cascade and processor of a
worker or `dupwatch scan` built from them."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from dupwatch.detectors import Cascade, new_cascade
from dupwatch.detectors.options import CascadeOptions, EmbeddingOptions, Options, PHashOptions
from dupwatch.errors import ConfigError
from dupwatch.imaging.image import DecodeLimits
from dupwatch.index.vector import VectorIndexOptions
from dupwatch.pipeline.fetch import FetchOptions
from dupwatch.pipeline.processor import Processor, ProcessorOptions
from dupwatch.settings import Settings


def cascade_options(settings: Settings) -> Options:
    return Options(
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


def fetch_options(settings: Settings) -> FetchOptions:
    return FetchOptions(tuple(settings.uri_roots), settings.max_event_bytes,
                        tuple(settings.fetch_allow_hosts),
                        tuple(settings.fetch_allow_private_networks), settings.fetch_timeout_s,
                        settings.fetch_connect_timeout_s, settings.fetch_retries,
                        settings.fetch_max_redirects, settings.fetch_tenant_concurrency)


def processor_options(settings: Settings) -> ProcessorOptions:
    return ProcessorOptions(settings.max_event_bytes, settings.max_metadata_bytes,
                            settings.decode_threads, settings.worker_name,
                            settings.dead_letter_excerpt_bytes, fetch_options(settings))


def build_cascade(settings: Settings,
                  on_embedding_batch: Callable[[int, float], None] | None = None) -> Cascade:
    """The cascade the settings describe, over an empty in-memory store (a worker gives it
    the sharded store instead: :func:`~dupwatch.wiring.worker.run_worker`)."""
    return new_cascade(cascade_options(settings), on_embedding_batch)


def build_processor(settings: Settings, cascade: Cascade) -> Processor:
    return Processor(processor_options(settings), cascade)


def scan_processor(settings: Settings) -> Processor:
    """`dupwatch scan`'s processor: its own cascade, its records signed "scan"."""
    return build_processor(settings.replace(worker_name="scan"), build_cascade(settings))
