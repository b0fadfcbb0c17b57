"""`dupwatch bench soak`: steady traffic into one worker for minutes, watched for loss, lag,
memory and latency.

The traffic mixes, by share of events (fixed seed):
- fresh (50 %): a new picture, cut from a random place of a random source photo (15-40 % of its
  area, re-scaled and JPEG-encoded): meant to be unique, but a cut that overlaps an earlier one
  of the same photo can rightly come out as a variant, so the report gives the verdict mix per
  kind rather than checking labels;
- exact (20 %): the bytes of a recent good event again, under a new id;
- variant (20 %): a recent fresh picture edited by one of the training edit families;
- bad (10 %): undecodable bytes, schema violations, images over --max-image-pixels (a small
  PNG with a huge header) and, at most once a minute, an event over --max-event-bytes.

Without --rate, a capacity probe comes first: PROBE_EVENTS of the same mix are published
before the worker starts, and the worker's drain rate is its capacity; the soak then runs at
CAPACITY_SHARE of it. Every SAMPLE_EVERY_S the bench records what was published and received,
the outstanding events (published, no verdict or dead letter yet), the worker's own consumer
lag and index size (from /metrics), the worker's and broker's RSS (/proc) and the latency
(submitted_at to the verdict's arrival here). Publisher, broker, worker and reader share this
machine's cores.
"""
from __future__ import annotations

import base64
import io
import json
import math
import random
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from dupwatch.bench.report import machine, percentiles_ms, write_results
from dupwatch.errors import UserError
from dupwatch.model import augment
from dupwatch.schemas import ImageEvent, utc_now
from dupwatch.settings import Settings
from dupwatch.messaging.broker import EmbeddedBroker, free_port
from dupwatch.messaging.follow import Record
from dupwatch.wiring.kafka import ensure_topics, kafka_publisher, topic_reader
from dupwatch.reporting.progress import Progress, wanted
from dupwatch.imaging.samples import load_samples
from dupwatch.imaging.files import image_files
from dupwatch.streams.worker_process import WorkerProcess

MIX = {"fresh": 0.5, "exact": 0.2, "variant": 0.2, "bad": 0.1}
CAPACITY_SHARE = 0.7
PROBE_EVENTS = 2000
SAMPLE_EVERY_S = 5.0
DRAIN_IDLE_S = 60.0        # after publishing: stop waiting once nothing arrives for this long
SOURCE_SIDE = 512          # source photos are kept in memory at most this large
MAX_SOURCES = 400          # ... and at most this many (a seeded choice from a larger folder)
RECENT = 200               # exact copies and variants come from this many recent events
OVERSIZED_EVENT_EVERY_S = 60.0  # a memory-only broker holds every one of them
TENANT = "soak"
SEED = 7
_PER_MINUTE = round(60 / SAMPLE_EVERY_S)


def run_soak_bench(settings: Settings, minutes: float, rate: float | None,
                   warmup_minutes: float, images_dir: str | None, own_broker: bool,
                   out: str) -> int:
    if rate is not None and rate <= 0:
        raise UserError("--rate must be more than 0 events/s")
    traffic = Traffic(_sources(images_dir), settings)
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
    print(_minute_table(soak.samples))
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


def _sources(images_dir: str | None) -> list[Image.Image]:
    """Source photos, downscaled: the bundled originals and unrelated photos, or a folder's."""
    if images_dir:
        paths = [f.path for f in image_files([images_dir]).files]
    else:
        paths = [s.file.path for s in load_samples() if s.role != "copy"]
    paths = random.Random(SEED).sample(paths, min(len(paths), MAX_SOURCES))
    sources = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.draft("RGB", (SOURCE_SIDE, SOURCE_SIDE))  # JPEGs: decode at a fraction
                photo = image.convert("RGB")
        except (OSError, Image.DecompressionBombError):  # not a photo we can cut from: skip it
            continue
        photo.thumbnail((SOURCE_SIDE, SOURCE_SIDE))
        sources.append(photo)
    if not sources:
        raise UserError(f"no readable photos in {images_dir}")
    return sources


class Traffic:
    """The event mix, one event per call of :meth:`next`, from a fixed seed."""

    def __init__(self, sources: list[Image.Image], settings: Settings) -> None:
        self.sources = sources
        self.settings = settings
        self.rng = random.Random(SEED)
        self.count = 0
        self._fresh: deque[Image.Image] = deque(maxlen=RECENT)
        self._good: deque[bytes] = deque(maxlen=RECENT)
        self._bad_turn = 0
        self._oversized_at = -math.inf
        self._bomb: bytes | None = None

    def next(self) -> tuple[str, bytes, bytes]:
        """(kind, record key, record value)."""
        kind = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        if kind in ("exact", "variant") and not self._fresh:
            kind = "fresh"  # nothing to copy yet
        image_id = f"soak-{self.count}"
        self.count += 1
        key = f"{TENANT}/{image_id}".encode()
        if kind == "bad":
            return kind, key, self._bad(image_id)
        data = (self._good[self.rng.randrange(len(self._good))] if kind == "exact"
                else self._make(kind))
        self._good.append(data)
        event = ImageEvent(image_id=image_id, tenant=TENANT, data=data, submitted_at=utc_now())
        return kind, key, event.to_json()

    def fresh_picture(self) -> bytes:
        """A new picture's JPEG bytes, as the mix's fresh events carry."""
        return self._make("fresh")

    def _make(self, kind: str) -> bytes:
        if kind == "variant":
            family = self.rng.choice(list(augment.FAMILIES))
            image = augment.FAMILIES[family](self._fresh[self.rng.randrange(len(self._fresh))],
                                             self.rng)
        else:
            image = self._cut()
            self._fresh.append(image)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=self.rng.randint(75, 92))
        return buffer.getvalue()

    def _cut(self) -> Image.Image:
        """15-40 % of a random source photo, re-scaled to a longest side of 256-448 px."""
        photo = self.rng.choice(self.sources)
        cut = photo.crop(augment.random_box(photo, self.rng, 0.15, 0.4))
        scale = self.rng.randint(256, 448) / max(cut.size)
        return cut.resize((max(1, round(cut.width * scale)), max(1, round(cut.height * scale))),
                          Image.Resampling.BILINEAR)

    def _bad(self, image_id: str) -> bytes:
        def event(**fields: object) -> bytes:
            return json.dumps({"image_id": image_id, "tenant": TENANT, **fields}).encode()
        self._bad_turn += 1
        now = time.monotonic()
        if now - self._oversized_at >= OVERSIZED_EVENT_EVERY_S:
            self._oversized_at = now
            return b" " * (self.settings.max_event_bytes + 1)
        turn = self._bad_turn % 4
        if turn == 0:
            return event(data=base64.b64encode(self.rng.randbytes(3000)).decode())
        if turn == 1:
            return b"{not json"
        if turn == 2:
            return json.dumps({"image_id": 5, "tenant": TENANT, "data": "eA=="}).encode()
        return event(data=base64.b64encode(self._pixel_bomb()).decode())

    def _pixel_bomb(self) -> bytes:
        """A few kilobytes of PNG whose header claims more pixels than --max-image-pixels."""
        if self._bomb is None:
            side = math.isqrt(self.settings.max_image_pixels) + 1
            buffer = io.BytesIO()
            Image.new("1", (side, side)).save(buffer, "PNG", optimize=True)
            self._bomb = buffer.getvalue()
        return self._bomb


@dataclass
class Ledger:
    """What was published (key -> kind) and what came back. ``kinds`` is written by the
    publishing thread only, the rest by the reading thread only; the sampler just reads."""
    kinds: dict[str, str] = field(default_factory=dict)
    outcomes: Counter = field(default_factory=Counter)              # key -> outcomes received
    verdict_mix: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    reasons: Counter = field(default_factory=Counter)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (received at, seconds)
    verdicts: int = 0
    dead_letters: int = 0
    answered: int = 0                                   # published keys with an outcome
    first_received_at: float | None = None
    last_received_at: float | None = None

    def published(self, kind: str, key: bytes) -> None:
        self.kinds[key.decode()] = kind

    def received(self, record: Record) -> None:
        doc = record.document
        if "verdict" in doc:
            key = f"{doc['tenant']}/{doc['image_id']}"
            self.verdicts += 1
            label = doc["verdict"]
            submitted = datetime.fromisoformat(doc["submitted_at"]).timestamp()
            self.latencies.append((record.received_at, record.received_at - submitted))
        else:
            key = base64.b64decode(doc["key"]).decode() if doc.get("key") else ""
            self.dead_letters += 1
            label = f"rejected:{doc['reason']}"
            self.reasons[doc["reason"]] += 1
        if not self.outcomes[key]:
            self.verdict_mix[self.kinds.get(key, "unknown")][label] += 1
            self.answered += key in self.kinds
        self.outcomes[key] += 1
        self.first_received_at = self.first_received_at or record.received_at
        self.last_received_at = record.received_at

    @property
    def outstanding(self) -> int:
        return len(self.kinds) - self.answered


class _Collector(threading.Thread):
    """Reads verdicts and dead letters into the ledger until stopped."""

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        super().__init__(daemon=True)
        self.reader = topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic])
        self.ledger = ledger
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for record in self.reader.records(idle_timeout_s=1.0):
                self.ledger.received(record)
                if self.stopping.is_set():
                    break
        self.reader.close()


class _PacedPublisher(threading.Thread):
    """Publishes ``rate`` events/s (as fast as they can be made, if slower) for ``seconds``."""

    def __init__(self, settings: Settings, traffic: Traffic, ledger: Ledger, rate: float,
                 seconds: float, bar: Progress) -> None:
        super().__init__(daemon=True)
        self.args = settings, traffic, ledger, rate, seconds, bar
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.elapsed_s = 0.0
        self.count = 0

    def run(self) -> None:
        settings, traffic, ledger, rate, seconds, bar = self.args
        try:
            publisher = kafka_publisher(settings)
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < seconds and not self.stopping.is_set():
                time.sleep(max(0.0, self.count / rate - elapsed))
                kind, key, value = traffic.next()
                ledger.published(kind, key)
                publisher.publish_raw(value, key=key)
                self.count += 1
                bar.advance()
            self.elapsed_s = time.monotonic() - started
            publisher.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the sampler's thread
            self.error = exc


class Soak:
    """One soak run: a collector reading verdicts and dead letters back into the ledger from the
    start, then (optionally) :meth:`probe` for capacity, :meth:`run` at a paced rate in events/s
    while sampling every SAMPLE_EVERY_S, and :meth:`stop`, which returns the worker's exit code.
    Its ``samples`` are what the results table is made from."""
    def __init__(self, settings: Settings, traffic: Traffic, broker: EmbeddedBroker | None,
                 worker: WorkerProcess) -> None:
        ensure_topics(settings)
        self.settings = settings
        self.traffic = traffic
        self.broker = broker
        self.worker = worker
        self.ledger = Ledger()
        self.collector = _Collector(settings, self.ledger)
        self.collector.start()
        self.samples: list[dict] = []
        self.soak_started = 0.0     # time.time() when the paced phase began
        self.achieved_rate = 0.0
        self._latency_mark = 0      # latencies before this index are in earlier samples

    def probe(self) -> dict:
        """The worker's drain rate on PROBE_EVENTS of the mix, published before it starts."""
        publisher = kafka_publisher(self.settings)
        with Progress(PROBE_EVENTS, "probe: publishing", enabled=wanted()) as bar:
            for _ in range(PROBE_EVENTS):
                kind, key, value = self.traffic.next()
                self.ledger.published(kind, key)
                publisher.publish_raw(value, key=key)
                bar.advance()
        publisher.close()
        self._start_worker()
        ready_at = time.time()
        with Progress(PROBE_EVENTS, "probe: worker draining", enabled=wanted()) as bar:
            while self._draining(ready_at):
                if not self._worker_alive():
                    raise UserError("bench: the worker exited during the probe")
                time.sleep(0.1)
                bar.advance(PROBE_EVENTS - self.ledger.outstanding - bar.done)
        first, last = self.ledger.first_received_at, self.ledger.last_received_at
        if first is None or last is None or last <= first:
            raise UserError("bench: the worker answered too few probe events to time")
        rate = (self.ledger.answered - 1) / (last - first)
        print(f"capacity on this mix: {rate:.0f} events/s (worker draining {PROBE_EVENTS} "
              f"events); soaking at {CAPACITY_SHARE:.0%} of it", file=sys.stderr)
        return {"events": PROBE_EVENTS, "seconds": round(last - first, 2),
                "images_per_s": round(rate, 1)}

    def run(self, rate: float, seconds: float) -> None:
        if self.worker.process is None:
            self._start_worker()
        self.soak_started = time.time()
        self._latency_mark = len(self.ledger.latencies)  # the probe's are not the soak's
        total = int(rate * seconds)
        with Progress(total, f"soak at {rate:.0f}/s", enabled=wanted()) as bar:
            publisher = _PacedPublisher(self.settings, self.traffic, self.ledger, rate, seconds, bar)
            publisher.start()
            self._sample_while(lambda: publisher.is_alive() and self._worker_alive(), "soak", bar)
            publisher.stopping.set()  # when the worker died: its exit code says so in the results
            publisher.join()
            if publisher.error is not None:
                raise publisher.error
        self.achieved_rate = publisher.count / max(publisher.elapsed_s, 1e-9)
        publishing_ended = time.time()
        self._sample_while(lambda: self._draining(publishing_ended) and self._worker_alive(),
                           "drain", None)

    def stop(self) -> int | None:
        self.collector.stopping.set()
        self.collector.join(timeout=10)
        return self.worker.stop()

    def _start_worker(self) -> None:
        self.worker.start()
        self.worker.wait_ready()

    def _worker_alive(self) -> bool:
        return self.worker.process is not None and self.worker.process.poll() is None

    def _draining(self, since: float) -> bool:
        """Events are outstanding and one arrived (or ``since``) within DRAIN_IDLE_S."""
        last = max(self.ledger.last_received_at or since, since)
        return self.ledger.outstanding > 0 and time.time() - last < DRAIN_IDLE_S

    def _sample_while(self, going: Callable[[], bool], phase: str, bar: Progress | None) -> None:
        next_at = time.monotonic() + SAMPLE_EVERY_S
        while going():
            time.sleep(min(0.5, max(0.0, next_at - time.monotonic())))
            if time.monotonic() < next_at:
                continue
            next_at += SAMPLE_EVERY_S
            sample = self._sample(phase)
            self.samples.append(sample)
            if bar is not None:
                bar.label = (f"soak: {sample['outstanding']} outstanding, worker "
                             f"{sample['worker_rss_mb']:.0f} MB")
            if not wanted() and len(self.samples) % _PER_MINUTE == 0:  # a line a minute in a log
                print(json.dumps(sample), file=sys.stderr, flush=True)

    def _sample(self, phase: str) -> dict:
        now = time.time()
        since = self.samples[-1]["at"] if self.samples else self.soak_started
        window = [seconds for _, seconds in self.ledger.latencies[self._latency_mark:]]
        self._latency_mark += len(window)
        metrics = self._metrics()
        return {
            "t_s": round(now - self.soak_started, 1), "at": now, "phase": phase,
            "published": len(self.ledger.kinds), "verdicts": self.ledger.verdicts,
            "dead_letters": self.ledger.dead_letters, "outstanding": self.ledger.outstanding,
            "consumer_lag": metrics.get("lag"), "index_entries": metrics.get("entries"),
            "worker_rss_mb": _rss_mb(self.worker.process.pid if self.worker.process else None),
            "broker_rss_mb": _rss_mb(self.broker.pid if self.broker else None),
            "verdicts_per_s": round(len(window) / max(now - since, 1e-9), 1),
            "latency_ms": percentiles_ms(window) if window else None,
        }

    def _metrics(self) -> dict[str, float]:
        """Consumer lag (all partitions) and index size (images) from the worker's /metrics."""
        url = f"http://127.0.0.1:{self.settings.web_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except OSError:  # busy or restarting: a gap in the series, not a failed run
            return {}
        lag, entries = 0.0, defaultdict(float)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "dupwatch_consumer_lag":
                    lag += sample.value
                elif sample.name == "dupwatch_index_entries":
                    entries[sample.labels["stage"]] += sample.value
        return {"lag": lag, "entries": max(entries.values(), default=0.0)}


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return round(kb / 1024, 1)


def _results(soak: Soak, rate: float, minutes: float, warmup_minutes: float,
             capacity: dict | None, exit_code: int | None) -> dict:
    ledger, samples = soak.ledger, soak.samples
    warm_at = soak.soak_started + min(warmup_minutes, minutes / 2) * 60
    soak_end = soak.soak_started + minutes * 60
    during = [s for at, s in ledger.latencies if soak.soak_started <= at <= soak_end]
    after_warmup = [s for at, s in ledger.latencies if warm_at <= at <= soak_end]
    steady = [s for s in samples if s["phase"] == "soak" and s["at"] >= warm_at]
    summary = {
        "published": len(ledger.kinds), "verdicts": ledger.verdicts,
        "dead_letters": ledger.dead_letters,
        "missing": sum(1 for key in ledger.kinds if not ledger.outcomes[key]),
        "redelivered": sum(n - 1 for n in ledger.outcomes.values() if n > 1),
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


def _minute_table(samples: list[dict]) -> str:
    """The series as a markdown table, one row a minute (and the last sample)."""
    rows = ["| t | phase | published | received | outstanding | consumer lag | worker RSS MB "
            "| index entries | p99 ms |", "|---|---|---|---|---|---|---|---|---|"]
    per_minute = samples[_PER_MINUTE - 1::_PER_MINUTE] + (
        [samples[-1]] if len(samples) % _PER_MINUTE else [])
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
