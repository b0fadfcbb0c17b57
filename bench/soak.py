"""`dupwatch bench soak`: steady traffic into one worker for minutes, watched for loss, lag,
memory and latency.

The traffic is `bench/traffic.py`'s mix (fresh, exact, variant, bad input) for one tenant.

Without --rate, a capacity probe comes first: PROBE_EVENTS of the same mix are published
before the worker starts, and the worker's drain rate is its capacity; the soak then runs at
CAPACITY_SHARE of it. Every SAMPLE_EVERY_S the bench records what was published and received,
the outstanding events (published, no verdict or dead letter yet), the worker's own consumer
lag and index size (from /metrics), the worker's and broker's RSS (/proc) and the latency
(submitted_at to the verdict's arrival here). Publisher, broker, worker and reader share this
machine's cores.
"""
from __future__ import annotations

import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from dupwatch.bench.report import machine, percentiles_ms, write_results
from dupwatch.bench.traffic import (
    MIX, PacedPublisher, Run, Traffic, drain_rate, make_events,
    publish_events, rss_mb, sources, worker_metrics,
)
from dupwatch.errors import UserError
from dupwatch.settings import Settings
from dupwatch.messaging.broker import EmbeddedBroker, free_port
from dupwatch.wiring.kafka import ensure_topics
from dupwatch.reporting.progress import Progress, wanted
from dupwatch.streams.worker_process import WorkerProcess

CAPACITY_SHARE = 0.7
PROBE_EVENTS = 2000
SAMPLE_EVERY_S = 5.0


def run_soak_bench(settings: Settings, minutes: float, rate: float | None,
                   warmup_minutes: float, images_dir: str | None, own_broker: bool,
                   out: str) -> int:
    if rate is not None and rate <= 0:
        raise UserError("--rate must be more than 0 events/s")
    traffic = Traffic(sources(images_dir), settings)
    with _broker(settings, own_broker) as (settings, broker), \
            tempfile.TemporaryDirectory() as scratch:
        worker = WorkerProcess(settings, Path(scratch) / "worker.log")
        soak = Soak(settings, traffic, broker, worker)
        try:
            capacity = soak.probe() if rate is None else None
            rate = rate or CAPACITY_SHARE * capacity["images_per_s"]  # type: ignore[index]
            soak.run(rate, minutes * 60)
        finally:
            exit_code = soak.stop()
    results = _results(soak, rate, minutes, warmup_minutes, capacity, exit_code)
    print(_minute_table(soak.series.per_minute()))
    write_results(out, results, _summary_rows(results))
    return 0 if results["summary"]["missing"] == 0 and exit_code == 0 else 1


@contextmanager
def _broker(settings: Settings, own: bool) -> Iterator[tuple[Settings, EmbeddedBroker | None]]:
    """An embedded broker, or the configured cluster with topics and a group of this run's own."""
    run = uuid.uuid4().hex[:8]
    settings = settings.replace(
        input_topic=f"soak-{run}.images", verdict_topic=f"soak-{run}.verdicts",
        dead_letter_topic=f"soak-{run}.dead-letters", group_id=f"dupwatch-soak-{run}",
        worker_name="soak", web_port=free_port(), state_dir="")
    if not own:
        yield settings, None
        return
    with EmbeddedBroker() as broker:
        yield settings.replace(bootstrap_servers=broker.bootstrap_servers), broker


class Soak(Run):
    """One soak run: a collector reading verdicts and dead letters back into the ledger from the
    start, then (optionally) :meth:`probe` for capacity, :meth:`run` at a paced rate in events/s
    while sampling every SAMPLE_EVERY_S, and :meth:`stop`, which returns the worker's exit code.
    Its ``samples`` are what the results table is made from."""
    def __init__(self, settings: Settings, traffic: Traffic, broker: EmbeddedBroker | None,
                 worker: WorkerProcess) -> None:
        ensure_topics(settings)
        super().__init__(settings, traffic, broker, SAMPLE_EVERY_S)
        self.worker = worker
        self.collector.start()

    def probe(self) -> dict:
        """The worker's drain rate on PROBE_EVENTS of the mix, published before it starts."""
        publish_events(self.settings, self.ledger,
                       make_events(self.traffic, PROBE_EVENTS, "probe: making events"))
        self._start_worker()
        capacity = drain_rate(self.ledger, time.time(), PROBE_EVENTS, self._worker_alive,
                              "probe: worker draining")
        print(f"capacity on this mix: {capacity['images_per_s']:.0f} events/s (worker draining "
              f"{PROBE_EVENTS} events); soaking at {CAPACITY_SHARE:.0%} of it", file=sys.stderr)
        return capacity

    def run(self, rate: float, seconds: float) -> None:
        if self.worker.process is None:
            self._start_worker()
        self.series.start()  # the probe's latencies are not the soak's
        total = int(rate * seconds)
        with Progress(total, f"soak at {rate:.0f}/s", enabled=wanted()) as bar:
            publisher = PacedPublisher(self.settings, self.traffic, self.ledger, rate, seconds, bar)
            publisher.start()
            self.series.sample_while(lambda: publisher.is_alive() and self._worker_alive(),
                                     "soak", bar)
            publisher.stopping.set()  # when the worker died: its exit code says so in the results
            publisher.join()
            if publisher.error is not None:
                raise publisher.error
        self.achieved_rate = publisher.rate
        publishing_ended = time.time()
        self.series.sample_while(
            lambda: self.ledger.waiting(publishing_ended) and self._worker_alive(), "drain", None)

    def stop(self) -> int | None:
        self.collector.stop()
        return self.worker.stop()

    def _start_worker(self) -> None:
        self.worker.start()
        self.worker.wait_ready()

    def _worker_alive(self) -> bool:
        return self.worker.process is not None and self.worker.process.poll() is None

    def sample(self) -> dict:
        """The soak's own fields of a sample: the worker's lag, index size and RSS, the broker's."""
        metrics = worker_metrics(self.settings.web_port)
        return {"consumer_lag": metrics.get("lag"), "index_entries": metrics.get("entries"),
                "worker_rss_mb": rss_mb(self.worker.process.pid if self.worker.process else None),
                "broker_rss_mb": rss_mb(self.broker.pid if self.broker else None)}

    def bar_label(self, sample: dict) -> str:
        return f"soak: {sample['outstanding']} outstanding, worker {sample['worker_rss_mb']:.0f} MB"


def _results(soak: Soak, rate: float, minutes: float, warmup_minutes: float,
             capacity: dict | None, exit_code: int | None) -> dict:
    ledger, samples = soak.ledger, soak.samples
    warm_at = soak.started + min(warmup_minutes, minutes / 2) * 60
    soak_end = soak.started + minutes * 60
    during = [s for at, s in ledger.latencies if soak.started <= at <= soak_end]
    after_warmup = [s for at, s in ledger.latencies if warm_at <= at <= soak_end]
    steady = [s for s in samples if s["phase"] == "soak" and s["at"] >= warm_at]
    summary = {
        "published": len(ledger.kinds), "verdicts": ledger.verdicts,
        "dead_letters": ledger.dead_letters,
        "missing": len(ledger.unanswered()),
        "redelivered": ledger.redelivered(),
        "target_rate_per_s": round(rate, 1), "achieved_rate_per_s": round(soak.achieved_rate, 1),
        "latency_ms": percentiles_ms(during) if during else None,
        "latency_after_warmup_ms": percentiles_ms(after_warmup) if after_warmup else None,
        "max_outstanding": max((s["outstanding"] for s in samples), default=0),
        "worker_exit_code": exit_code,
        **_growth(steady),
    }
    return {"benchmark": "soak", "minutes": minutes, "warmup_minutes": warmup_minutes,
            "mix": MIX, "capacity_probe": capacity, "capacity_share": CAPACITY_SHARE,
            "summary": summary,
            "verdict_mix": {kind: dict(labels) for kind, labels in ledger.verdict_mix.items()},
            "dead_letter_reasons": dict(ledger.reasons), "series": samples,
            "settings": {"batch_size": soak.settings.batch_size,
                         "stages": soak.settings.stages,
                         "max_event_bytes": soak.settings.max_event_bytes},
            "machine": machine()}


def _growth(steady: list[dict]) -> dict:
    """Worker RSS and index size from the end of warm-up to the end of the soak, the RSS trend
    (least squares), and RSS growth per indexed image: the index grows with every good event,
    so some growth is expected and the rest would be a leak."""
    points = [s for s in steady if s["worker_rss_mb"] is not None]
    if len(points) < 2:
        return {"rss": None}
    first, last = points[0], points[-1]
    minutes = np.array([s["t_s"] for s in points]) / 60
    slope = float(np.polyfit(minutes, [s["worker_rss_mb"] for s in points], 1)[0])
    grown_mb = last["worker_rss_mb"] - first["worker_rss_mb"]
    added = (last["index_entries"] or 0) - (first["index_entries"] or 0)
    return {"rss": {
        "worker_mb_at_warmup_end": first["worker_rss_mb"], "worker_mb_at_end": last["worker_rss_mb"],
        "worker_slope_mb_per_min": round(slope, 2),
        "index_entries_at_warmup_end": first["index_entries"],
        "index_entries_at_end": last["index_entries"],
        "kb_per_indexed_image": round(grown_mb * 1024 / added, 2) if added > 0 else None,
        "broker_mb_at_warmup_end": first["broker_rss_mb"], "broker_mb_at_end": last["broker_rss_mb"],
    }}


def _minute_table(per_minute: list[dict]) -> str:
    """The series as a markdown table, one row a minute (and the last sample)."""
    rows = ["| t | phase | published | received | outstanding | consumer lag | worker RSS MB "
            "| index entries | p99 ms |", "|---|---|---|---|---|---|---|---|---|"]
    for s in per_minute:
        received = s["verdicts"] + s["dead_letters"]
        p99 = s["latency_ms"]["p99"] if s["latency_ms"] else "-"
        rows.append(f"| {s['t_s'] / 60:.1f} min | {s['phase']} | {s['published']} | {received} "
                    f"| {s['outstanding']} | {_number(s['consumer_lag'])} "
                    f"| {s['worker_rss_mb']} | {_number(s['index_entries'])} | {p99} |")
    return "\n".join(rows)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _summary_rows(results: dict) -> list[tuple[str, str]]:
    s, probe = results["summary"], results["capacity_probe"]
    rows = []
    if probe:
        rows.append(("capacity on this mix (probe)", f"{probe['images_per_s']:.0f} events/s"))
    rows += [
        ("rate target / achieved", f"{s['target_rate_per_s']} / {s['achieved_rate_per_s']} events/s"),
        ("published / verdicts / dead letters",
         f"{s['published']} / {s['verdicts']} / {s['dead_letters']}"),
        ("missing / redelivered", f"{s['missing']} / {s['redelivered']}"),
        ("max outstanding", str(s["max_outstanding"])),
    ]
    for name, key in (("latency p50 / p99", "latency_ms"),
                      ("latency after warm-up p50 / p99", "latency_after_warmup_ms")):
        if s[key]:
            rows.append((name, f"{s[key]['p50']} / {s[key]['p99']} ms"))
    rss = s["rss"]
    if rss:
        rows += [("worker RSS warm-up end -> end",
                  f"{rss['worker_mb_at_warmup_end']} -> {rss['worker_mb_at_end']} MB "
                  f"({rss['worker_slope_mb_per_min']:+} MB/min)"),
                 ("index entries warm-up end -> end",
                  f"{_number(rss['index_entries_at_warmup_end'])} -> "
                  f"{_number(rss['index_entries_at_end'])} "
                  + (f"({rss['kb_per_indexed_image']} KB RSS per added image)"
                     if rss["kb_per_indexed_image"] is not None else "(no images added)"))]
    rows.append(("worker exit code", str(s["worker_exit_code"])))
    return rows
