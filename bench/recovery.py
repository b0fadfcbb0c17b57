"""`dupwatch bench recovery`: how long a shard of N images takes to come back after a crash,
and what its snapshots cost the lookups it serves meanwhile.

First in this process, with the store, codec and batched apply a worker's shard uses (no
broker; fetching is in the last part, below). The records
are entries as the default cascade writes them: every stage's signal (SHA-256, pHash, its
turned and mirrored codes, a 256-d embedding, up to 8 KB of local features), each image's own
random digests and embedding, local features and the verdict's record of a few bundled photos
taken in turn (a features signal is stored, not searched, so its content does not matter here).

- replay: N changelog records decoded and applied in the shard's batches (a shard without a
  snapshot), and the first REFERENCE_RECORDS of them one at a time from JSON, as before
  batching, for comparison;
- snapshot: that shard saved as a crash-safe snapshot (index/snapshot.py) in the background
  (a forked child) while this process looks up stored images without pause: the fork's pause,
  the child's time, the lookups' latency meanwhile against before; then loaded back (every
  file's SHA-256 checked first);
- tail: ``--tail`` more records applied to the loaded shard, as a worker applies the changelog
  after its snapshot.

Recovery from snapshot + tail = load + tail. RSS is this process's, after the replay and at its
peak.

And through the bundled broker (``--broker-records N``, 0 to skip): N records produced to a
one-shard index, then a real ShardServer given that shard, timed from joining the shard group
until it has caught up: fetching included, the whole path of a shard rebuilt from the
changelog alone. Results go to --out (JSON) and stdout (a table).
"""
from __future__ import annotations

import os
import random
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from confluent_kafka import Producer

from dupwatch.bench.report import machine, percentiles_ms, write_results
from dupwatch.bench.traffic import rss_mb
from dupwatch.detectors import Cascade
from dupwatch.imaging.samples import load_samples
from dupwatch.index import Entry, LocalStore, Lookup
from dupwatch.index.codec import decode_entry, encode_entry, encode_entry_json, entry_key
from dupwatch.index.sharded import apply
from dupwatch.messaging.broker import EmbeddedBroker
from dupwatch.messaging.kafka import ShardTopics, confluent_config, max_message_bytes
from dupwatch.reporting.progress import Progress, wanted
from dupwatch.settings import Settings
from dupwatch.wiring.cascade import build_cascade
from dupwatch.wiring.kafka import ensure_topics, kafka_options
from dupwatch.wiring.worker import shard_server

TENANT = "bench"
TEMPLATES = 8             # bundled photos whose features and records the entries take in turn
FETCH = 1024              # records per batch, as a shard drains its changelog
BATCH = 10_000            # records generated at a time (memory stays flat whatever N)
REFERENCE_RECORDS = 20_000
LOOKUPS_BEFORE = 50       # lookups timed before the snapshot, for comparison


def run_recovery_bench(settings: Settings, sizes: list[int], tail: int, broker_records: int,
                       out: str) -> int:
    cascade = build_cascade(settings.replace(state_dir=""))
    templates = _templates(cascade)
    through_broker = (_through_broker(settings, templates, cascade.new_local_store, broker_records)
                      if broker_records else None)
    runs = []
    for size in sizes:
        print(f"{size:,} images, vector index {settings.vector_index}", file=sys.stderr)
        runs.append(_measure(cascade.new_local_store, templates, size, tail))
    rows = _rows(runs)
    if through_broker:
        rows.append((f"{broker_records:,} records through the bundled broker",
                     f"rebuilt in {through_broker['rebuild_s']} s "
                     f"({through_broker['rebuild_per_s']:,.0f} records/s) after joining the "
                     f"shard group in {through_broker['join_s']} s"))
    write_results(out, {"benchmark": "recovery", "machine": machine(),
                        "vector_index": settings.vector_index, "runs": runs,
                        "through_broker": through_broker}, rows)
    return 0


def _through_broker(settings: Settings, templates: list[Entry],
                    new_store: Callable[[], LocalStore], count: int) -> dict:
    """A one-shard index of ``count`` records on the bundled broker, rebuilt by a ShardServer
    from the changelog alone (see the module docstring)."""
    run = uuid.uuid4().hex[:8]
    with EmbeddedBroker() as broker:
        settings = settings.replace(
            bootstrap_servers=broker.bootstrap_servers, shards=1, state_dir="",
            index_topic_prefix=f"recovery-{run}.index", group_id=f"dupwatch-recovery-{run}",
            session_timeout_s=6.0, rebalance_timeout_s=6.0)
        ensure_topics(settings)
        _produce(settings, _records(templates, 0, count), count)
        started = time.perf_counter()
        server = shard_server(settings, new_store).start()
        while not server.assigned:
            time.sleep(0.01)
        joined = time.perf_counter()
        while not (server.ready and server.hosted() == [0]):
            server.check_alive()
            time.sleep(0.01)
        ready = time.perf_counter()
        server.stop()
    return {"records": count, "join_s": round(joined - started, 2),
            "rebuild_s": round(ready - joined, 2), "rebuild_per_s": round(count / (ready - joined), 1)}


def _produce(settings: Settings, records: Iterator[tuple[bytes, bytes]], count: int) -> None:
    changelog = ShardTopics.of(settings.index_topic_prefix).changelog
    producer = Producer(confluent_config(kafka_options(settings), **{
        "linger.ms": 20, "message.max.bytes": max_message_bytes(settings.max_event_bytes)}))
    with Progress(count, "producing the changelog", enabled=wanted()) as bar:
        for key, value in records:
            while True:
                try:
                    producer.produce(changelog, key=key, value=value, partition=0)
                    break
                except BufferError:  # the producer's queue is full: let it drain
                    producer.poll(0.1)
            producer.poll(0)
            bar.advance()
    if producer.flush(120) > 0:
        raise RuntimeError("the broker did not take every changelog record")


def _rows(runs: list[dict]) -> list[tuple[str, str]]:
    rows = []
    for r in runs:
        rows += [
            (f"{r['images']:,}: replay (batched)",
             f"{r['replay_s']} s ({r['replay_per_s']:,.0f} records/s; one at a time from "
             f"JSON: {r['reference_per_s']:,.0f}/s); RSS {r['rss_after_replay_mb']:,.0f} MB"),
            (f"{r['images']:,}: snapshot in the background",
             f"{r['snapshot_mb']:,.0f} MB in {r['background_snapshot_s']} s, the child's own "
             f"memory {r['child_private_mb']:,.0f} MB; fork pause "
             f"{r['fork_pause_ms']} ms; lookups meanwhile p50/p99/max "
             f"{_ms(r['lookups_during_snapshot_ms'])} (before: {_ms(r['lookups_before_ms'])})"),
            (f"{r['images']:,}: recovery from snapshot + {r['tail']:,} tail",
             f"{r['recovery_from_snapshot_s']} s (load {r['load_s']} s, tail {r['tail_s']} s "
             f"at {r['tail_per_s']:,.0f}/s); peak RSS {r['peak_rss_mb']:,.0f} MB")]
    return rows


def _ms(latency: dict) -> str:
    return f"{latency['p50']} / {latency['p99']} / {latency['max']} ms"


def _templates(cascade: Cascade) -> list[Entry]:
    """Entries of a few bundled photos, judged by the cascade: every stage's signal and the
    verdict's record, as a worker writes them to the changelog."""
    photos = [s for s in load_samples() if s.role != "copy"][:TEMPLATES]
    entries = []
    for sample in photos:
        image = cascade.image(sample.file.path.read_bytes())
        result = cascade.check(TENANT, sample.file.image_id, image)
        record = {**result.to_record(), "sha256": image.digest.hex()}
        entries.append(Entry(TENANT, sample.file.image_id, dict(image.signals), record, 0))
    return entries


def _measure(new_store: Callable[[], LocalStore], templates: list[Entry], size: int,
             tail: int) -> dict:
    reference_per_s = _one_at_a_time_from_json(new_store(), templates, min(size, REFERENCE_RECORDS))
    store = new_store()
    replay_s = _replay(store, _records(templates, 0, size), size, "replay")
    rss_after_replay = rss_mb(os.getpid())
    with tempfile.TemporaryDirectory() as scratch:
        snapshot = Path(scratch) / "shard"
        background = _snapshot_while_looking_up(store, templates, size, snapshot)
        megabytes = sum(f.stat().st_size for f in snapshot.rglob("*") if f.is_file()) / 1e6
        del store
        loaded = new_store()
        started = time.perf_counter()
        loaded.load(snapshot)
        load_s = time.perf_counter() - started
    tail_s = _replay(loaded, _records(templates, size, tail), tail, "tail")
    return {"images": size, "replay_s": round(replay_s, 2),
            "replay_per_s": round(size / replay_s, 1), "reference_per_s": round(reference_per_s, 1),
            "rss_after_replay_mb": rss_after_replay, **background,
            "snapshot_mb": round(megabytes, 1), "load_s": round(load_s, 2), "tail": tail,
            "tail_s": round(tail_s, 2), "tail_per_s": round(tail / max(tail_s, 1e-9), 1),
            "recovery_from_snapshot_s": round(load_s + tail_s, 2), "peak_rss_mb": _peak_rss_mb(),
            "structure": next(iter(loaded.structures().values()), "none")}


def _one_at_a_time_from_json(store: LocalStore, templates: list[Entry], count: int) -> float:
    """Records/s the way shards applied them before batching: JSON, one record at a time."""
    records = [(key, encode_entry_json(decode_entry(key, value)))
               for key, value in _records(templates, 0, count)]
    started = time.perf_counter()
    for key, value in records:
        apply(store, [(key, value)])
    return count / (time.perf_counter() - started)


def _records(templates: list[Entry], first: int, count: int) -> Iterator[tuple[bytes, bytes]]:
    """Changelog records (key, value) of distinct images, generated BATCH at a time."""
    rng = np.random.default_rng(first)
    for start in range(first, first + count, BATCH):
        n = min(BATCH, first + count - start)
        vectors = rng.standard_normal((n, 256)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        digests = rng.integers(0, 256, (n, 32 + 32 + 256), dtype=np.uint8)
        for i in range(n):
            yield _record(templates[(start + i) % len(templates)], f"img-{start + i}",
                          vectors[i:i + 1], digests[i].tobytes(), start + i)


def _record(template: Entry, image_id: str, vector: np.ndarray, digests: bytes,
            order: int) -> tuple[bytes, bytes]:
    signals: dict[str, Any] = {**template.signals, "sha256": digests[:32], "phash": digests[32:64],
                               "phash_reoriented": digests[64:], "embedding": vector}
    signals = {stage: signals[stage] for stage in template.signals}
    record = {**template.record, "sha256": digests[:32].hex()}
    return entry_key(TENANT, image_id), encode_entry(Entry(TENANT, image_id, signals, record, order))


def _replay(store: LocalStore, records: Iterator[tuple[bytes, bytes]], count: int,
            label: str) -> float:
    """Seconds to decode and apply the records in the shard's batches (encoding them, the
    producer's work, is not counted)."""
    elapsed, batch = 0.0, []
    with Progress(count, label, enabled=wanted()) as bar:
        for record in records:
            batch.append(record)
            if len(batch) == FETCH:
                elapsed += _timed(lambda: apply(store, batch))
                bar.advance(len(batch))
                batch = []
        elapsed += _timed(lambda: apply(store, batch))
        bar.advance(len(batch))
    return elapsed


def _timed(work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _snapshot_while_looking_up(store: LocalStore, templates: list[Entry], size: int,
                               target: Path) -> dict:
    """A background snapshot, with stored images looked up one after another before and while
    the child writes: the fork's pause and what the lookups see."""
    queries = _lookups(templates, size)
    before = [_timed(lambda: store.lookup([query], 8)) for query in queries[:LOOKUPS_BEFORE]]
    started = time.perf_counter()
    snapshot = store.save_in_background(target, {"next_offset": size})
    fork_pause = time.perf_counter() - started
    during, child_private_mb = [], 0.0
    while (written := snapshot.poll()) is None:
        during.append(_timed(lambda: store.lookup([queries[len(during) % len(queries)]], 8)))
        child_private_mb = max(child_private_mb, _private_mb(snapshot.pid))
    if not written:
        raise RuntimeError(f"the background snapshot failed: {snapshot.error}")
    return {"fork_pause_ms": round(fork_pause * 1000, 1),
            "background_snapshot_s": round(time.perf_counter() - started, 2),
            "child_private_mb": child_private_mb,
            "lookups_before_ms": _latency(before), "lookups_during_snapshot": len(during),
            "lookups_during_snapshot_ms": _latency(during or [0.0])}


def _lookups(templates: list[Entry], size: int) -> list[Lookup]:
    """Stored images (of the first batch) looked up by their own hashes and embedding (the
    stages that search the whole index)."""
    chosen = set(random.Random(size).sample(range(min(size, BATCH)), min(size, 200)))
    lookups = []
    for key, value in _records(templates, 0, size):
        number = int(key.decode().rsplit("-", 1)[1])
        if number in chosen:
            entry = decode_entry(key, value)
            signals = {s: v for s, v in entry.signals.items() if s != "verify"}
            lookups.append(Lookup(TENANT, f"query-{number}", signals))
        if len(lookups) == len(chosen):
            break
    return lookups


def _latency(seconds: list[float]) -> dict:
    return {**percentiles_ms(seconds), "max": round(max(seconds) * 1000, 1)}


def _private_mb(pid: int) -> float:
    """Memory a process does not share with its parent (the copy-on-write copies of a forked
    child); 0 once it has gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    kb = sum(int(line.split()[1]) for line in rollup.splitlines()
             if line.startswith(("Private_Clean:", "Private_Dirty:")))
    return round(kb / 1024, 1)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
