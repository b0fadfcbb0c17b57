"""Exact lookup of digests (SHA-256): a dictionary, no false positives."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Self, Sequence

from dupwatch.index.protocol import Hit

_FILE = "exact.json"


class ExactIndex:
    """The :class:`Index` of the SHA-256 stage: a dictionary from digest to keys. A search returns
    only keys with the very same digest, at distance 0, earliest added first."""
    def __init__(self) -> None:
        self._keys_by_digest: dict[bytes, dict[str, int]] = {}
        self._digest_by_key: dict[str, bytes] = {}
        self._next_order = 0

    def add(self, key: str, signal: bytes) -> None:
        self.remove(key)
        self._keys_by_digest.setdefault(signal, {})[key] = self._next_order
        self._digest_by_key[key] = signal
        self._next_order += 1

    def add_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for key, signal in items:  # dictionary updates: nothing to gain from batching
            self.add(key, signal)

    def search(self, signal: bytes, k: int) -> list[Hit]:
        keys = self._keys_by_digest.get(signal, {})
        return sorted(Hit(0.0, order, key) for key, order in keys.items())[:k]

    def remove(self, key: str) -> bool:
        digest = self._digest_by_key.pop(key, None)
        if digest is None:
            return False
        keys = self._keys_by_digest[digest]
        del keys[key]
        if not keys:
            del self._keys_by_digest[digest]
        return True

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        entries = sorted((order, key, digest.hex()) for digest, keys in self._keys_by_digest.items()
                         for key, order in keys.items())
        (path / _FILE).write_text(json.dumps({"next_order": self._next_order, "entries": entries}))

    @classmethod
    def load(cls, path: Path) -> Self:
        doc = json.loads((path / _FILE).read_text())
        index = cls()
        for order, key, digest_hex in doc["entries"]:
            digest = bytes.fromhex(digest_hex)
            index._keys_by_digest.setdefault(digest, {})[key] = order
            index._digest_by_key[key] = digest
        index._next_order = doc["next_order"]
        return index

    def __len__(self) -> int:
        return len(self._digest_by_key)
