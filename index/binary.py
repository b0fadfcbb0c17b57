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
    """Exact (flat) Hamming search. FAISS ids are insertion numbers, so they double as the order."""

    def __init__(self, bits: int) -> None:
        if bits % 8:
            raise ValueError(f"binary signals must be whole bytes, got {bits} bits")
        self.bits = bits
        self._faiss = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(bits))
        self._id_by_key: dict[str, int] = {}
        self._key_by_id: dict[int, str] = {}
        self._next_id = 0

    def add(self, key: str, signal: bytes) -> None:
        self.remove(key)
        self._faiss.add_with_ids(self._as_row(signal), np.array([self._next_id], dtype=np.int64))
        self._id_by_key[key] = self._next_id
        self._key_by_id[self._next_id] = key
        self._next_id += 1

    def search(self, signal: bytes, k: int) -> list[Hit]:
        if not self._id_by_key or k <= 0:
            return []
        distances, ids = self._faiss.search(self._as_row(signal), min(k, len(self)))
        hits = [Hit(float(d), int(i), self._key_by_id[int(i)])
                for d, i in zip(distances[0], ids[0]) if i >= 0]
        return sorted(hits)

    def remove(self, key: str) -> bool:
        faiss_id = self._id_by_key.pop(key, None)
        if faiss_id is None:
            return False
        del self._key_by_id[faiss_id]
        self._faiss.remove_ids(np.array([faiss_id], dtype=np.int64))
        return True

    def save(self, path: Path) -> None:
        save_faiss(path, _NAME, faiss.write_index_binary, self._faiss,
                   {"bits": self.bits, "next_id": self._next_id, "ids": self._id_by_key})

    @classmethod
    def load(cls, path: Path) -> Self:
        stored, keys = load_faiss(path, _NAME, faiss.read_index_binary)
        index = cls(keys["bits"])
        index._faiss = stored
        index._id_by_key = {key: int(i) for key, i in keys["ids"].items()}
        index._key_by_id = {i: key for key, i in index._id_by_key.items()}
        index._next_id = keys["next_id"]
        return index

    def _as_row(self, signal: bytes) -> np.ndarray:
        if len(signal) * 8 != self.bits:
            raise ValueError(f"expected a {self.bits}-bit signal, got {len(signal) * 8} bits")
        return np.frombuffer(signal, dtype=np.uint8).reshape(1, -1)

    def __len__(self) -> int:
        return len(self._id_by_key)
