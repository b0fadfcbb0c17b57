"""`dupwatch bench throughput`: the cascade in-process vs end to end through a broker.

(a) decode + the configured stages (--stages), in this process, on events' raw bytes;
(b) publish -> worker process -> verdict topic, through an embedded broker, same images, with
    the publisher, the broker, the worker and the verdict reader sharing this machine's cores;
(c) the worker alone draining events already in the topic (what a worker sees when producers
    run elsewhere);
(d) latency at a steady rate of half of (b), where queueing does not dominate it;
(s) `dupwatch scan` over the same images, in this process, for (c) to be compared with: equal
    work when the images are distinct (``--count`` at most the photos given), since (c) drains
    the first copy of each picture and (b) then checks pictures already indexed.
Every event carries unique bytes (a suffix after the image data, which decoders ignore), so
the exact-hash stage never short-cuts one and every event is decoded and described.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from dupwatch.bench.embedding import scan_rate
from dupwatch.bench.report import machine, percentiles_ms, write_results
from dupwatch.wiring.cascade import build_cascade
from dupwatch.errors import UserError
from dupwatch.schemas import ImageEvent, utc_now
from dupwatch.settings import Settings
from dupwatch.messaging.broker import EmbeddedBroker, free_port
from dupwatch.messaging.follow import TopicReader
from dupwatch.wiring.kafka import ensure_topics, kafka_publisher, topic_reader
from dupwatch.messaging.publish import Publisher
from dupwatch.locations import samples_dir
from dupwatch.imaging.files import image_files
from dupwatch.streams.worker_process import WorkerProcess


def run_throughput_bench(settings: Settings, images_dir: str | None, count: int, out: str) -> int:
    photos = [f.path.read_bytes() for f in image_files([images_dir or str(samples_dir())]).files]
    if not photos:
        raise UserError(f"no images found in {images_dir}")
    payloads = [photos[i % len(photos)] for i in range(count)]
    print(f"{count} events from {len(photos)} photos", file=sys.stderr)
    in_process = _in_process(settings, payloads)
    scanned = _scanned(settings, payloads)
    drain, end_to_end = _through_broker(settings, payloads)
    ratio = end_to_end["images_per_s"] / in_process["images_per_s"]
    results = {"benchmark": "throughput", "events": count, "photos": len(photos),
               "in_process": in_process, "end_to_end": end_to_end, "worker_drain": drain,
               "scan": scanned,
               "drain_over_scan": round(drain["images_per_s"] / scanned["images_per_s"], 3),
               "end_to_end_over_in_process": round(ratio, 3), "goal_ratio": 0.8,
               "batch_size": settings.batch_size, "batch_timeout_ms": settings.batch_timeout_ms,
               "machine": machine()}
    lat, steady = end_to_end["latency_ms"], end_to_end["steady"]
    write_results(out, results, [
        (f"(a) in-process decode + {' + '.join(settings.stages)}",
         f"{in_process['images_per_s']:.0f} images/s"),
        ("(b) end to end through the broker", f"{end_to_end['images_per_s']:.0f} images/s"),
        ("(b) / (a)", f"{ratio:.2f} (goal >= 0.80)"),
        ("(b) latency at saturation p50 / p99", f"{lat['p50']} / {lat['p99']} ms"),
        (f"(d) latency at {steady['rate_per_s']:.0f}/s p50 / p99",
         f"{steady['latency_ms']['p50']} / {steady['latency_ms']['p99']} ms"),
        ("(c) worker draining a full topic", f"{drain['images_per_s']:.0f} images/s"),
        ("(s) `dupwatch scan`, same images", f"{scanned['images_per_s']:.0f} images/s"),
        ("(c) / (s)", f"{results['drain_over_scan']:.2f} (goal >= 0.80; equal work when "
                      f"{count} <= {len(photos)} photos)"),
    ])
    return 0


def _in_process(settings: Settings, payloads: list[bytes]) -> dict[str, float]:
    cascade = build_cascade(settings.replace(state_dir=""))
    started = time.perf_counter()
    for number, raw in enumerate(_unique(payloads, "in-process")):
        cascade.check("bench", f"img-{number}", cascade.image(raw))
    elapsed = time.perf_counter() - started
    return {"seconds": round(elapsed, 3), "images_per_s": round(len(payloads) / elapsed, 1)}


def _scanned(settings: Settings, payloads: list[bytes]) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        for number, raw in enumerate(_unique(payloads, "scan")):
            (Path(scratch) / f"scan-{number}.jpg").write_bytes(raw)
        return scan_rate(settings.replace(state_dir=""), image_files([scratch]).files)


def _through_broker(settings: Settings, payloads: list[bytes]) -> tuple[dict, dict]:
    """(c) then (b), with one worker: the drain phase also warms the worker up."""
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as scratch:
        settings = settings.replace(bootstrap_servers=broker.bootstrap_servers, state_dir="",
                                    group_id="dupwatch-bench", rebalance_timeout_s=6.0,
                                    session_timeout_s=6.0, web_port=free_port())
        ensure_topics(settings)
        publisher = kafka_publisher(settings)
        with topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic]) as reader:
            _publish(publisher, _events(payloads, "drain"))
            with WorkerProcess(settings, Path(scratch) / "worker.log"):
                first = _collect(reader, 1)[0].received_at  # after the group join
                rest = _collect(reader, len(payloads) - 1)
                drain_s = rest[-1].received_at - first
                events = _events(payloads, "bench")  # serialised before the clock starts
                started = time.time()
                published_at = _publish(publisher, events)
                records = _collect(reader, len(payloads))
                elapsed = max(r.received_at for r in records) - started
                rate = len(payloads) / elapsed
                paced = _paced_latency(publisher, reader, payloads, rate / 2)
        publisher.close()
    drain = {"seconds": round(drain_s, 3), "images_per_s": round((len(payloads) - 1) / drain_s, 1)}
    return drain, {"seconds": round(elapsed, 3), "images_per_s": round(rate, 1),
                   "latency_ms": _latencies(records, published_at), "steady": paced}


def _paced_latency(publisher: Publisher, reader: TopicReader, payloads: list[bytes],
                   rate: float) -> dict:
    events = _events(payloads[: max(50, int(rate * 4))], "paced")  # about 4 s of traffic
    published_at = _publish(publisher, events, rate)
    records = _collect(reader, len(events))
    return {"rate_per_s": round(rate, 1), "events": len(events),
            "latency_ms": _latencies(records, published_at)}


def _latencies(records: list, published_at: dict[str, float]) -> dict[str, float]:
    return percentiles_ms([r.received_at - published_at[r.document["image_id"]] for r in records])


def _events(payloads: list[bytes], prefix: str) -> list[tuple[str, bytes, bytes]]:
    """(image_id, key, JSON value) per payload."""
    events = [ImageEvent(image_id=f"{prefix}-{n}", tenant="bench", data=raw, submitted_at=utc_now())
              for n, raw in enumerate(_unique(payloads, prefix))]
    return [(e.image_id, e.key, e.to_json()) for e in events]


def _unique(payloads: list[bytes], prefix: str) -> list[bytes]:
    """Distinct bytes per event and phase, so the exact-hash stage never short-cuts one."""
    return [raw + b"\0dupwatch-%s-%d" % (prefix.encode(), n) for n, raw in enumerate(payloads)]


def _publish(publisher: Publisher, events: list[tuple[str, bytes, bytes]],
             rate: float | None = None) -> dict[str, float]:
    """Publish at ``rate`` events/s (None: as fast as possible); when each was handed over."""
    published_at = {}
    started = time.time()
    for number, (image_id, key, value) in enumerate(events):
        if rate:
            time.sleep(max(0.0, started + number / rate - time.time()))
        published_at[image_id] = time.time()
        publisher.publish_raw(value, key=key)
        if rate:
            publisher.flush()  # hand each event over now, not when the producer's linger ends
    publisher.flush()
    return published_at


def _collect(reader: TopicReader, count: int) -> list:
    records = list(reader.records(max_records=count, idle_timeout_s=60))
    rejected = [r for r in records if "reason" in r.document]
    if len(records) < count or rejected:
        raise UserError(f"bench: got {len(records)}/{count} verdicts, "
                         f"{len(rejected)} rejected")
    return records
