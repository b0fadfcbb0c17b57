"""Bit strings (perceptual hashes) searched by Hamming distance in a FAISS binary index."""
from __future__ import annotations

from pathlib import Path
from typing import Self

import faiss
import numpy as np

from dupwatch.index.files import load_faiss, save_faiss
from dupwatch.index.protocol import Hit

_NAME = "binary"


class BinaryIndex:
    """Exact (flat) Hamming search. FAISS ids are insertion numbers, so they double as the order.

    A signal may hold several codes of ``bits`` each (views of one image, e.g. the image turned
    and mirrored): the first ``indexed_codes`` are stored, and a search compares every code of
    the query, returning each key once at its closest.
    """

    def __init__(self, bits: int, indexed_codes: int = 1) -> None:
        if bits % 8:
            raise ValueError(f"binary signals must be whole bytes, got {bits} bits")
        self.bits = bits
        self.indexed_codes = indexed_codes
        self._faiss = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(bits))
        self._id_by_key: dict[str, int] = {}
        self._key_by_id: dict[int, str] = {}
        self._next_id = 0

    def add(self, key: str, signal: bytes) -> None:
        codes = self._as_rows(signal)[: self.indexed_codes]  # checked before the old one goes
        self.remove(key)
        ids = np.arange(self._next_id, self._next_id + len(codes), dtype=np.int64)
        self._faiss.add_with_ids(codes, ids)
        self._id_by_key[key] = self._next_id
        self._key_by_id.update({int(i): key for i in ids})
        self._next_id += len(codes)

    def search(self, signal: bytes, k: int) -> list[Hit]:
        if not self._id_by_key or k <= 0:
            return []
        fetch = min(k * self.indexed_codes, self._faiss.ntotal)
        distances, ids = self._faiss.search(self._as_rows(signal), fetch)
        best: dict[str, Hit] = {}
        for distance, faiss_id in zip(distances.ravel(), ids.ravel()):
            if faiss_id < 0:
                continue
            key = self._key_by_id[int(faiss_id)]
            hit = Hit(float(distance), self._id_by_key[key], key)
            if key not in best or hit < best[key]:
                best[key] = hit
        return sorted(best.values())[:k]

    def remove(self, key: str) -> bool:
        first = self._id_by_key.pop(key, None)
        if first is None:
            return False
        ids = [i for i in range(first, first + self.indexed_codes) if self._key_by_id.get(i) == key]
        for faiss_id in ids:
            del self._key_by_id[faiss_id]
        self._faiss.remove_ids(np.array(ids, dtype=np.int64))
        return True

    def save(self, path: Path) -> None:
        save_faiss(path, _NAME, faiss.write_index_binary, self._faiss,
                   {"bits": self.bits, "indexed_codes": self.indexed_codes,
                    "next_id": self._next_id, "ids": self._id_by_key})

    @classmethod
    def load(cls, path: Path) -> Self:
        stored, keys = load_faiss(path, _NAME, faiss.read_index_binary)
        index = cls(keys["bits"], keys.get("indexed_codes", 1))
        index._faiss = stored
        index._id_by_key = {key: int(i) for key, i in keys["ids"].items()}
        stored_ids = set(faiss.vector_to_array(stored.id_map).tolist())
        index._key_by_id = {first + n: key for key, first in index._id_by_key.items()
                            for n in range(index.indexed_codes) if first + n in stored_ids}
        index._next_id = keys["next_id"]
        return index

    def _as_rows(self, signal: bytes) -> np.ndarray:
        if not signal or (len(signal) * 8) % self.bits:
            raise ValueError(f"expected {self.bits}-bit codes, got {len(signal) * 8} bits")
        return np.frombuffer(signal, dtype=np.uint8).reshape(-1, self.bits // 8)

    def __len__(self) -> int:
        return len(self._id_by_key)
