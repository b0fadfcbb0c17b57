"""Float descriptors (L2-normalised embeddings) searched by inner product in FAISS.

A key may hold several vectors (views of one image: the whole picture, its content region);
a search with several query vectors returns each key once, at its best view-to-view match.
Distances are cosine distances, 1 - cosine similarity, so that lower is closer as in every index.
"""
from __future__ import annotations

from pathlib import Path
from typing import Self

import faiss
import numpy as np

from dupwatch.index.files import load_faiss, save_faiss
from dupwatch.index.protocol import Hit

_NAME = "vector"


class VectorIndex:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._faiss = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._ids_by_key: dict[str, list[int]] = {}
        self._key_by_id: dict[int, str] = {}
        self._order_by_key: dict[str, int] = {}
        self._next_id = 0
        self._next_order = 0

    def add(self, key: str, signal: np.ndarray) -> None:
        self.remove(key)
        vectors = self._as_rows(signal)
        ids = np.arange(self._next_id, self._next_id + len(vectors), dtype=np.int64)
        self._faiss.add_with_ids(vectors, ids)
        self._ids_by_key[key] = ids.tolist()
        self._key_by_id.update({int(i): key for i in ids})
        self._order_by_key[key] = self._next_order
        self._next_id += len(vectors)
        self._next_order += 1

    def search(self, signal: np.ndarray, k: int) -> list[Hit]:
        if not self._ids_by_key or k <= 0:
            return []
        queries = self._as_rows(signal)
        # Each key may own several vectors: over-fetch so k distinct keys survive the merge.
        fetch = min(self._faiss.ntotal, k * max(1, self._faiss.ntotal // max(1, len(self))) + k)
        similarities, ids = self._faiss.search(queries, fetch)
        best: dict[str, float] = {}
        for similarity, faiss_id in zip(similarities.ravel(), ids.ravel()):
            if faiss_id < 0:
                continue
            key = self._key_by_id[int(faiss_id)]
            best[key] = max(best.get(key, -1.0), float(similarity))
        hits = [Hit(round(max(0.0, 1.0 - s), 6), self._order_by_key[key], key) for key, s in best.items()]
        return sorted(hits)[:k]

    def remove(self, key: str) -> bool:
        ids = self._ids_by_key.pop(key, None)
        if ids is None:
            return False
        for faiss_id in ids:
            del self._key_by_id[faiss_id]
        del self._order_by_key[key]
        self._faiss.remove_ids(np.array(ids, dtype=np.int64))
        return True

    def save(self, path: Path) -> None:
        save_faiss(path, _NAME, faiss.write_index, self._faiss, {
            "dim": self.dim, "next_id": self._next_id, "next_order": self._next_order,
            "keys": {key: [self._order_by_key[key], ids] for key, ids in self._ids_by_key.items()}})

    @classmethod
    def load(cls, path: Path) -> Self:
        stored, keys = load_faiss(path, _NAME, faiss.read_index)
        index = cls(keys["dim"])
        index._faiss = stored
        for key, (order, ids) in keys["keys"].items():
            index._ids_by_key[key] = ids
            index._order_by_key[key] = order
            index._key_by_id.update({i: key for i in ids})
        index._next_id, index._next_order = keys["next_id"], keys["next_order"]
        return index

    def _as_rows(self, signal: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(np.atleast_2d(signal), dtype=np.float32)
        if rows.shape[1] != self.dim:
            raise ValueError(f"expected {self.dim}-d vectors, got {rows.shape[1]}-d")
        return rows

    def __len__(self) -> int:
        return len(self._ids_by_key)
