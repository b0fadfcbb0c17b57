"""Where a cascade's indexes live: one protocol, kept in this process or split into shards.

An image is stored as one :class:`Entry`: its signal for each stage that described it, the
record of how it was judged when first indexed (so a re-delivered event gets the same verdict),
and an ``order`` that breaks ties between equally close matches in favour of the earliest image.
:class:`LocalStore` holds entries in memory, one index per stage and tenant; a shard of a
sharded deployment is a ``LocalStore`` too (see index/sharded.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from dupwatch.index.protocol import Hit, Index, last_of_each
from dupwatch.index.snapshot import (
    BackgroundSnapshot, SnapshotError, read_snapshot, write_snapshot,
)
from dupwatch.index.tenants import TenantIndexes
from dupwatch.index.vector import VectorIndex

# Per tenant a JSON line of its image ids and orders, then each record's JSON on its own line.
_RECORDS_FILE = "records.jsonl"
_RECORDS_FILE_BEFORE = "records.json"  # one JSON document: snapshots of earlier versions


@dataclass(frozen=True)
class Lookup:
    """One image to look up: its signals for the stages to search."""
    tenant: str
    image_id: str
    signals: dict[str, Any]


@dataclass
class Found:
    """What the indexes hold for one lookup: hits per stage (never the image itself), and the
    record stored with the image if it was indexed before (a re-delivery)."""
    hits: dict[str, list[Hit]] = field(default_factory=dict)
    earlier: dict | None = None

    def merge(self, other: "Found", k: int) -> None:
        """Fold in another shard's answer: the k closest per stage, earliest first on ties."""
        for stage, hits in other.hits.items():
            self.hits[stage] = sorted(self.hits.get(stage, []) + hits)[:k]
        self.earlier = self.earlier or other.earlier


@dataclass(frozen=True)
class Entry:
    """One indexed image: its signal per stage that described it, the record of its verdict
    (CascadeResult.to_record plus its sha256; empty for a bank entry), as a dict or as the JSON
    bytes the changelog carries (kept so and decoded only when asked: a shard of millions
    replays and holds them) and ``order``, the time it was
    indexed in ns since the epoch, which breaks ties between equal distances (earliest wins)."""
    tenant: str
    image_id: str
    signals: dict[str, Any]
    record: dict | bytes
    order: int


class Store(Protocol):
    """Where the cascade's indexes live: :class:`LocalStore` in memory, or ShardClient over Kafka.
    ``lookup`` answers one :class:`Found` per query, in order: each stage's ``k`` closest hits in
    the query's tenant (never the query's own image id) and its earlier record if it was indexed.
    ``add`` replaces an image's entry in every stage; once it returns, every lookup sees it.
    Used from one thread (the cascade's)."""
    round_trip: bool  # whether a lookup goes over the network (so stages should share one)

    def lookup(self, queries: list[Lookup], k: int) -> list[Found]: ...

    def add(self, entries: list[Entry]) -> None: ...

    def remove(self, tenant: str, image_ids: list[str]) -> int:
        """Forget these images in every stage's index (how many, where that is known)."""


class LocalStore:
    """Every stage's indexes for every tenant, in this process."""

    round_trip = False

    def __init__(self, new_indexes: dict[str, tuple[Callable[[], Index], Callable[[Path], Index]]]
                 ) -> None:
        self._new_indexes = new_indexes
        self.indexes: dict[str, TenantIndexes] = {
            stage: TenantIndexes(new, load) for stage, (new, load) in new_indexes.items()}
        # (record's JSON, order) per tenant and image: for re-deliveries and for ties across shards
        self._records: dict[str, dict[str, tuple[bytes, int]]] = {}

    def lookup(self, queries: list[Lookup], k: int) -> list[Found]:
        return [self._lookup_one(query, k) for query in queries]

    def _lookup_one(self, query: Lookup, k: int) -> Found:
        records = self._records.get(query.tenant, {})
        earlier = records.get(query.image_id)
        # Bank entries have no record ({}): they were loaded, never judged.
        found = Found(earlier=(json.loads(earlier[0]) or None) if earlier else None)
        for stage, signal in query.signals.items():
            index = self.indexes[stage].existing(query.tenant)
            hits = index.search(signal, k + 1) if index is not None else []
            # Orders from the entries, not the index: they compare across shards.
            found.hits[stage] = sorted(Hit(hit.distance, records[hit.key][1], hit.key, hit.evidence)
                                       for hit in hits if hit.key != query.image_id)[:k]
        return found

    def add(self, entries: list[Entry]) -> None:
        """Index them as adding each in turn would (one replaced or repeated is its last), with
        one call per stage and tenant (a changelog replays in batches)."""
        latest = last_of_each(((entry.tenant, entry.image_id), entry) for entry in entries)
        batches: dict[tuple[str, str], list[tuple[str, Any]]] = {}
        for entry in latest.values():
            records = self._records.setdefault(entry.tenant, {})
            if entry.image_id in records:
                self.remove(entry.tenant, [entry.image_id])  # a re-index replaces every stage
            for stage, signal in entry.signals.items():
                batches.setdefault((stage, entry.tenant), []).append((entry.image_id, signal))
            records[entry.image_id] = (_json(entry.record), entry.order)
        for (stage, tenant), items in batches.items():
            self.indexes[stage].for_tenant(tenant).add_many(items)

    def remove(self, tenant: str, image_ids: list[str]) -> int:
        records = self._records.get(tenant, {})
        removed = 0
        for image_id in image_ids:
            if records.pop(image_id, None) is None:
                continue
            removed += 1
            for indexes in self.indexes.values():
                index = indexes.existing(tenant)
                if index is not None:
                    index.remove(image_id)
        return removed

    def __len__(self) -> int:
        """Images held, of every tenant."""
        return sum(map(len, self._records.values()))

    def size(self) -> dict[str, dict[str, int]]:
        return {stage: {tenant: len(index) for tenant, index in indexes.tenants()}
                for stage, indexes in self.indexes.items()}

    def structures(self) -> dict[str, str]:
        """The structure each tenant's vector index serves (flat until a compressed kind has
        trained: index/vector.py)."""
        return {tenant: index.structure for indexes in self.indexes.values()
                for tenant, index in indexes.tenants() if isinstance(index, VectorIndex)}

    def save(self, path: Path, meta: dict | None = None) -> None:
        """A crash-safe, validated snapshot in the directory ``path`` (see index/snapshot.py),
        with ``meta`` (e.g. how far into a changelog it is) in its manifest."""
        write_snapshot(path, self._write_files, meta)

    def save_in_background(self, path: Path, meta: dict | None = None) -> BackgroundSnapshot:
        """:meth:`save` from a forked child, of the store as it is now, while this process
        goes on changing and serving it (index/snapshot.py)."""
        return BackgroundSnapshot(path, self._write_files, meta)

    def _write_files(self, folder: Path) -> None:
        for stage, indexes in self.indexes.items():
            indexes.save(folder / stage)
        with open(folder / _RECORDS_FILE, "wb") as out:
            for tenant, records in self._records.items():
                if records:
                    out.write(_json({"tenant": tenant, "ids": list(records),
                                     "orders": [order for _, order in records.values()]}) + b"\n")
                    out.write(b"\n".join(record for record, _ in records.values()) + b"\n")

    def load(self, path: Path) -> dict | None:
        """Replace what is held with the snapshot under ``path`` and return its metadata; None
        (and nothing changed) if there is none. Raises SnapshotError, and changes nothing, for a
        snapshot that is damaged or cannot be loaded: never a partial index."""
        meta = read_snapshot(path)
        if meta is None:
            return None
        loaded = self.empty_copy()
        try:
            for stage, indexes in loaded.indexes.items():
                indexes.load(path / stage)
            records = _read_records(path)
        except Exception as exc:  # checksums matched, yet the files do not load: refuse them
            raise SnapshotError(path, f"cannot be loaded ({exc!r})") from exc
        self.indexes = loaded.indexes
        self._records = records
        return meta

    def empty_copy(self) -> "LocalStore":
        """A new, empty store with the same stages (a shard, or a batch's own overlay)."""
        return LocalStore(self._new_indexes)


def _json(record: dict | bytes) -> bytes:
    """A record's compact JSON (never a raw newline: the records file is a line per record)."""
    return record if isinstance(record, bytes) else json.dumps(record, separators=(",", ":")).encode()


def _read_records(path: Path) -> dict[str, dict[str, tuple[bytes, int]]]:
    if not (path / _RECORDS_FILE).is_file():  # a snapshot of an earlier version
        before = json.loads((path / _RECORDS_FILE_BEFORE).read_text())
        return {tenant: {key: (_json(record), order) for key, (record, order) in keys.items()}
                for tenant, keys in before.items()}
    lines, records, at = (path / _RECORDS_FILE).read_bytes().split(b"\n"), {}, 0
    while at < len(lines) and lines[at]:
        head = json.loads(lines[at])
        count = len(head["ids"])
        records[head["tenant"]] = dict(zip(head["ids"], zip(lines[at + 1:at + 1 + count],
                                                            head["orders"], strict=True)))
        at += 1 + count
    return records
