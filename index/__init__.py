"""Indexes of image signals: one protocol (add, search, remove, save, load, len), several kinds.

``ExactIndex`` maps digests to images, ``BinaryIndex`` searches bit strings by Hamming distance
in FAISS, and ``TenantIndexes`` keeps one index per tenant so tenants never match each other.
"""
from dupwatch.index.binary import BinaryIndex
from dupwatch.index.exact import ExactIndex
from dupwatch.index.protocol import Hit, Index
from dupwatch.index.tenants import TenantIndexes

__all__ = ["BinaryIndex", "ExactIndex", "Hit", "Index", "TenantIndexes"]
