"""The protocol every index implements."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Self, Sequence, TypeVar

Signal = TypeVar("Signal", contravariant=True)
Key = TypeVar("Key")
Item = TypeVar("Item")


@dataclass(frozen=True, order=True)
class Hit:
    """One search result. Sorting orders by distance, then by insertion (earlier images first).
    ``evidence``: what an index that verifies candidates found (index/features.py), else None."""
    distance: float
    order: int
    key: str
    evidence: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class CandidateQuery:
    """A search restricted to the images ``keys``: what an index that checks candidates rather
    than searching all it holds (the verification stage's) takes as its query."""
    signal: Any
    keys: tuple[str, ...]


class Index(Protocol[Signal]):
    """One stage's signals for one tenant, keyed by image id; what every index implements and
    tests/test_index_contract.py checks. Distances are in the index's own unit (bits, cosine
    distance), lower is closer, 0 the same; a compressed index may miss a true neighbour. Each
    index holds one tenant (TenantIndexes keeps them apart). Not thread-safe: callers serialise.
    A signal of the wrong size or shape raises ValueError."""
    def add(self, key: str, signal: Signal) -> None:
        """Index ``signal`` under ``key``; adding an existing key replaces its signal."""

    def add_many(self, items: Sequence[tuple[str, Signal]]) -> None:
        """The same as adding each in turn (a key given twice keeps its last), in fewer calls
        (a changelog replayed in batches); every signal is checked first, so a malformed one
        raises ValueError with nothing added."""

    def search(self, signal: Signal, k: int) -> list[Hit]:
        """The ``k`` closest entries, closest first; ties go to the earliest added."""

    def remove(self, key: str) -> bool:
        """Forget ``key``; False if it was not there."""

    def save(self, path: Path) -> None:
        """Write the index into the directory ``path`` (created if missing)."""

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read an index written by :meth:`save`."""

    def __len__(self) -> int: ...


def last_of_each(items: Iterable[tuple[Key, Item]]) -> dict[Key, Item]:
    """Each key's last item, at the place of its last occurrence (as adding in turn leaves
    them)."""
    latest: dict[Key, Item] = {}
    for key, item in items:
        latest.pop(key, None)
        latest[key] = item
    return latest
