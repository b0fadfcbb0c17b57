"""`dupwatch bench recovery`: how long a shard of N images takes to come back after a crash.

In this process, with the store and codec a worker's shard uses (no broker: fetching the
changelog runs at the broker's speed, which `bench workers` covers):

- replay: N changelog records (SHA-256, pHash and one 256-d embedding each, JSON as on the
  topic) decoded and applied one by one, as a shard without a snapshot recovers;
- snapshot: that shard saved as a crash-safe snapshot (index/snapshot.py), and loaded back
  (every file's SHA-256 checked first);
- tail: ``--tail`` more records applied to the loaded shard, as a worker applies the changelog
  after its snapshot. Their rate against the replay's shows whether a FAISS index read from
  a snapshot adds slower than one built in memory.

Recovery from snapshot + tail = load + tail. Results go to --out (JSON) and stdout (a table).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dupwatch.bench.report import machine, write_results
from dupwatch.index import BinaryIndex, Entry, ExactIndex, LocalStore, VectorIndex
from dupwatch.index.codec import decode_entry, encode_entry, entry_key
from dupwatch.index.vector import VectorIndexOptions
from dupwatch.settings import Settings
from dupwatch.wiring.cascade import vector_options

DIM = 256
BATCH = 10_000  # records generated at a time (memory stays flat whatever N)


def run_recovery_bench(settings: Settings, sizes: list[int], tail: int, out: str) -> int:
    options = vector_options(settings)
    runs = []
    for size in sizes:
        print(f"{size} images, vector index {options.kind}", file=sys.stderr)
        runs.append(_measure(size, tail, options))
    rows = [(f"{r['images']:,} images ({r['vector_index']}): replay / load / tail",
             f"{r['replay_s']} s ({r['replay_per_s']:,.0f}/s) / {r['load_s']} s / "
             f"{r['tail_s']} s ({r['tail_per_s']:,.0f}/s); snapshot {r['snapshot_mb']} MB "
             f"written in {r['save_s']} s") for r in runs]
    write_results(out, {"benchmark": "recovery", "machine": machine(), "runs": runs}, rows)
    return 0


def _measure(size: int, tail: int, options: VectorIndexOptions) -> dict:
    store = _new_store(options)
    replay_s = _apply(store, _records(0, size))
    with tempfile.TemporaryDirectory() as scratch:
        snapshot = Path(scratch) / "shard"
        started = time.perf_counter()
        store.save(snapshot, {"next_offset": size})
        save_s = time.perf_counter() - started
        megabytes = sum(f.stat().st_size for f in snapshot.rglob("*") if f.is_file()) / 1e6
        del store
        loaded = _new_store(options)
        started = time.perf_counter()
        loaded.load(snapshot)
        load_s = time.perf_counter() - started
    tail_s = _apply(loaded, _records(size, tail))
    return {"images": size, "vector_index": options.kind, "replay_s": round(replay_s, 2),
            "replay_per_s": round(size / replay_s, 1), "save_s": round(save_s, 2),
            "snapshot_mb": round(megabytes, 1), "load_s": round(load_s, 2),
            "tail": tail, "tail_s": round(tail_s, 2), "tail_per_s": round(tail / tail_s, 1),
            "recovery_from_snapshot_s": round(load_s + tail_s, 2),
            "structure": next(iter(loaded.structures().values()), "none")}


def _new_store(options: VectorIndexOptions) -> LocalStore:
    return LocalStore({
        "sha256": (ExactIndex, ExactIndex.load),
        "phash": (lambda: BinaryIndex(64), BinaryIndex.load),
        "embedding": (lambda: VectorIndex(DIM, options),
                      lambda path: VectorIndex.load(path, options))})


def _records(first: int, count: int):
    """Changelog records (key, value) of distinct synthetic images, in batches."""
    rng = np.random.default_rng(first)
    for start in range(first, first + count, BATCH):
        n = min(BATCH, first + count - start)
        vectors = rng.standard_normal((n, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        digests = rng.integers(0, 256, (n, 40), dtype=np.uint8)
        for i in range(n):
            entry = Entry("bench", f"img-{start + i}", {
                "sha256": digests[i, :32].tobytes(), "phash": digests[i, 32:].tobytes(),
                "embedding": vectors[i:i + 1]}, {"label": "unique"}, start + i)
            yield entry_key(entry.tenant, entry.image_id), encode_entry(entry)


def _apply(store: LocalStore, records) -> float:
    """Seconds to decode and apply the records, one at a time as a shard does (encoding them,
    the producer's work, is not counted)."""
    elapsed = 0.0
    for key, value in records:
        started = time.perf_counter()
        store.add([decode_entry(key, value)])
        elapsed += time.perf_counter() - started
    return elapsed
