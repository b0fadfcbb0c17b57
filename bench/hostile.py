"""`dupwatch bench hostile`: what hostile input costs the other tenants of a running worker.

Scenarios, each on an embedded broker with one worker process:

- ``bombs``: 120 good events of three tenants with 5 scan bombs of a fourth among them
  (:func:`scan_bomb`), published at once; run without bombs (baseline), with them (refused from
  their markers), and with the marker check off (``--max-jpeg-scans 0``: the decode processes
  run each bomb until its time budget and are killed). Reports, per run, how many good events
  got a verdict and how much later the slowest came than in the baseline; the goal is 120/120
  and no more than one decode budget (``decode_timeout_ms``) later.
- ``slow``: 128 events whose URIs point at slow-loris servers (headers, then a byte a second),
  then 8 good events of another tenant (4 inline, 4 by URI to a fast server). Reports how long
  after their publication the good verdicts came (goal: within 2 s) and when the slow events
  were dead-lettered (their own fetch_timeout_s).
- ``scan``: `dupwatch scan` (full cascade, model load included) of 20 photos with 5 scan bombs
  among them, timed.

Each worker first gets 20 warm-up events, so no measurement pays for its start.
"""
from __future__ import annotations

import base64
import io
import struct
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

from PIL import Image

from dupwatch.bench.report import machine, write_results
from dupwatch.imaging import jpeg
from dupwatch.errors import UserError
from dupwatch.schemas import ImageEvent, utc_now
from dupwatch.settings import Settings
from dupwatch.messaging.broker import EmbeddedBroker, free_port
from dupwatch.messaging.follow import TopicReader
from dupwatch.wiring.kafka import ensure_topics, kafka_publisher, topic_reader
from dupwatch.locations import samples_dir
from dupwatch.imaging.files import image_files
from dupwatch.streams.worker_process import WorkerProcess

SCENARIOS = ("bombs", "slow", "scan")
GOOD_EVENTS, BOMBS = 120, 5
SLOW_SOURCES, LATE_GOOD = 128, 8


def scan_bomb(side: int = 7000, scans: int = 3000) -> bytes:
    """A valid progressive JPEG that repeats one of its AC scans ``scans`` times.

    Pillow writes a progressive JPEG of a smooth picture; then, by byte surgery on its markers,
    the first AC scan (SOS header and entropy-coded data: about 75 bytes) is repeated after
    itself. Decoders accept the repeats (libjpeg warns, then decodes each one), and each costs a
    pass over every block of the picture, so thousands of repeats in a few hundred KB cost
    seconds of CPU, even at 1/8 scale (measured: docs/benchmarks.md, "Hostile input").
    """
    picture = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", progressive=True, quality=90)
    raw = buffer.getvalue()
    start, end = _first_ac_scan(raw)
    return raw[:end] + raw[start:end] * scans + raw[end:]


def _first_ac_scan(raw: bytes) -> tuple[int, int]:
    """Where the first scan of AC coefficients (spectral start > 0) starts and ends."""
    pos = 2
    while raw[pos + 1] != 0xDA or raw[pos + 5 + 2 * raw[pos + 4]] == 0:  # SOS with Ss > 0
        pos = _next_marker(raw, pos)
    return pos, _next_marker(raw, pos)


def _next_marker(raw: bytes, pos: int) -> int:
    """The marker after the segment (and, for a scan, the entropy-coded data) at ``pos``."""
    end = pos + 2 + struct.unpack_from(">H", raw, pos + 2)[0]
    if raw[pos + 1] != 0xDA:
        return end
    return jpeg.end_of_scan_data(raw, end)


def run_hostile_bench(settings: Settings, scenarios: list[str], out: str) -> int:
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise UserError(f"unknown scenarios {sorted(unknown)} "
                         f"(choose from {', '.join(SCENARIOS)})")
    photos = [f.path.read_bytes() for f in image_files([str(samples_dir())])]
    results: dict = {"benchmark": "hostile", "machine": machine(),
                     "decode_timeout_ms": settings.decode_timeout_ms,
                     "fetch_timeout_s": settings.fetch_timeout_s}
    rows: list[tuple[str, str]] = []
    if "bombs" in scenarios:
        results["bombs"] = _bombs(settings, photos)
        rows += [(f"bombs: {name}", _bomb_row(run)) for name, run in results["bombs"].items()]
    if "slow" in scenarios:
        results["slow"] = slow = _slow_sources(settings, photos)
        rows.append(("slow sources: good verdicts after publication",
                     f"{slow['good_verdicts']}/{LATE_GOOD}, latest {slow['good_latest_s']} s "
                     f"(goal <= 2 s); {SLOW_SOURCES} slow events dead-lettered "
                     f"{slow['slow_dead_letters']}, after {slow['slow_first_s']}-"
                     f"{slow['slow_last_s']} s"))
    if "scan" in scenarios:
        results["scan"] = scan = _scan(photos)
        rows.append(("dupwatch scan: 20 photos + 5 bombs",
                     f"{scan['seconds']} s, exit {scan['exit_code']}, "
                     f"{scan['rejected']} rejected ({', '.join(scan['reasons'])})"))
    write_results(out, results, rows)
    return 0


def _bomb_row(run: dict) -> str:
    text = f"{run['good_verdicts']}/{GOOD_EVENTS} good verdicts, latest {run['good_latest_s']} s"
    if "later_than_baseline_s" in run:
        text += f" ({run['later_than_baseline_s']:+} s against the baseline)"
    if run.get("bomb_reasons"):
        text += f"; bombs: {run['bomb_reasons']}"
    return text


# -- scan bombs among good events

def _bombs(settings: Settings, photos: list[bytes]) -> dict:
    bomb = scan_bomb()
    good = [ImageEvent(image_id=f"good-{n}", tenant=f"shop-{n % 3}",
                       data=photos[n % len(photos)] + b"\0bench-%d" % n) for n in range(GOOD_EVENTS)]

    def with_bombs(tag: str) -> list[ImageEvent]:
        events = [ImageEvent(image_id=f"{tag}-{e.image_id}", tenant=e.tenant, data=e.data + tag.encode())
                  for e in good]
        for n in range(BOMBS):  # spread over the stream
            events.insert(n * (GOOD_EVENTS // BOMBS) + n, ImageEvent(
                image_id=f"{tag}-bomb-{n}", tenant="mallory", data=bomb + b"%d" % n))
        return events

    runs = {}
    print("bombs: baseline, then bombs refused from their markers", file=sys.stderr)
    with _worker(settings) as stream:
        stream.warm_up(photos)
        runs["baseline, no bombs"] = _measure(stream, [ImageEvent(
            image_id=f"base-{e.image_id}", tenant=e.tenant, data=e.data + b"base") for e in good])
        runs["5 bombs, marker check on"] = _measure(stream, with_bombs("checked"))
    print("bombs: marker check off, decodes stopped at their budget", file=sys.stderr)
    with _worker(settings.replace(max_jpeg_scans=0)) as stream:
        stream.warm_up(photos)
        runs["5 bombs, marker check off"] = _measure(stream, with_bombs("unchecked"))
    baseline = runs["baseline, no bombs"]["good_latest_s"]
    for name, run in runs.items():
        if name != "baseline, no bombs":
            run["later_than_baseline_s"] = round(run["good_latest_s"] - baseline, 2)
    return runs


def _measure(stream: "_Stream", events: list[ImageEvent]) -> dict:
    published = stream.publish(events)
    outcomes = stream.collect(len(events))
    good = [e for e in events if e.tenant != "mallory"]
    latencies = [outcomes[e.image_id][1] - published for e in good if e.image_id in outcomes
                 and outcomes[e.image_id][0] == "verdict"]
    reasons: dict[str, int] = {}
    for e in events:
        if e.tenant == "mallory" and e.image_id in outcomes:
            reasons[outcomes[e.image_id][0]] = reasons.get(outcomes[e.image_id][0], 0) + 1
    return {"good_verdicts": len(latencies), "good_latest_s": round(max(latencies, default=0), 2),
            "bomb_reasons": reasons}


# -- slow-loris sources before good events

class _Sources(BaseHTTPRequestHandler):
    """/slow: headers, then a byte a second; /photo/N: a photo at once."""
    photos: list[bytes] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.startswith("/photo/"):
            body = self.photos[int(self.path.rsplit("/", 1)[1]) % len(self.photos)]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(100_000):
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(1.0)
        except OSError:  # the worker gave up on us, as it should
            pass

    def log_message(self, *args: object) -> None:
        pass


def _slow_sources(settings: Settings, photos: list[bytes]) -> dict:
    _Sources.photos = photos
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sources)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    slow = [ImageEvent(image_id=f"slow-{n}", tenant="slowloris", uri=f"{base}/slow?{n}")
            for n in range(SLOW_SOURCES)]
    late = [ImageEvent(image_id=f"late-{n}", tenant="shop", data=photos[n] + b"\0late")
            if n % 2 else ImageEvent(image_id=f"late-{n}", tenant="shop", uri=f"{base}/photo/{n}")
            for n in range(LATE_GOOD)]
    print(f"slow sources: {SLOW_SOURCES} slow-loris URIs, then {LATE_GOOD} good events",
          file=sys.stderr)
    try:
        with _worker(settings.replace(fetch_allow_hosts=["127.0.0.1"],
                                      fetch_allow_private_networks=["127.0.0.0/8"])) as stream:
            stream.warm_up(photos)
            stream.publish(slow)
            published = stream.publish(late)
            outcomes = stream.collect(len(slow) + len(late))
    finally:
        server.shutdown()
        server.server_close()
    good = [outcomes[e.image_id][1] - published for e in late
            if outcomes.get(e.image_id, ("",))[0] == "verdict"]
    dead = [outcomes[e.image_id][1] - published for e in slow
            if outcomes.get(e.image_id, ("",))[0] == "fetch_failed"]
    return {"good_verdicts": len(good), "good_latest_s": round(max(good, default=0), 2),
            "slow_dead_letters": len(dead), "slow_first_s": round(min(dead, default=0), 1),
            "slow_last_s": round(max(dead, default=0), 1)}


# -- dupwatch scan

def _scan(photos: list[bytes]) -> dict:
    bomb = scan_bomb()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for n in range(20):
            (folder / f"photo-{n:02d}.jpg").write_bytes(photos[n % len(photos)] + b"\0%d" % n)
        for n in range(BOMBS):
            (folder / f"photo-{4 * n + 1:02d}-bomb.jpg").write_bytes(bomb + b"%d" % n)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "dupwatch", "scan", str(folder)],
                              capture_output=True, text=True)
        seconds = time.monotonic() - started
    lines = [line for line in done.stdout.splitlines() if '"reason"' in line]
    reasons = sorted({line.split('"reason":"')[1].split('"')[0] for line in lines})
    return {"seconds": round(seconds, 1), "exit_code": done.returncode, "rejected": len(lines),
            "reasons": reasons}


# -- one worker on a fresh broker

class _Stream:
    def __init__(self, settings: Settings, reader: TopicReader) -> None:
        self.settings = settings
        self.reader = reader
        self.publisher = kafka_publisher(settings)

    def warm_up(self, photos: list[bytes]) -> None:
        """A first batch through the worker (its decode processes, the model's first pass), so
        that no measurement pays for starting them."""
        self.publish([ImageEvent(image_id=f"warm-{n}", tenant="warm-up", data=photo + b"\0warm")
                      for n, photo in enumerate(photos[:20])])
        self.collect(min(20, len(photos)))

    def publish(self, events: list[ImageEvent]) -> float:
        started = time.time()
        for event in events:
            self.publisher.publish(ImageEvent(**{**event.__dict__, "submitted_at": utc_now()}))
        self.publisher.flush()
        return started

    def collect(self, count: int) -> dict[str, tuple[str, float]]:
        """image_id -> ("verdict" or the dead letter's reason, when it arrived)."""
        outcomes = {}
        for record in self.reader.records(max_records=count, idle_timeout_s=120):
            doc = record.document
            image_id = doc.get("image_id") or base64.b64decode(doc["key"]).decode().split("/")[-1]
            outcomes[image_id] = (doc.get("reason", "verdict"), record.received_at)
        return outcomes


@contextmanager
def _worker(settings: Settings) -> Iterator[_Stream]:
    """A fresh embedded broker and one ready worker on it, with a reader of its outcomes."""
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as scratch:
        settings = settings.replace(
            bootstrap_servers=broker.bootstrap_servers, group_id="dupwatch-bench-hostile",
            partitions=1, rebalance_timeout_s=6.0, session_timeout_s=6.0, state_dir="",
            web_port=free_port(), worker_name="bench-hostile")
        ensure_topics(settings)
        with WorkerProcess(settings, Path(scratch) / "worker.log") as worker, \
                topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic]) as reader:
            worker.wait_ready()
            stream = _Stream(settings, reader)
            try:
                yield stream
            finally:
                stream.publisher.close()
