"""Faults: a worker killed mid-stream, a frozen broker, a broker port that refuses connections.

Delivery is at-least-once: after a fault some events may get a second verdict (and, since the
index lives in memory, possibly a different one). What must hold is that every event ends up
with a verdict or a dead letter (none lost), and that de-duplicating by image_id (dead letters
by key) leaves exactly one per event.
"""
from __future__ import annotations

import asyncio
import base64
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from dupwatch.errors import WorkerFailed
from dupwatch.schemas import ImageEvent, utc_now
from dupwatch.settings import Settings
from dupwatch.messaging.broker import EmbeddedBroker, free_port
from dupwatch.messaging.follow import TopicReader
from dupwatch.wiring.kafka import ensure_topics, kafka_publisher, topic_reader
from dupwatch.imaging.samples import Sample
from dupwatch.streams.worker_process import WorkerProcess


EVENTS = 150
RATE_PER_S = 25.0      # slow enough that the faults below land while events still flow
COLLECT_IDLE_S = 60.0  # generous: a worker that rejoins its group waits out the session timeout
# The SIGSTOP and refusal tests need a broker process of their own: they run only in the
# embedded-broker variant of the session fixture.
OWN_BROKER = pytest.mark.parametrize("bootstrap_servers", ["embedded"], indirect=True)


def _records(samples: list[Sample]) -> tuple[list[tuple[bytes, bytes]], set[str], set[str]]:
    """(key, value) to publish in order: EVENTS good events with distinct bytes (a suffix the
    decoder ignores) and three bad ones among them; and the good ids and the bad keys."""
    photos = [s.file.path.read_bytes() for s in samples]
    good = [ImageEvent(image_id=f"fault-{n}", tenant="shop", submitted_at=utc_now(),
                       data=photos[n % len(photos)] + b"\0fault-%d" % n) for n in range(EVENTS)]
    noise = bytes(np.random.default_rng(5).integers(0, 256, 2000, dtype=np.uint8))
    bad = [b"this is not json",
           ImageEvent(image_id="bad-noise", tenant="shop", data=noise).to_json(),
           b'{"image_id": "bad-b64", "tenant": "shop", "data": "%%%not-base64%%%"}']
    records = [(e.key, e.to_json()) for e in good]
    for number, value in enumerate(bad):  # early, middle and late in the stream
        records.insert((number + 1) * EVENTS // 4, (b"bad-%d" % number, value))
    return records, {e.image_id for e in good}, {f"bad-{n}" for n in range(len(bad))}


class _Trickle(threading.Thread):
    """Publishes records at a steady rate in the background, so a fault meets a live stream."""

    def __init__(self, settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.records = records
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            publisher = kafka_publisher(self.settings)
            started = time.monotonic()
            for number, (key, value) in enumerate(self.records):
                time.sleep(max(0.0, started + number / RATE_PER_S - time.monotonic()))
                publisher.publish_raw(value, key=key)
            publisher.close()  # waits until the broker has every record, across the fault
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread by finish()
            self.error = exc

    def finish(self) -> None:
        self.join(timeout=180)
        assert not self.is_alive(), "the publisher did not finish"
        if self.error is not None:
            raise self.error


@dataclass
class _Outcomes:
    verdicts: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    dead_letters: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))

    def read(self, reader: TopicReader, settings: Settings, until: int) -> None:
        """Read until ``until`` distinct events have an outcome, or COLLECT_IDLE_S of silence."""
        for record in reader.records(idle_timeout_s=COLLECT_IDLE_S):
            doc = record.document
            if record.topic == settings.verdict_topic:
                self.verdicts[doc["image_id"]].append(doc)
            else:
                self.dead_letters[base64.b64decode(doc["key"]).decode()].append(doc)
            if len(self.verdicts) + len(self.dead_letters) >= until:
                return

    def assert_exactly_once_after_dedupe(self, image_ids: set[str], bad_keys: set[str]) -> None:
        assert set(self.verdicts) == image_ids, (
            f"lost: {sorted(image_ids - set(self.verdicts))[:10]}, "
            f"unexpected: {sorted(set(self.verdicts) - image_ids)[:10]}")
        assert set(self.dead_letters) == bad_keys
        for image_id, docs in self.verdicts.items():
            assert all(doc["match_id"] != image_id for doc in docs), f"{image_id} matched itself"
        reasons = {key: {doc["reason"] for doc in docs} for key, docs in self.dead_letters.items()}
        assert reasons == {"bad-0": {"schema_invalid"}, "bad-1": {"decode_failed"},
                           "bad-2": {"invalid_base64"}}


def test_a_worker_killed_mid_stream_is_replaced_without_losing_events(
        stream_settings: Settings, worker_factory, samples) -> None:
    # Small batches, killed as soon as 30 outcomes are out while events still stream in: batches
    # are in flight and their offsets not yet committed (Faust commits every 2.8 s), so the
    # replacement gets some events a second time.
    settings = stream_settings.replace(batch_size=16)
    ensure_topics(settings)
    records, image_ids, bad_keys = _records(samples)
    outcomes = _Outcomes()
    with topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic]) as reader:
        first = worker_factory(settings, "first")
        first.wait_ready()
        trickle = _Trickle(settings, records)
        trickle.start()
        outcomes.read(reader, settings, until=30)
        first.kill()
        done_before_kill = len(outcomes.verdicts) + len(outcomes.dead_letters)
        assert first.process.returncode == -9
        assert done_before_kill < len(records), "the kill came after the last event"
        worker_factory(settings, "replacement")
        trickle.finish()
        outcomes.read(reader, settings, until=len(records))
    outcomes.assert_exactly_once_after_dedupe(image_ids, bad_keys)


def _stream_through(settings: Settings, worker_factory, samples: list[Sample],
                    fault: Callable[[], None]) -> None:
    """One worker under a steady trickle of events; ``fault()`` strikes once 20 of them have an
    outcome. Afterwards every event has exactly one outcome after de-duplication, and the
    worker is still running and shuts down cleanly."""
    ensure_topics(settings)
    records, image_ids, bad_keys = _records(samples)
    outcomes = _Outcomes()
    with topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic]) as reader:
        worker = worker_factory(settings)
        worker.wait_ready()
        trickle = _Trickle(settings, records)
        trickle.start()
        outcomes.read(reader, settings, until=20)
        fault()
        trickle.finish()
        outcomes.read(reader, settings, until=len(records))
        assert worker.process.poll() is None, "the worker exited"
        assert worker.stop() == 0  # and shuts down cleanly, while the broker is there
    outcomes.assert_exactly_once_after_dedupe(image_ids, bad_keys)


@OWN_BROKER
def test_a_worker_resumes_after_the_broker_was_frozen(
        stream_settings: Settings, worker_factory, samples) -> None:
    with EmbeddedBroker() as broker:
        def freeze_for_15_s() -> None:
            broker.pause()
            time.sleep(15)
            broker.resume()
        _stream_through(stream_settings.replace(bootstrap_servers=broker.bootstrap_servers),
                        worker_factory, samples, freeze_for_15_s)


class _RefusingProxy:
    """A TCP proxy on a fixed port that can stop listening and drop its connections, so
    clients see "connection refused" there until it listens again."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    def listen(self) -> None:
        self._call(self._listen())

    def refuse(self) -> None:
        self._call(self._refuse())

    def close(self) -> None:
        self.refuse()
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _call(self, coroutine) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port,
                                                  reuse_address=True)

    async def _refuse(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()  # the peer sees its connection reset

    async def _relay(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        pair = {client_writer, upstream_writer}
        self._writers |= pair
        try:
            await asyncio.gather(self._pump(client_reader, upstream_writer),
                                 self._pump(upstream_reader, client_writer))
        finally:
            self._writers -= pair
            for writer in pair:
                writer.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:  # the other side was reset: the finally in _relay closes both
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
def broker_behind_proxy() -> Iterator[_RefusingProxy]:
    """A broker that advertises the proxy's port, so clients reconnect through the proxy too."""
    proxy = _RefusingProxy(target_port=free_port())
    with EmbeddedBroker(port=proxy.target_port, advertised_port=proxy.port):
        proxy.listen()
        try:
            yield proxy
        finally:
            proxy.close()


@OWN_BROKER
def test_a_worker_reconnects_after_the_broker_port_refused_connections(
        stream_settings: Settings, worker_factory, samples, broker_behind_proxy) -> None:
    proxy = broker_behind_proxy

    def refuse_for_10_s() -> None:
        proxy.refuse()
        time.sleep(10)
        proxy.listen()
    _stream_through(stream_settings.replace(bootstrap_servers=f"127.0.0.1:{proxy.port}"),
                    worker_factory, samples, refuse_for_10_s)


HOOKED_WORKER = Path(__file__).parents[1] / "support" / "worker_with_fault_hook.py"


def test_a_dead_shard_thread_fails_the_health_check_and_the_worker_exits_70(
        stream_settings: Settings, tmp_path: Path) -> None:
    """Crash-only: the shard server's thread dying (here by a fault hook only tests reach) must
    not leave a worker that looks alive and answers nothing."""
    settings = stream_settings.replace(web_port=free_port(), worker_name="faulty")
    worker = WorkerProcess(settings, tmp_path / "worker.log",
                           command=lambda env: [sys.executable, str(HOOKED_WORKER), str(tmp_path)])
    with worker:
        worker.wait_ready()
        assert _health(settings) == (200, "alive")
        (tmp_path / "fail").touch()
        while (answer := _health(settings)) == (200, "alive"):
            time.sleep(0.05)
        assert answer is not None and answer[0] == 500 and "InjectedFault" in answer[1]
        (tmp_path / "stop").touch()  # the hook held the worker's stop until now
        exit_status = worker.process.wait(timeout=120)
    assert exit_status == WorkerFailed.exit_status
    assert "the shard server failed" in (tmp_path / "worker.log").read_text()


def _health(settings: Settings) -> tuple[int, str] | None:
    """/healthz's status and what it says; None once nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/healthz",
                                    timeout=2) as response:
            return response.status, json.loads(response.read())["status"]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()).get("reason", "")
    except OSError:
        return None
