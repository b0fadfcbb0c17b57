"""Hostile input against a running worker (a real broker, a real worker process, the full
cascade): what the issue 17 probe found, each case among good events of other tenants.

Each test publishes events of its own (unique ids and tenants) to the module's worker and reads
their outcomes from the verdict and dead-letter topics, keyed ``tenant/image_id``.
"""
from __future__ import annotations

import base64
import io
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from dupwatch.bench.hostile import scan_bomb
from dupwatch.schemas import ImageEvent, validate
from dupwatch.settings import Settings
from dupwatch.messaging.follow import Record
from dupwatch.wiring.kafka import ensure_topics, kafka_publisher, topic_reader
from dupwatch.imaging.samples import Sample
from dupwatch.streams.worker_process import WorkerProcess

SLOW_SOURCES = 128


class _Sources(BaseHTTPRequestHandler):
    """/held/N: headers and one byte of a 1000-byte body, then nothing until ``release`` is set
    (then the connection closes: the body is short); after release, 404 at once.
    /photo/N: a photo at once."""
    release = threading.Event()
    photos: list[bytes] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.startswith("/photo/"):
            self._send(200, self.photos[int(self.path.rsplit("/", 1)[1]) % len(self.photos)])
        elif self.release.is_set():
            self._send(404, b"")
        else:
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"\xff")
            self.wfile.flush()
            self.release.wait()

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Worker:
    """The module's worker, a publisher, and every outcome read so far by key."""

    def __init__(self, settings: Settings, source_url: str) -> None:
        self.settings = settings
        self.source_url = source_url
        self.publisher = kafka_publisher(settings)
        self.reader = topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic])
        self.outcomes: dict[str, list[Record]] = {}

    def publish(self, events: list[ImageEvent]) -> None:
        for event in events:
            self.publisher.publish(event)
        self.publisher.flush()

    def collect(self, keys: set[str], idle_timeout_s: float = 90) -> dict[str, dict]:
        """The first outcome of each key (tenant/image_id), reading until all have one or the
        topics stay silent for ``idle_timeout_s``; missing keys are left out."""
        if not keys <= set(self.outcomes):
            for record in self.reader.records(idle_timeout_s=idle_timeout_s):
                self.outcomes.setdefault(_key(record), []).append(record)
                if keys <= set(self.outcomes):
                    break
        return {key: self.outcomes[key][0].document for key in keys if key in self.outcomes}


def _key(record: Record) -> str:
    doc = record.document
    if "verdict" in doc:
        return f"{doc['tenant']}/{doc['image_id']}"
    return base64.b64decode(doc["key"]).decode()


@pytest.fixture(scope="module")
def worker(bootstrap_servers: str, tmp_path_factory, samples: list[Sample]) -> Iterator[_Worker]:
    _Sources.photos = [s.file.path.read_bytes() for s in samples]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sources)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    run = uuid.uuid4().hex[:8]
    settings = Settings().replace(
        bootstrap_servers=bootstrap_servers, input_topic=f"h{run}.images",
        verdict_topic=f"h{run}.verdicts", dead_letter_topic=f"h{run}.dead-letters",
        group_id=f"dupwatch-hostile-{run}", index_topic_prefix=f"h{run}.index",
        control_topic=f"h{run}.control", partitions=1, rebalance_timeout_s=6.0,
        session_timeout_s=6.0, worker_name="hostile-test", fetch_allow_hosts=["127.0.0.1"],
        fetch_allow_private_networks=["127.0.0.0/8"], fetch_retries=0,
        fetch_timeout_s=600.0)  # held sources end when a test releases them, never by timeout
    ensure_topics(settings)
    log = tmp_path_factory.mktemp("hostile") / "worker.log"
    with WorkerProcess(settings, log) as process:
        process.wait_ready()
        running = _Worker(settings, f"http://127.0.0.1:{server.server_address[1]}")
        try:
            yield running
        finally:
            _Sources.release.set()
            running.reader.close()
            running.publisher.close()
            server.shutdown()
            server.server_close()
            print(f"----- worker log\n{log.read_text()[-5000:]}")


def _photos(samples: list[Sample]) -> list[bytes]:
    return [s.file.path.read_bytes() for s in samples if s.role != "copy"]


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


# -- 1: decoding

def test_scan_bombs_of_one_tenant_cost_the_other_tenants_no_verdict(worker: _Worker, samples) -> None:
    """Five bombs (7000 x 7000, 3,000 scans: ~12 s of CPU each) among 120 good events of three
    other tenants. Today's main dead-lettered most of the good events as decode_timeout."""
    photos = _photos(samples)
    bomb = scan_bomb()
    good = [ImageEvent(image_id=f"photo-{n}", tenant=f"bombed-shop-{n % 3}",
                       data=photos[n % len(photos)] + b"\0bombed-%d" % n) for n in range(120)]
    bombs = [ImageEvent(image_id=f"bomb-{n}", tenant="mallory", data=bomb + b"%d" % n)
             for n in range(5)]
    events = list(good)
    for n, event in enumerate(bombs):  # early in the stream, ahead of most good events
        events.insert(n * 10, event)
    worker.publish(events)
    outcomes = worker.collect({f"{e.tenant}/{e.image_id}" for e in events})
    good_verdicts = [key for key, doc in outcomes.items()
                     if not key.startswith("mallory/") and "verdict" in doc]
    assert len(good_verdicts) == 120, {doc.get("reason") for doc in outcomes.values()}
    bomb_letters = [doc for key, doc in outcomes.items() if key.startswith("mallory/")]
    assert [doc["reason"] for doc in bomb_letters] == ["too_complex"] * 5
    assert all(validate("dead_letter", doc) == [] for doc in bomb_letters)


# -- 2: fetching

def test_slow_sources_never_hold_back_the_events_behind_them(worker: _Worker, samples) -> None:
    """128 slow-loris sources of one tenant, then 8 good events of another (half by URI): the
    good verdicts come while every slow source is still held open; released, the slow ones are
    dead-lettered. Today's main answered nothing until the slow fetches ended."""
    photos = _photos(samples)
    slow = [ImageEvent(image_id=f"held-{n}", tenant="slowloris", uri=f"{worker.source_url}/held/{n}")
            for n in range(SLOW_SOURCES)]
    late = [ImageEvent(image_id=f"late-{n}", tenant="patient-shop",
                       uri=f"{worker.source_url}/photo/{n}") if n % 2 else
            ImageEvent(image_id=f"late-{n}", tenant="patient-shop", data=photos[n] + b"\0late")
            for n in range(8)]
    worker.publish(slow + late)
    good = worker.collect({f"{e.tenant}/{e.image_id}" for e in late})
    assert sorted(good) == sorted(f"patient-shop/late-{n}" for n in range(8))
    assert all("verdict" in doc for doc in good.values()), good
    assert not any(key.startswith("slowloris/") for key in worker.outcomes)  # all still held
    _Sources.release.set()
    held = worker.collect({f"{e.tenant}/{e.image_id}" for e in slow})
    assert len(held) == SLOW_SOURCES
    assert {doc["reason"] for doc in held.values()} == {"fetch_failed"}


# -- 5, 6: parsing

@pytest.mark.parametrize("name, payload", [
    ("deep", b"[" * 200_000 + b"]" * 200_000),
    ("digits", b'{"image_id": "digits", "tenant": "probe", "data": "aW1n", "metadata": {"n": '
               + b"9" * 5000 + b"}}"),
    # a real picture each: today's main gave them verdicts with NaN / Infinity in them
    ("nan", b'{"image_id": "nan", "tenant": "probe", "data": "%s", "metadata": {"x": NaN}}'),
    ("infinity", b'{"image_id": "infinity", "tenant": "probe", "data": "%s", '
                 b'"metadata": {"x": 1e999}}'),
])
def test_hostile_json_is_schema_invalid_not_a_processing_failure(worker: _Worker, name: str,
                                                                 payload: bytes, samples) -> None:
    if b"%s" in payload:
        payload = payload.replace(b"%s", base64.b64encode(_photos(samples)[1] + name.encode()))
    worker.publisher.publish_raw(payload, key=f"probe/{name}".encode())
    worker.publisher.flush()
    outcome = worker.collect({f"probe/{name}"})[f"probe/{name}"]
    assert outcome.get("reason") == "schema_invalid", outcome


def test_every_verdict_is_strict_json(worker: _Worker, samples) -> None:
    photo = _photos(samples)[0]
    worker.publish([ImageEvent(image_id="numbers", tenant="strict", data=photo + b"\0strict",
                               metadata={"big": 10**60, "small": -1.5e-300, "zero": 0.0})])
    worker.collect({"strict/numbers"})
    verdicts = [r for records in worker.outcomes.values() for r in records if "verdict" in r.document]
    assert verdicts
    for record in verdicts:
        assert _strict_json(record.raw) == record.document


def _strict_json(raw: bytes) -> object:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a verdict: {raw[:200]!r}")
    return json.loads(raw, parse_constant=refuse)


# -- 7: MPO

def test_an_mpo_is_read_as_its_first_picture(worker: _Worker, samples) -> None:
    first, second = (Image.open(io.BytesIO(raw)).convert("RGB") for raw in _photos(samples)[2:4])
    mpo = _encode(first, "MPO", save_all=True, append_images=[second], quality=90)
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    events = [ImageEvent(image_id="camera.mpo", tenant="mpo", data=mpo),
              ImageEvent(image_id="first-again.jpg", tenant="mpo", data=_encode(first, "JPEG", quality=80)),
              ImageEvent(image_id="second.jpg", tenant="mpo", data=_encode(second, "JPEG", quality=80))]
    worker.publish(events)
    outcomes = worker.collect({f"mpo/{e.image_id}" for e in events})
    assert outcomes["mpo/camera.mpo"]["verdict"] == "unique", outcomes["mpo/camera.mpo"]
    assert (outcomes["mpo/first-again.jpg"]["verdict"],
            outcomes["mpo/first-again.jpg"]["match_id"]) == ("near_duplicate", "camera.mpo")
    assert outcomes["mpo/second.jpg"]["verdict"] == "unique"  # the second picture was never read


# -- 8: flat pictures

def test_flat_pictures_are_flagged_and_match_only_byte_for_byte(worker: _Worker, samples) -> None:
    colours = {"black": (0, 0, 0), "white": (255, 255, 255), "red": (220, 20, 20),
               "blue": (20, 40, 220), "grey": (128, 128, 128)}
    flat = {name: _encode(Image.new("RGB", (320, 240), rgb), "PNG") for name, rgb in colours.items()}
    events = [ImageEvent(image_id=name, tenant="flat", data=raw) for name, raw in flat.items()]
    events += [ImageEvent(image_id="black-copy", tenant="flat", data=flat["black"]),
               ImageEvent(image_id="red-as-jpeg", tenant="flat",
                          data=_encode(Image.new("RGB", (320, 240), colours["red"]), "JPEG")),
               ImageEvent(image_id="photo", tenant="flat", data=_photos(samples)[5])]
    worker.publish(events)
    outcomes = worker.collect({f"flat/{e.image_id}" for e in events})
    for name in colours:
        verdict = outcomes[f"flat/{name}"]
        assert (verdict["verdict"], verdict["flags"]) == ("unique", ["low_information"]), name
        assert validate("verdict", verdict) == []
    copy = outcomes["flat/black-copy"]
    assert (copy["verdict"], copy["match_id"], copy["flags"]) == (
        "exact_duplicate", "black", ["low_information"])
    assert outcomes["flat/red-as-jpeg"]["verdict"] == "unique"
    assert (outcomes["flat/photo"]["verdict"], outcomes["flat/photo"]["flags"]) == ("unique", [])


# -- 9: a reused image_id

def test_a_reused_image_id_is_new_content_not_a_redelivery(worker: _Worker, samples) -> None:
    a, b = _photos(samples)[6:8]
    steps = [("listing-1", a), ("listing-1", b), ("listing-1", b), ("copy-of-b", b),
             ("copy-of-a", a)]
    outcomes = []
    for image_id, raw in steps:  # one at a time: each step's outcome is its own record
        worker.publish([ImageEvent(image_id=image_id, tenant="reuse", data=raw)])
        key = f"reuse/{image_id}"
        worker.collect({key})
        outcomes.append(worker.outcomes.pop(key)[0].document)
    first, reused, redelivered, copy_of_b, copy_of_a = outcomes
    assert (first["verdict"], first["flags"]) == ("unique", [])
    assert (reused["verdict"], reused["flags"]) == ("unique", ["image_id_reused"])
    assert reused["timings_ms"].get("phash") is not None  # judged afresh, not replayed
    assert {k: redelivered[k] for k in ("verdict", "match_id", "flags")} == \
           {k: reused[k] for k in ("verdict", "match_id", "flags")}
    assert set(redelivered["timings_ms"]) == {"lookup"}  # replayed: a re-delivery
    assert (copy_of_b["verdict"], copy_of_b["match_id"]) == ("exact_duplicate", "listing-1")
    assert copy_of_a["verdict"] == "unique"  # the id's old content was replaced
