"""`dupwatch bench workers`: end-to-end throughput with 1, 2, 3... workers sharing a sharded index.

For each worker count: a fresh embedded broker, that many worker processes with ``--shards``
shards between them (every image is still compared with every earlier one), all ready (group
joined, shards caught up) before the clock starts; then the events are published as fast as
possible and timed until the last verdict. Publisher, broker and workers share this machine's
cores, so on a small machine more workers add coordination, not capacity: the figure to read
is how close N workers stay to one.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from dupwatch.bench.report import machine, write_results
from dupwatch.bench.throughput import _collect, _events, _latencies, _publish
from dupwatch.settings import Settings
from dupwatch.messaging.broker import EmbeddedBroker, free_port
from dupwatch.wiring.kafka import ensure_topics, kafka_publisher, topic_reader
from dupwatch.locations import samples_dir
from dupwatch.imaging.files import image_files
from dupwatch.streams.worker_process import WorkerProcess


def run_workers_bench(settings: Settings, counts: list[int], events: int, out: str) -> int:
    photos = [f.path.read_bytes() for f in image_files([str(samples_dir())]).files]
    payloads = [photos[i % len(photos)] for i in range(events)]
    shards = settings.shards or max(counts)
    runs = []
    for workers in counts:
        print(f"{workers} worker(s), {shards} shards, {events} events", file=sys.stderr)
        runs.append({"workers": workers, **_run(settings.replace(shards=shards), workers, payloads)})
    one = runs[0]["images_per_s"]
    write_results(out, {"benchmark": "workers", "events": events, "shards": shards,
                        "stages": settings.stages, "runs": runs, "machine": machine()},
                  [(f"{r['workers']} worker(s)",
                    f"{r['images_per_s']:.0f} images/s ({r['images_per_s'] / one:.2f} x one), "
                    f"latency p50 {r['latency_ms']['p50']} / p99 {r['latency_ms']['p99']} ms")
                   for r in runs])
    return 0


def _run(settings: Settings, workers: int, payloads: list[bytes]) -> dict:
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as scratch:
        settings = settings.replace(
            bootstrap_servers=broker.bootstrap_servers, group_id="dupwatch-bench-workers",
            partitions=max(workers, settings.shards), rebalance_timeout_s=6.0,
            session_timeout_s=6.0, snapshot_interval_s=0.0)
        ensure_topics(settings)
        processes = [WorkerProcess(settings.replace(
            worker_name=f"bench-{n}", web_port=free_port(), state_dir=f"{scratch}/state-{n}"),
            Path(scratch) / f"worker-{n}.log").start() for n in range(workers)]
        try:
            for process in processes:
                process.wait_ready()
            time.sleep(2 * settings.rebalance_timeout_s)  # the last join's rebalance settles
            publisher = kafka_publisher(settings)
            with topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic]) as reader:
                events = _events(payloads, "bench")
                started = time.time()
                published_at = _publish(publisher, events)
                records = _collect(reader, len(payloads))
            publisher.close()
        finally:
            for process in processes:
                process.stop()
    elapsed = max(r.received_at for r in records) - started
    return {"seconds": round(elapsed, 3), "images_per_s": round(len(payloads) / elapsed, 1),
            "latency_ms": _latencies(records, published_at),
            "verdicts_by_worker": _by_worker(records)}


def _by_worker(records: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.document["worker"]] = counts.get(record.document["worker"], 0) + 1
    return counts
