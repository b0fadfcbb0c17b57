"""Local features by image, kept on disk: the verification stage's index.

It does not search the whole index: a verification checks a query against the few candidates
the earlier stages found (a :class:`CandidateQuery`), with a comparison the stage supplies.

Held like this, so a shard of millions of images does not hold them in RAM: the signals (at most
a few KB each) lie back to back in an unlinked temporary file (``TMPDIR``; the Helm chart mounts
an emptyDir there) and are read with ``pread`` when a candidate is checked, so the operating
system's page cache keeps the hot ones; RAM holds only the offset of each key. A replaced or
removed signal leaves its bytes behind until the file is compacted (once dead bytes outnumber
live ones). A snapshot writes the live signals and their keys as two files; an index loaded
from one reads the snapshot's signals file in place (opened read-only, never written: a later
snapshot replaces it by a rename, and the open file stays readable until compaction lets it
go) and appends to a temporary file, so a load copies none of its gigabytes.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Self, Sequence

from dupwatch.index.protocol import CandidateQuery, Hit, last_of_each

_DATA, _KEYS = "features.bin", "features.json"
_WRITES_AT_ONCE = 1024  # buffers a vectored write takes (IOV_MAX on Linux)

# The stage's comparison of a query's signal with a stored one: (distance, evidence).
Compare = Callable[[bytes, bytes], "tuple[float, dict[str, Any]]"]


class FeatureIndex:
    """The :class:`Index` of signals checked only against named candidates (see the module
    docstring). ``search`` takes a :class:`CandidateQuery` and answers a hit for each of its keys
    held here, closest first, with ``compare``'s evidence; ``max_bytes`` bounds a signal."""

    def __init__(self, compare: Compare, max_bytes: int) -> None:
        self._compare = compare
        self._max_bytes = max_bytes
        self._file = tempfile.TemporaryFile(prefix="dupwatch-features-")
        # Offsets below _base_size are in _base (a loaded snapshot's file), the rest in _file.
        self._base: BinaryIO | None = None
        self._base_size = 0
        self._where: dict[str, tuple[int, int, int]] = {}   # key -> (offset, length, order)
        self._end = 0            # bytes in both files
        self._live = 0           # of which still referenced
        self._next_order = 0

    def add(self, key: str, signal: bytes) -> None:
        self.add_many([(key, signal)])

    def add_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        latest = last_of_each(items)
        for signal in latest.values():
            self._check(signal)
        signals, offset = list(latest.values()), self._end - self._base_size
        for first in range(0, len(signals), _WRITES_AT_ONCE):  # vectored: no joined copy
            chunk = signals[first:first + _WRITES_AT_ONCE]
            size = sum(map(len, chunk))
            if os.pwritev(self._file.fileno(), chunk, offset) != size:
                raise OSError(errno.ENOSPC, "the features file took only part of a write")
            offset += size
        for key, signal in latest.items():  # written: now they may point at it
            if key in self._where:
                self.remove(key)
            self._where[key] = (self._end, len(signal), self._next_order)
            self._end += len(signal)
            self._live += len(signal)
            self._next_order += 1
        if self._end - self._live > max(self._live, 1 << 20):
            self._compact()

    def _check(self, signal: bytes) -> None:
        if not isinstance(signal, bytes) or not 0 < len(signal) <= self._max_bytes:
            raise ValueError(f"a features signal is 1..{self._max_bytes} bytes, got "
                             f"{len(signal) if isinstance(signal, bytes) else type(signal).__name__}")

    def search(self, signal: CandidateQuery, k: int) -> list[Hit]:
        hits = []
        for key in dict.fromkeys(signal.keys):
            stored = self.get(key)
            if stored is not None:
                distance, evidence = self._compare(signal.signal, stored)
                hits.append(Hit(distance, self._where[key][2], key, evidence))
        return sorted(hits)[:k]

    def get(self, key: str) -> bytes | None:
        """The signal stored under ``key``, read from disk."""
        where = self._where.get(key)
        if where is None:
            return None
        offset, length, _ = where
        if offset < self._base_size:
            return os.pread(self._base.fileno(), length, offset)  # type: ignore[union-attr]
        return os.pread(self._file.fileno(), length, offset - self._base_size)

    def remove(self, key: str) -> bool:
        where = self._where.pop(key, None)
        if where is None:
            return False
        self._live -= where[1]
        return True

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        keys = []
        with open(path / _DATA, "wb") as data:
            for key, (_, _, order) in sorted(self._where.items(), key=lambda item: item[1][2]):
                signal = self.get(key)
                keys.append([key, data.tell(), len(signal), order])  # type: ignore[arg-type]
                data.write(signal)  # type: ignore[arg-type]
        (path / _KEYS).write_text(json.dumps({"next_order": self._next_order, "keys": keys}))

    @classmethod
    def load(cls, path: Path, compare: Compare, max_bytes: int) -> Self:
        doc = json.loads((path / _KEYS).read_text())
        index = cls(compare, max_bytes)
        index._base = open(path / _DATA, "rb")
        index._base_size = index._end = os.fstat(index._base.fileno()).st_size
        index._where = {key: (offset, length, order) for key, offset, length, order in doc["keys"]}
        index._live = sum(length for _, length, _ in index._where.values())
        index._next_order = doc["next_order"]
        return index

    def _compact(self) -> None:
        """Rewrite the file with the live signals only."""
        fresh = tempfile.TemporaryFile(prefix="dupwatch-features-")
        where, end = {}, 0
        for key, (_, length, order) in self._where.items():
            os.pwrite(fresh.fileno(), self.get(key), end)  # type: ignore[arg-type]
            where[key] = (end, length, order)
            end += length
        self._file.close()
        if self._base is not None:
            self._base.close()
        self._base, self._base_size = None, 0
        self._file, self._where, self._end, self._live = fresh, where, end, end

    @property
    def disk_bytes(self) -> int:
        return self._end

    def evict_cache(self) -> None:
        """Ask the OS to drop the file's pages from its cache (a benchmark's cold reads)."""
        for file in filter(None, [self._file, self._base]):
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

    def __len__(self) -> int:
        return len(self._where)
