"""Local features by image, kept on disk: the verification stage's index.

It does not search the whole index: a verification checks a query against the few candidates
the earlier stages found (a :class:`CandidateQuery`), with a comparison the stage supplies.

Held like this, so a shard of millions of images does not hold them in RAM: the signals (at most
a few KB each) lie back to back in an unlinked temporary file (``TMPDIR``; the Helm chart mounts
an emptyDir there) and are read with ``pread`` when a candidate is checked, so the operating
system's page cache keeps the hot ones; RAM holds only the offset of each key. A replaced or
removed signal leaves its bytes behind until the file is compacted (at a snapshot, or once dead
bytes outnumber live ones). A snapshot writes the live signals and their keys as two files.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Self, Sequence

from dupwatch.index.protocol import CandidateQuery, Hit, last_of_each

_DATA, _KEYS = "features.bin", "features.json"

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
        self._where: dict[str, tuple[int, int, int]] = {}   # key -> (offset, length, order)
        self._end = 0            # bytes written to the file
        self._live = 0           # of which still referenced
        self._next_order = 0

    def add(self, key: str, signal: bytes) -> None:
        self.add_many([(key, signal)])

    def add_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        latest = last_of_each(items)
        for signal in latest.values():
            self._check(signal)
        at = self._end
        for key, signal in latest.items():
            if key in self._where:
                self.remove(key)
            self._where[key] = (at, len(signal), self._next_order)
            at += len(signal)
            self._next_order += 1
        os.pwrite(self._file.fileno(), b"".join(latest.values()), self._end)  # one write
        self._live += at - self._end
        self._end = at
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
        return None if where is None else os.pread(self._file.fileno(), where[1], where[0])

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
        with open(path / _DATA, "rb") as data:
            _copy_in_kernel(data.fileno(), index._file.fileno(), os.fstat(data.fileno()).st_size)
        index._file.seek(0, os.SEEK_END)
        index._where = {key: (offset, length, order) for key, offset, length, order in doc["keys"]}
        index._end = index._file.tell()
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
        self._file, self._where, self._end, self._live = fresh, where, end, end

    @property
    def disk_bytes(self) -> int:
        return self._end

    def evict_cache(self) -> None:
        """Ask the OS to drop the file's pages from its cache (a benchmark's cold reads)."""
        self._file.flush()
        os.posix_fadvise(self._file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

    def __len__(self) -> int:
        return len(self._where)


def _copy_in_kernel(source: int, target: int, size: int) -> None:
    """Copy without passing the bytes through this process (GBs at a million images; a
    filesystem that shares blocks copies none)."""
    copied = 0
    while copied < size:
        done = os.copy_file_range(source, target, size - copied, copied, copied)
        if done == 0:
            raise OSError(f"the features file ended at {copied} of {size} bytes")
        copied += done
