"""Mixed traffic for the benches that run workers for minutes (`bench soak`, `bench chaos`,
`bench lookup`): the event mix, the ledger of what was sent and what came back, the threads that
publish at a steady rate and read the outcomes back, and what a bench reads off a worker
process (/metrics, RSS).

The mix, by share of events (fixed seed):
- fresh (50 %): a new picture, cut from a random place of a random source photo (15-40 % of its
  area, re-scaled and JPEG-encoded): meant to be unique, but a cut that overlaps an earlier one
  of the same photo can rightly come out as a variant, so the benches report the verdict mix per
  kind rather than checking labels;
- exact (20 %): the bytes of a recent good event of the same tenant again, under a new id;
- variant (20 %): a recent fresh picture of the same tenant edited by one of the training edit
  families;
- bad (10 %): undecodable bytes, schema violations, images over --max-image-pixels (a small
  PNG with a huge header) and, at most once a minute, an event over --max-event-bytes.
Over several tenants, each event's tenant is a seeded choice among them; a bomb tenant, when
given, also sends a scan bomb (`bench hostile`'s) every so often.
"""
from __future__ import annotations

import base64
import io
import json
import math
import random
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, NamedTuple

from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from dupwatch.bench.hostile import scan_bomb
from dupwatch.bench.report import percentiles_ms
from dupwatch.errors import UserError
from dupwatch.imaging.files import image_files
from dupwatch.imaging.samples import load_samples
from dupwatch.messaging.broker import EmbeddedBroker
from dupwatch.messaging.follow import Record
from dupwatch.model import augment
from dupwatch.reporting.progress import Progress, wanted
from dupwatch.schemas import ImageEvent, utc_now
from dupwatch.settings import Settings
from dupwatch.wiring.kafka import kafka_publisher, topic_reader

MIX = {"fresh": 0.5, "exact": 0.2, "variant": 0.2, "bad": 0.1}
DRAIN_IDLE_S = 60.0        # after publishing: stop waiting once nothing arrives for this long
SOURCE_SIDE = 512          # source photos are kept in memory at most this large
MAX_SOURCES = 400          # ... and at most this many (a seeded choice from a larger folder)
RECENT = 200               # exact copies and variants come from this many recent events
OVERSIZED_EVENT_EVERY_S = 60.0  # a memory-only broker holds every one of them
SEED = 7


def sources(images_dir: str | None) -> list[Image.Image]:
    """Source photos, downscaled: the bundled originals and unrelated photos, or a folder's."""
    if images_dir:
        paths = [f.path for f in image_files([images_dir]).files]
    else:
        paths = [s.file.path for s in load_samples() if s.role != "copy"]
    paths = random.Random(SEED).sample(paths, min(len(paths), MAX_SOURCES))
    photos = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.draft("RGB", (SOURCE_SIDE, SOURCE_SIDE))  # JPEGs: decode at a fraction
                photo = image.convert("RGB")
        except (OSError, Image.DecompressionBombError):  # not a photo we can cut from: skip it
            continue
        photo.thumbnail((SOURCE_SIDE, SOURCE_SIDE))
        photos.append(photo)
    if not photos:
        raise UserError(f"no readable photos in {images_dir}")
    return photos


class Sent(NamedTuple):
    """One event of the mix: its kind, record key and value, and for a copy (exact or variant)
    the key of the event whose picture it copies."""
    kind: str
    key: bytes
    value: bytes
    source: str | None = None


@dataclass(frozen=True)
class Senders:
    """Who sends the mix: its tenants (each event's is a seeded choice among them), the prefix
    of its image ids, and a tenant that sends a scan bomb every ``bomb_every_s`` (the first at
    once; None: no bombs)."""
    tenants: tuple[str, ...] = ("soak",)
    prefix: str = "soak"
    bomb_tenant: str | None = None
    bomb_every_s: float = math.inf


class Traffic:
    """The event mix, one event per call of :meth:`next`, from a fixed seed."""

    def __init__(self, photos: list[Image.Image], settings: Settings,
                 senders: Senders = Senders(), seed: int = SEED) -> None:
        self.sources = photos
        self.settings = settings
        self.senders = senders
        self.rng = random.Random(seed)
        self.count = 0
        # per tenant: recent fresh pictures and recent good events' bytes, with their keys
        self._fresh: dict[str, deque[tuple[str, Image.Image]]] = {
            t: deque(maxlen=RECENT) for t in senders.tenants}
        self._good: dict[str, deque[tuple[str, bytes]]] = {
            t: deque(maxlen=RECENT) for t in senders.tenants}
        self._bad_turn = 0
        self._oversized_at = -math.inf
        self._bombed_at = -math.inf
        self._pixel_bomb_bytes: bytes | None = None
        self._scan_bomb_bytes: bytes | None = None

    def next(self) -> Sent:
        senders = self.senders
        if senders.bomb_tenant and time.monotonic() - self._bombed_at >= senders.bomb_every_s:
            return self._scan_bomb(senders.bomb_tenant)
        kind = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        tenants = senders.tenants
        tenant = tenants[0] if len(tenants) == 1 else self.rng.choice(tenants)
        if kind in ("exact", "variant") and not self._fresh[tenant]:
            kind = "fresh"  # nothing to copy yet
        image_id = self._new_id()
        key = f"{tenant}/{image_id}"
        if kind == "bad":
            return Sent(kind, key.encode(), self._bad(tenant, image_id))
        source = None
        if kind == "exact":
            source, data = self._good[tenant][self.rng.randrange(len(self._good[tenant]))]
        else:
            source, data = self._make(kind, tenant, key)
        self._good[tenant].append((key, data))
        event = ImageEvent(image_id=image_id, tenant=tenant, data=data, submitted_at=utc_now())
        return Sent(kind, key.encode(), event.to_json(), source)

    def fresh_picture(self) -> bytes:
        """A new picture's JPEG bytes, as the mix's fresh events carry."""
        return self._make("fresh", self.senders.tenants[0], "")[1]

    def _new_id(self) -> str:
        self.count += 1
        return f"{self.senders.prefix}-{self.count - 1}"

    def _make(self, kind: str, tenant: str, key: str) -> tuple[str | None, bytes]:
        """(the key of the picture edited, or None for a fresh one; JPEG bytes)."""
        source = None
        if kind == "variant":
            family = self.rng.choice(list(augment.FAMILIES))
            fresh = self._fresh[tenant]
            source, picture = fresh[self.rng.randrange(len(fresh))]
            image = augment.FAMILIES[family](picture, self.rng)
        else:
            image = self._cut()
            self._fresh[tenant].append((key, image))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=self.rng.randint(75, 92))
        return source, buffer.getvalue()

    def _cut(self) -> Image.Image:
        """15-40 % of a random source photo, re-scaled to a longest side of 256-448 px."""
        photo = self.rng.choice(self.sources)
        cut = photo.crop(augment.random_box(photo, self.rng, 0.15, 0.4))
        scale = self.rng.randint(256, 448) / max(cut.size)
        return cut.resize((max(1, round(cut.width * scale)), max(1, round(cut.height * scale))),
                          Image.Resampling.BILINEAR)

    def _bad(self, tenant: str, image_id: str) -> bytes:
        def event(**fields: object) -> bytes:
            return json.dumps({"image_id": image_id, "tenant": tenant, **fields}).encode()
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
            return json.dumps({"image_id": 5, "tenant": tenant, "data": "eA=="}).encode()
        return event(data=base64.b64encode(self._pixel_bomb()).decode())

    def _pixel_bomb(self) -> bytes:
        """A few kilobytes of PNG whose header claims more pixels than --max-image-pixels."""
        if self._pixel_bomb_bytes is None:
            side = math.isqrt(self.settings.max_image_pixels) + 1
            buffer = io.BytesIO()
            Image.new("1", (side, side)).save(buffer, "PNG", optimize=True)
            self._pixel_bomb_bytes = buffer.getvalue()
        return self._pixel_bomb_bytes

    def _scan_bomb(self, tenant: str) -> Sent:
        """A scan bomb of ``tenant``, its bytes made unique by a suffix decoders ignore."""
        self._bombed_at = time.monotonic()
        if self._scan_bomb_bytes is None:
            self._scan_bomb_bytes = scan_bomb()
        image_id = self._new_id()
        event = ImageEvent(image_id=image_id, tenant=tenant,
                           data=self._scan_bomb_bytes + image_id.encode(), submitted_at=utc_now())
        return Sent("bomb", event.key, event.to_json())


class Outcome(NamedTuple):
    """A verdict or dead letter as it came back: when, its label (a verdict's, or
    ``rejected:<reason>``), the key it matched (``tenant/image_id``; None when unique or
    rejected), the worker that sent it and, for a verdict, seconds from its event's
    submitted_at to its arrival here."""
    received_at: float
    label: str
    match: str | None
    worker: str | None
    latency_s: float | None = None


@dataclass
class Ledger:
    """What was published (key -> kind, when, what it copies) and every outcome that came back
    for it. The publishing side is written by one thread, the outcomes by the reading thread; a
    sampler only reads (lengths, or the ``order`` list up to a length read before)."""
    kinds: dict[str, str] = field(default_factory=dict)
    published_at: dict[str, float] = field(default_factory=dict)    # time.time()
    sources: dict[str, str] = field(default_factory=dict)           # copy key -> copied key
    order: list[str] = field(default_factory=list)                   # keys as published
    outcomes: dict[str, list[Outcome]] = field(default_factory=lambda: defaultdict(list))
    verdict_mix: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    reasons: Counter = field(default_factory=Counter)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (received at, seconds)
    verdicts: int = 0
    dead_letters: int = 0
    answered: int = 0                                   # published keys with an outcome
    first_received_at: float | None = None
    last_received_at: float | None = None

    def published(self, sent: Sent) -> None:
        key = sent.key.decode()
        self.kinds[key] = sent.kind
        self.published_at[key] = time.time()
        if sent.source:
            self.sources[key] = sent.source
        self.order.append(key)

    def received(self, record: Record) -> None:
        doc = record.document
        if "verdict" in doc:
            key = f"{doc['tenant']}/{doc['image_id']}"
            self.verdicts += 1
            label = doc["verdict"]
            match = f"{doc['tenant']}/{doc['match_id']}" if doc.get("match_id") else None
            submitted = datetime.fromisoformat(doc["submitted_at"]).timestamp()
            latency = record.received_at - submitted
            self.latencies.append((record.received_at, latency))
        else:
            key = base64.b64decode(doc["key"]).decode() if doc.get("key") else ""
            self.dead_letters += 1
            label, match, latency = f"rejected:{doc['reason']}", None, None
            self.reasons[doc["reason"]] += 1
        if not self.outcomes.get(key):
            self.verdict_mix[self.kinds.get(key, "unknown")][label] += 1
            self.answered += key in self.kinds
        self.outcomes[key].append(Outcome(record.received_at, label, match, doc.get("worker"),
                                          latency))
        self.first_received_at = self.first_received_at or record.received_at
        self.last_received_at = record.received_at

    @property
    def outstanding(self) -> int:
        return len(self.kinds) - self.answered

    def unanswered(self) -> list[str]:
        """Keys published so far without an outcome."""
        return [key for key in self.order[:] if not self.outcomes.get(key)]

    def redelivered(self) -> int:
        """Outcomes beyond the first, over every key."""
        return sum(len(got) - 1 for got in self.outcomes.values() if len(got) > 1)

    def waiting(self, since: float) -> bool:
        """Events are outstanding and one arrived (or ``since``) within DRAIN_IDLE_S."""
        last = max(self.last_received_at or since, since)
        return self.outstanding > 0 and time.time() - last < DRAIN_IDLE_S


class Collector(threading.Thread):
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

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


class PacedPublisher(threading.Thread):
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
                sent = traffic.next()
                ledger.published(sent)
                publisher.publish_raw(sent.value, key=sent.key)
                self.count += 1
                bar.advance()
            self.elapsed_s = time.monotonic() - started
            publisher.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the sampler's thread
            self.error = exc

    @property
    def rate(self) -> float:
        """Events/s achieved (once finished)."""
        return self.count / max(self.elapsed_s, 1e-9)


class Run:
    """What a long-running bench keeps: its settings, traffic and broker (None: a cluster of
    the user's), the ledger and a collector that reads the outcomes into it (started by the
    bench once the topics exist), and the series sampled every ``every_s`` with the bench's own
    fields from :meth:`sample` (``started``: when the sampled phase began)."""

    def __init__(self, settings: Settings, traffic: Traffic, broker: EmbeddedBroker | None,
                 every_s: float) -> None:
        self.settings = settings
        self.traffic = traffic
        self.broker = broker
        self.ledger = Ledger()
        self.collector = Collector(settings, self.ledger)
        self.series = Sampler(self.ledger, every_s, self.sample, self.bar_label)
        self.achieved_rate = 0.0

    @property
    def samples(self) -> list[dict]:
        return self.series.samples

    @property
    def started(self) -> float:
        return self.series.started

    def sample(self) -> dict:
        """The bench's own fields of a sample."""
        return {}

    def bar_label(self, sample: dict) -> str:
        return f"{sample['outstanding']} outstanding"


def make_events(traffic: Traffic, count: int, label: str) -> list[Sent]:
    with Progress(count, label, enabled=wanted()) as bar:
        events = []
        for _ in range(count):
            events.append(traffic.next())
            bar.advance()
    return events


def publish_events(settings: Settings, ledger: Ledger, events: list[Sent]) -> None:
    """Publish at once, each recorded in the ledger first."""
    publisher = kafka_publisher(settings)
    for sent in events:
        ledger.published(sent)
        publisher.publish_raw(sent.value, key=sent.key)
    publisher.close()


def drain_rate(ledger: Ledger, since: float, total: int, alive: Callable[[], bool],
               label: str) -> dict:
    """Wait until the workers have answered everything published (or DRAIN_IDLE_S of silence)
    and return their rate: answers after the first one over the time from the first to the last.
    ``alive`` is asked as it waits; False ends the bench."""
    with Progress(total, label, enabled=wanted()) as bar:
        while ledger.waiting(since):
            if not alive():
                raise UserError("bench: a worker exited during the capacity probe")
            time.sleep(0.1)
            bar.advance(total - ledger.outstanding - bar.done)
    first, last = ledger.first_received_at, ledger.last_received_at
    if first is None or last is None or last <= first:
        raise UserError("bench: the workers answered too few probe events to time")
    rate = (ledger.answered - 1) / (last - first)
    return {"events": total, "seconds": round(last - first, 2), "images_per_s": round(rate, 1)}


class Sampler:
    """The series of a long-running bench: every ``every_s``, while a condition holds
    (:meth:`sample_while`), a sample of what the ledger says (published, received,
    outstanding, and the verdicts received since the sample before: their rate and latency)
    with the bench's own fields from ``extra()`` and the time since :meth:`start`. Labels the
    progress bar by ``label(sample)``; without a bar, a sample a minute goes to stderr as a
    JSON line (for logs)."""

    def __init__(self, ledger: Ledger, every_s: float, extra: Callable[[], dict],
                 label: Callable[[dict], str]) -> None:
        self.ledger = ledger
        self.every_s = every_s
        self.hooks = extra, label
        self.samples: list[dict] = []
        self.started = time.time()
        self._latency_mark = 0  # latencies before this index are in earlier samples

    def start(self) -> None:
        """Times count from now; latencies from before (a probe's) are not sampled."""
        self.started = time.time()
        self._latency_mark = len(self.ledger.latencies)

    def sample_while(self, going: Callable[[], bool], phase: str, bar: Progress | None) -> None:
        next_at = time.monotonic() + self.every_s
        while going():
            time.sleep(min(0.5, max(0.0, next_at - time.monotonic())))
            if time.monotonic() < next_at:
                continue
            next_at += self.every_s
            sample = self._sample(phase)
            self.samples.append(sample)
            if bar is not None:
                bar.label = self.hooks[1](sample)
            if not wanted() and len(self.samples) % round(60 / self.every_s) == 0:
                print(json.dumps(sample), file=sys.stderr, flush=True)

    def per_minute(self) -> list[dict]:
        """A sample a minute, and the last one."""
        step = round(60 / self.every_s)
        return self.samples[step - 1::step] + ([self.samples[-1]] if len(self.samples) % step
                                               else [])

    def _sample(self, phase: str) -> dict:
        now = time.time()
        since = self.samples[-1]["at"] if self.samples else self.started
        window = [seconds for _, seconds in self.ledger.latencies[self._latency_mark:]]
        self._latency_mark += len(window)
        ledger = self.ledger
        return {"t_s": round(now - self.started, 1), "at": now, "phase": phase,
                "published": len(ledger.kinds), "verdicts": ledger.verdicts,
                "dead_letters": ledger.dead_letters, "outstanding": ledger.outstanding,
                **self.hooks[0](),
                "verdicts_per_s": round(len(window) / max(now - since, 1e-9), 1),
                "latency_ms": percentiles_ms(window) if window else None}


def worker_metrics(port: int) -> dict[str, float]:
    """Consumer lag (all its partitions) and index size (images) from a worker's /metrics;
    empty when it does not answer (busy or restarting: a gap in the series, not a failure)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    lag, entries = 0.0, defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dupwatch_consumer_lag":
                lag += sample.value
            elif sample.name == "dupwatch_index_entries":
                entries[sample.labels["stage"]] += sample.value
    return {"lag": lag, "entries": max(entries.values(), default=0.0)}


def rss_mb(pid: int | None) -> float | None:
    """A process's resident memory, or None when it is gone."""
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kb = next((int(line.split()[1]) for line in status.splitlines()
               if line.startswith("VmRSS:")), None)  # none: exited, not yet reaped
    return None if kb is None else round(kb / 1024, 1)
