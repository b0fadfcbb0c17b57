"""`dupwatch bench lookup`: synchronous lookups (POST /v1/lookup) against one worker process.

An embedded broker and one worker; the worker's stream first indexes INDEXED new pictures (cut
from the bundled photos, as `bench soak` makes them). Then, at each concurrency (clients each
sending one lookup after another over a kept-alive connection, for --seconds):
- hash: JPEG re-encodes of indexed pictures, which the pHash settles (decode + SHA-256 + pHash);
- embedding: new pictures, never indexed: every stage runs, the embedding included.
Then beside a stream: the worker's capacity on `bench soak`'s event mix is measured by letting
it drain STREAM_PROBE events; the stream then flows at half of it for --seconds alone, and
again while each kind of lookup runs at BESIDE_CONCURRENCY. Reported: the stream's verdict rate
with lookups over without (goal >= 0.8) and each kind's lookup p99 beside the stream over
alone (goal <= 2). The bench process, broker and worker share this machine's cores; the load
average at each step is in the results.
"""
from __future__ import annotations

import asyncio
import io
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

from dupwatch.bench.report import machine, markdown_table, percentiles_ms, write_results
from dupwatch.bench.traffic import (
    Collector, Ledger, PacedPublisher, Traffic, make_events, publish_events, sources,
)
from dupwatch.errors import UserError
from dupwatch.schemas import ImageEvent, utc_now
from dupwatch.settings import Settings
from dupwatch.messaging.broker import EmbeddedBroker, free_port
from dupwatch.wiring.kafka import ensure_topics, kafka_publisher, topic_reader
from dupwatch.reporting.progress import Progress
from dupwatch.streams.worker_process import WorkerProcess

INDEXED = 200
EMBEDDING_QUERIES = 200
STREAM_PROBE = 400
BESIDE_CONCURRENCY = 8
TENANT = "soak"  # the stream's mix indexes into the same tenant the lookups ask about
GOALS = {"hash_lookups_per_s_at_8": 300, "hash_p99_ms_at_8": 50, "embedding_p99_ms_at_8": 250,
         "stream_kept": 0.8, "lookup_p99_beside_stream_over_alone": 2.0}


def run_lookup_bench(settings: Settings, concurrencies: list[int], seconds: float,
                     out: str) -> int:
    token = secrets.token_hex(24)
    run = uuid.uuid4().hex[:8]
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as scratch:
        settings = settings.replace(
            bootstrap_servers=broker.bootstrap_servers, input_topic=f"lb-{run}.images",
            verdict_topic=f"lb-{run}.verdicts", dead_letter_topic=f"lb-{run}.dead-letters",
            group_id=f"dupwatch-lookup-bench-{run}", worker_name="bench-lookup", state_dir="",
            web_port=free_port(), rebalance_timeout_s=6.0, session_timeout_s=6.0,
            api_tokens=[token], lookup_queue=2 * max(concurrencies + [BESIDE_CONCURRENCY]))
        ensure_topics(settings)
        traffic = Traffic(sources(None), settings, tenants=(TENANT,))
        indexed = [traffic.fresh_picture() for _ in range(INDEXED)]
        queries = {"hash": [_reencoded(picture) for picture in indexed],
                   "embedding": [traffic.fresh_picture() for _ in range(EMBEDDING_QUERIES)]}
        with WorkerProcess(settings, Path(scratch) / "worker.log") as worker:
            worker.wait_ready()
            _index(settings, indexed)
            url = f"http://127.0.0.1:{settings.web_port}/v1/lookup?tenant={TENANT}"
            bench = _Bench(url, token, seconds)
            alone = {kind: {str(c): bench.measure(queries[kind], c) for c in concurrencies}
                     for kind in queries}
            beside = _beside_stream(settings, traffic, bench, queries, seconds)
    results = {"benchmark": "lookup", "seconds_per_level": seconds, "indexed": INDEXED,
               "alone": alone, "beside_stream": beside, "goals": GOALS, "machine": machine()}
    write_results(out, results, _rows(alone, beside))
    print(_table(alone), file=sys.stderr)
    return 0


def _reencoded(jpeg: bytes) -> bytes:
    """The same picture, re-encoded at another quality: new bytes the pHash still matches."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def _index(settings: Settings, pictures: list[bytes]) -> None:
    """Publish the pictures to the stream and wait until every one has its verdict."""
    with topic_reader(settings, [settings.verdict_topic], from_beginning=True) as reader:
        publisher = kafka_publisher(settings)
        for number, picture in enumerate(pictures):
            publisher.publish(ImageEvent(f"indexed-{number}", TENANT, picture,
                                         submitted_at=utc_now()))
        publisher.close()
        got = list(reader.records(max_records=len(pictures), idle_timeout_s=120))
    if len(got) < len(pictures):
        raise UserError(f"bench lookup: only {len(got)} of {len(pictures)} pictures were "
                         "indexed")


class _Bench:
    """Lookups from ``concurrency`` clients for ``seconds``, each client one after another."""

    def __init__(self, url: str, token: str, seconds: float) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}
        self.seconds = seconds

    def measure(self, queries: list[bytes], concurrency: int) -> dict[str, Any]:
        load = os.getloadavg()[0]
        latencies, statuses, stages, elapsed = asyncio.run(self._run(queries, concurrency))
        ok = statuses.get(200, 0)
        return {"concurrency": concurrency, "lookups": ok, "seconds": round(elapsed, 2),
                "lookups_per_s": round(ok / elapsed, 1),
                "latency_ms": percentiles_ms(latencies) if latencies else None,
                "statuses": {str(k): v for k, v in statuses.items()},
                "deciding_stages": dict(stages), "load_average_1m": round(load, 2)}

    async def _run(self, queries: list[bytes], concurrency: int):
        latencies: list[float] = []
        statuses: Counter = Counter()
        stages: Counter = Counter()
        turn = iter(range(10**9))
        async with aiohttp.ClientSession(headers=self.headers) as session:
            await self._one(session, queries[0], [], Counter(), Counter())  # warm the path
            started = time.perf_counter()
            deadline = started + self.seconds

            async def client() -> None:
                while time.perf_counter() < deadline:
                    query = queries[next(turn) % len(queries)]
                    await self._one(session, query, latencies, statuses, stages)
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return latencies, statuses, stages, time.perf_counter() - started

    async def _one(self, session: aiohttp.ClientSession, query: bytes, latencies: list[float],
                   statuses: Counter, stages: Counter) -> None:
        started = time.perf_counter()
        async with session.post(self.url, data=query) as response:
            body = await response.json()
        statuses[response.status] += 1
        if response.status == 200:
            latencies.append(time.perf_counter() - started)
            stages[body["stage"] or "none (unique)"] += 1


def _beside_stream(settings: Settings, traffic: Traffic, bench: _Bench,
                   queries: dict[str, list[bytes]], seconds: float) -> dict[str, Any]:
    ledger = Ledger()
    collector = Collector(settings, ledger)
    collector.start()
    try:
        capacity = _capacity(settings, traffic, ledger)
        rate = capacity / 2
        alone = _paced(settings, traffic, ledger, rate, seconds)
        results: dict[str, Any] = {"capacity_events_per_s": round(capacity, 1),
                                   "rate_events_per_s": round(rate, 1), "stream_alone": alone}
        for kind, kind_queries in queries.items():
            with _Stream(settings, traffic, ledger, rate, seconds) as stream:
                lookups = bench.measure(kind_queries, BESIDE_CONCURRENCY)
            results[kind] = {"lookups": lookups, "stream": stream.result}
        return results
    finally:
        collector.stop()


def _capacity(settings: Settings, traffic: Traffic, ledger: Ledger) -> float:
    """Events/s the worker answers while draining STREAM_PROBE events of the mix."""
    before = ledger.answered
    publish_events(settings, ledger, make_events(traffic, STREAM_PROBE, "probe: making events"))
    deadline = time.time() + 600
    while ledger.answered == before and time.time() < deadline:
        time.sleep(0.01)
    first_at, first_count = ledger.last_received_at or time.time(), ledger.answered
    while ledger.outstanding and time.time() < deadline:
        time.sleep(0.05)
    if ledger.outstanding or ledger.last_received_at is None:
        raise UserError("bench lookup: the worker did not drain the probe in 10 minutes")
    return (ledger.answered - first_count) / max(1e-3, ledger.last_received_at - first_at)


class _Stream:
    """The mix at ``rate`` for ``seconds`` (as a ``with`` block), then the stream's figures."""

    def __init__(self, settings: Settings, traffic: Traffic, ledger: Ledger, rate: float,
                 seconds: float) -> None:
        self.ledger = ledger
        self.publisher = PacedPublisher(settings, traffic, ledger, rate, seconds,
                                         Progress(0, "stream", enabled=False))
        self.result: dict[str, Any] = {}

    def __enter__(self) -> "_Stream":
        self.answered, self.latencies_from = self.ledger.answered, len(self.ledger.latencies)
        self.started = time.time()
        self.publisher.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.publisher.join()
        if self.publisher.error is not None:
            raise self.publisher.error
        window = time.time() - self.started
        answered = self.ledger.answered - self.answered  # in the window: the stream's rate
        deadline = time.time() + 120
        while self.ledger.outstanding and time.time() < deadline:  # its tail, for latencies
            time.sleep(0.05)
        latencies = [s for _, s in self.ledger.latencies[self.latencies_from:]]
        self.result = {"published": self.publisher.count, "answered_in_window": answered,
                       "verdicts_per_s": round(answered / window, 1),
                       "latency_ms": percentiles_ms(latencies) if latencies else None,
                       "load_average_1m": round(os.getloadavg()[0], 2)}


def _paced(settings: Settings, traffic: Traffic, ledger: Ledger, rate: float,
           seconds: float) -> dict[str, Any]:
    with _Stream(settings, traffic, ledger, rate, seconds) as stream:
        pass
    return stream.result


def _rows(alone: dict, beside: dict) -> list[tuple[str, str]]:
    rows = []
    for kind, levels in alone.items():
        for level in levels.values():
            lat = level["latency_ms"] or {}
            rows.append((f"{kind} lookups, concurrency {level['concurrency']}",
                         f"{level['lookups_per_s']}/s, p50 {lat.get('p50')} / p99 {lat.get('p99')} ms"
                         f" (load {level['load_average_1m']})"))
    stream_alone = beside["stream_alone"]["verdicts_per_s"]
    rows.append(("stream capacity / paced rate",
                 f"{beside['capacity_events_per_s']} / {beside['rate_events_per_s']} events/s"))
    for kind in alone:
        side = beside[kind]
        kept = side["stream"]["verdicts_per_s"] / stream_alone if stream_alone else 0.0
        p99_alone = alone[kind].get(str(BESIDE_CONCURRENCY), {}).get("latency_ms") or {}
        p99_beside = side["lookups"]["latency_ms"] or {}
        ratio = (p99_beside.get("p99", 0) / p99_alone["p99"]) if p99_alone.get("p99") else None
        side["stream_kept"] = round(kept, 3)
        side["lookup_p99_over_alone"] = round(ratio, 2) if ratio is not None else None
        rows.append((f"beside the stream: {kind} lookups at {BESIDE_CONCURRENCY}",
                     f"{side['lookups']['lookups_per_s']}/s, p99 {p99_beside.get('p99')} ms "
                     f"({side['lookup_p99_over_alone']} x alone; goal <= 2); stream "
                     f"{side['stream']['verdicts_per_s']} vs {stream_alone} verdicts/s alone "
                     f"({kept:.2f}; goal >= 0.8)"))
    return rows


def _table(alone: dict) -> str:
    rows = [[kind, str(level["concurrency"]), str(level["lookups_per_s"]),
             str((level["latency_ms"] or {}).get("p50")), str((level["latency_ms"] or {}).get("p99")),
             str(level["load_average_1m"])]
            for kind, levels in alone.items() for level in levels.values()]
    return markdown_table(["kind", "concurrency", "lookups/s", "p50 ms", "p99 ms", "load 1m"], rows)
