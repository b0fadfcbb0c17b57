"""Indexes of image signals: one protocol (add, search, remove, save, load, len), several kinds.

``ExactIndex`` maps digests to images, ``BinaryIndex`` searches bit strings by Hamming distance
in FAISS, ``VectorIndex`` searches embeddings by cosine distance in FAISS,
``FeatureIndex`` keeps local features on disk and checks a query against named candidates,
``TenantIndexes`` keeps one index per tenant so tenants never match each other, and a
``Store`` holds every stage's indexes (``LocalStore`` in memory; a shard is one too).
"""
import faiss

from dupwatch.index.binary import BinaryIndex
from dupwatch.index.exact import ExactIndex
from dupwatch.index.features import FeatureIndex
from dupwatch.index.protocol import CandidateQuery, Hit, Index
from dupwatch.index.store import Entry, Found, LocalStore, Lookup, Store
from dupwatch.index.tenants import TenantIndexes
from dupwatch.index.vector import VectorIndex

__all__ = ["BinaryIndex", "CandidateQuery", "Entry", "ExactIndex", "FeatureIndex", "Found", "Hit",
           "Index", "LocalStore", "Lookup", "Store", "TenantIndexes", "VectorIndex",
           "set_search_threads"]


def set_search_threads(threads: int) -> None:
    """FAISS's OpenMP threads for searches (process-wide).

    One image at a time gains nothing from more: idle OpenMP threads spin-wait and take CPU
    from the decode threads (measured: a 64-bit search went from 0.02 ms to most of a worker's
    time with 2 threads on 2 busy cores).
    """
    faiss.omp_set_num_threads(threads)
