"""Bit strings (perceptual hashes) searched by Hamming distance in a FAISS binary index."""
from __future__ import annotations

from pathlib import Path
from typing import Self, Sequence

import faiss
import numpy as np

from dupwatch.index.files import load_faiss, save_faiss
from dupwatch.index.protocol import Hit, last_of_each

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
        # FAISS id -> key (None: removed); a list, as ids are consecutive: 8 bytes an id
        self._key_by_id: list[str | None] = []

    def add(self, key: str, signal: bytes) -> None:
        self.add_many([(key, signal)])

    def add_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        # every signal checked before an old one goes
        codes = {key: self._as_rows(signal)[: self.indexed_codes]
                 for key, signal in last_of_each(items).items()}
        if not codes:
            return
        first = len(self._key_by_id)
        for key, rows in codes.items():  # each key's codes take the next ids
            if key in self._id_by_key:
                self.remove(key)
            self._id_by_key[key] = len(self._key_by_id)
            self._key_by_id += [key] * len(rows)
        ids = np.arange(first, len(self._key_by_id), dtype=np.int64)
        self._faiss.add_with_ids(np.concatenate(list(codes.values())), ids)

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
        ids = [i for i in range(first, min(first + self.indexed_codes, len(self._key_by_id)))
               if self._key_by_id[i] == key]
        for faiss_id in ids:
            self._key_by_id[faiss_id] = None
        self._faiss.remove_ids(np.array(ids, dtype=np.int64))
        return True

    def save(self, path: Path) -> None:
        save_faiss(path, _NAME, faiss.write_index_binary, self._faiss,
                   {"bits": self.bits, "indexed_codes": self.indexed_codes,
                    "next_id": len(self._key_by_id), "ids": self._id_by_key})

    @classmethod
    def load(cls, path: Path) -> Self:
        stored, keys = load_faiss(path, _NAME, faiss.read_index_binary)
        index = cls(keys["bits"], keys.get("indexed_codes", 1))
        index._faiss = stored
        index._id_by_key = {key: int(i) for key, i in keys["ids"].items()}
        held = set(faiss.vector_to_array(stored.id_map).tolist())
        index._key_by_id = [None] * keys["next_id"]
        # A key with fewer codes than indexed_codes owns fewer ids: the next key's claim wins.
        for key, first in sorted(index._id_by_key.items(), key=lambda item: item[1]):
            for faiss_id in range(first, min(first + index.indexed_codes, keys["next_id"])):
                if faiss_id in held:
                    index._key_by_id[faiss_id] = key
        return index

    def _as_rows(self, signal: bytes) -> np.ndarray:
        if not signal or (len(signal) * 8) % self.bits:
            raise ValueError(f"expected {self.bits}-bit codes, got {len(signal) * 8} bits")
        return np.frombuffer(signal, dtype=np.uint8).reshape(-1, self.bits // 8)

    def __len__(self) -> int:
        return len(self._id_by_key)
