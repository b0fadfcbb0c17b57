"""The sharded index: real worker processes sharing one broker, each hosting some shards."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from PIL import Image

from dupwatch.wiring.cascade import build_cascade
from dupwatch.index import CandidateQuery, Entry, LocalStore, Lookup
from dupwatch.index.codec import decode_entry
from dupwatch.index.snapshot import MANIFEST
from dupwatch.schemas import ImageEvent
from dupwatch.settings import Settings
from dupwatch.messaging.follow import TopicReader
from dupwatch.wiring.kafka import ensure_topics, kafka_options, kafka_publisher, topic_reader
from dupwatch.messaging.kafka import ShardTopics, confluent_config
from dupwatch.wiring.worker import shard_client, shard_server
from dupwatch.messaging.publish import file_events
from dupwatch.imaging.samples import Sample, in_upload_order
from dupwatch.index.sharded import ShardServer, apply
from dupwatch.messaging.broker import free_port
from dupwatch.streams.worker_process import WorkerProcess

SHARDS = 3


def _sharded(settings: Settings, **changes) -> Settings:
    run = uuid.uuid4().hex[:8]
    return settings.replace(**{"shards": SHARDS, "partitions": 3,
                               "index_topic_prefix": f"t{run}.index",
                               "control_topic": f"t{run}.control", "snapshot_interval_s": 2.0,
                               "lookup_retry_s": 3.0, **changes})


def _start_workers(worker_factory, settings: Settings, tmp_path: Path, names: list[str]
                   ) -> dict[str, WorkerProcess]:
    return {name: worker_factory(settings.replace(worker_name=name,
                                                  state_dir=str(tmp_path / f"state-{name}")), name)
            for name in names}


def _wait_ready(workers) -> None:
    for worker in workers:
        worker.wait_ready()


def _publish(settings: Settings, events: list[ImageEvent]) -> None:
    publisher = kafka_publisher(settings)
    for event in events:
        publisher.publish(event)
    publisher.close()


def _verdicts(reader: TopicReader, count: int) -> list[dict]:
    records = list(reader.records(max_records=count, idle_timeout_s=120))
    assert len(records) == count, f"{count - len(records)} events got no verdict"
    return [record.document for record in records]


def _events(samples: list[Sample], tenant: str) -> list[ImageEvent]:
    return list(file_events([s.file for s in samples], tenant))


@dataclass
class Cluster:
    settings: Settings
    workers: dict[str, WorkerProcess]
    reader: TopicReader
    first_wave: dict[str, dict]    # image_id -> verdict
    second_wave: dict[str, dict]


@pytest.fixture(scope="module")
def cluster(bootstrap_servers: str, tmp_path_factory, samples) -> Iterator[Cluster]:
    """Three workers; originals in wave 1, their copies (and another tenant) in wave 2.
    Shared by the tests below, which only add to what it holds."""
    scratch = tmp_path_factory.mktemp("cluster")
    run = uuid.uuid4().hex[:8]
    settings = _sharded(Settings().replace(
        bootstrap_servers=bootstrap_servers, input_topic=f"c{run}.images",
        verdict_topic=f"c{run}.verdicts", dead_letter_topic=f"c{run}.dead-letters",
        group_id=f"dupwatch-cluster-{run}", rebalance_timeout_s=6.0, session_timeout_s=6.0))
    ensure_topics(settings)
    workers = {name: WorkerProcess(settings.replace(
        worker_name=name, web_port=free_port(), state_dir=str(scratch / f"state-{name}")),
        scratch / f"{name}.log").start() for name in ("w0", "w1", "w2")}
    try:
        _wait_ready(workers.values())
        first, second = in_upload_order(samples)
        with topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic]) as reader:
            _publish(settings, _events(first, "shop"))
            first_wave = {v["image_id"]: v for v in _verdicts(reader, len(first))}
            _publish(settings, _events(second, "shop") + _events(first[:1], "other"))
            second_wave = {f"{v['tenant']}/{v['image_id']}": v
                           for v in _verdicts(reader, len(second) + 1)}
            yield Cluster(settings, workers, reader, first_wave, second_wave)
    finally:
        for worker in workers.values():
            worker.stop()


def test_copies_are_found_across_workers_and_tenants_never_mix(cluster: Cluster, samples,
                                                               original_of) -> None:
    first, second = in_upload_order(samples)
    assert all(v["verdict"] == "unique" for v in cluster.first_wave.values())
    assert len(cluster.second_wave) == len(second) + 1  # one verdict each
    for sample in second:
        verdict = cluster.second_wave[f"shop/{sample.file.image_id}"]
        assert verdict["verdict"] == sample.expected_verdict, sample.file.image_id
        if sample.expected_verdict != "unique":
            assert original_of[verdict["match_id"]] == sample.source, sample.file.image_id
    # the same bytes in another tenant: unique, whatever the shop tenant holds
    other = cluster.second_wave[f"other/{first[0].file.image_id}"]
    assert other["verdict"] == "unique" and other["match_id"] is None
    # Copies were judged by other workers than their originals: the index is shared.
    # (a copy may match an earlier copy of its original: look up whoever checked the match)
    checked = {**cluster.first_wave, **{key.removeprefix("shop/"): v
                                        for key, v in cluster.second_wave.items()}}
    crossed = [image_id for image_id, v in cluster.second_wave.items() if v["match_id"]
               and checked[v["match_id"]]["worker"] != v["worker"]]
    assert crossed, "no copy was checked by a worker other than its original's"


def test_a_redelivered_event_gets_the_same_verdict(cluster: Cluster, samples) -> None:
    first, second = in_upload_order(samples)
    again = [s for s in second if s.expected_verdict != "unique"
             and s.source != first[0].file.image_id][:4]  # not the family taken down below
    _publish(cluster.settings, _events(again, "shop"))
    for verdict in _verdicts(cluster.reader, len(again)):
        first = cluster.second_wave[f"shop/{verdict['image_id']}"]
        same = ("verdict", "match_id", "stage", "score", "distance")
        assert {k: verdict[k] for k in same} == {k: first[k] for k in same}
        assert verdict["match_id"] != verdict["image_id"]


def test_a_takedown_removes_an_image_from_every_shard(cluster: Cluster, samples) -> None:
    first, second = in_upload_order(samples)
    original = first[0]
    family = [original.file.image_id] + [s.file.image_id for s in second
                                         if s.source == original.file.image_id]
    subprocess.run([sys.executable, "-m", "dupwatch", "remove", "--tenant", "shop", *family],
                   env={**os.environ, **cluster.settings.to_env()}, check=True, timeout=60,
                   capture_output=True)
    _wait_for_tombstones(cluster.settings, "shop", family)
    copy = ImageEvent(image_id="after-takedown.jpg", tenant="shop",
                      data=original.file.path.read_bytes())
    _publish(cluster.settings, [copy])
    [verdict] = _verdicts(cluster.reader, 1)
    assert verdict["verdict"] == "unique", verdict


def _wait_for_tombstones(settings: Settings, tenant: str, image_ids: list[str]) -> None:
    wanted = {f"{tenant}/{image_id}" for image_id in image_ids}
    deadline = time.monotonic() + 60
    while wanted:
        assert time.monotonic() < deadline, f"no tombstones for {sorted(wanted)}"
        wanted -= {key for key, value in _changelog(settings) if value is None}
        time.sleep(0.5)


def _changelog(settings: Settings) -> list[tuple[str, bytes | None]]:
    """(key, value) of every changelog record so far, in every partition."""
    return [(m.key().decode(), m.value())
            for m in _read_changelog(settings, list(range(settings.shards)))]


def _read_changelog(settings: Settings, partitions: list[int]) -> Iterator[Message]:
    """Every record of these changelog partitions, up to their ends as they are now (as fetches
    report them: Tansu's offset list can stop short of a batch's last record)."""
    topic = ShardTopics.of(settings.index_topic_prefix).changelog
    consumer = Consumer(confluent_config(kafka_options(settings), **{"group.id": "test-changelog",
                                                      "enable.auto.commit": False,
                                                      "enable.partition.eof": True}))
    for partition in partitions:
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        at_end = False
        while not at_end:
            for message in consumer.consume(500, timeout=1):
                if message.error() is None:
                    yield message
                elif message.error().code() == KafkaError._PARTITION_EOF:
                    at_end = True
    consumer.close()


def _changelog_end(settings: Settings, shard: int) -> int:
    return max((m.offset() + 1 for m in _read_changelog(settings, [shard])), default=0)


def test_bank_mode_checks_against_the_bank_and_never_indexes(
        stream_settings: Settings, worker_factory, tmp_path: Path, samples) -> None:
    settings = _sharded(stream_settings, match_only_tenants=["mod"])
    ensure_topics(settings)
    workers = _start_workers(worker_factory, settings, tmp_path, ["b0", "b1"])
    first, second = in_upload_order(samples)
    originals = [s for s in first if s.role == "original"]
    subprocess.run([sys.executable, "-m", "dupwatch", "bank", "add", "--tenant", "mod",
                    *[str(s.file.path) for s in originals]],
                   env={**os.environ, **settings.to_env()}, check=True, timeout=60,
                   capture_output=True)
    deadline = time.monotonic() + 120
    while len({key for key, value in _changelog(settings) if value}) < len(originals):
        assert time.monotonic() < deadline, "the bank was never loaded"
        time.sleep(0.5)
    _wait_ready(workers.values())
    exact = [s for s in second if s.transform == "exact"]
    # The same upload twice under two ids: the second matches the bank, not the first upload.
    uploads = [ImageEvent(f"upload-{n}-{s.file.image_id}", "mod", s.file.path.read_bytes())
               for n in (1, 2) for s in exact]
    with topic_reader(settings, [settings.verdict_topic]) as reader:
        _publish(settings, uploads)
        verdicts = _verdicts(reader, len(uploads))
    for verdict in verdicts:
        source = next(s.source for s in exact if verdict["image_id"].endswith(s.file.image_id))
        assert verdict["verdict"] == "exact_duplicate"
        assert Path(verdict["match_id"]).name == Path(source).name  # a bank image
    assert not any(key.startswith("mod/upload-") for key, _ in _changelog(settings))


def test_a_killed_worker_loses_nothing_and_its_shards_are_rebuilt(
        stream_settings: Settings, worker_factory, tmp_path: Path, samples) -> None:
    settings = _sharded(stream_settings)
    ensure_topics(settings)
    workers = _start_workers(worker_factory, settings, tmp_path, ["k0", "k1", "k2"])
    _wait_ready(workers.values())
    events = _distinct_events(samples, 90)
    with topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic]) as reader:
        _publish(settings, events[:45])
        seen = [r.document for r in reader.records(max_records=15, idle_timeout_s=120)]
        workers["k0"].kill()  # SIGKILL, in the middle of the stream
        _publish(settings, events[45:])
        wanted = {e.image_id for e in events}
        for record in reader.records(idle_timeout_s=90):
            seen.append(record.document)
            if wanted <= {v["image_id"] for v in seen}:
                break
        # re-deliveries still on their way (the killed worker's last batch)
        seen += [r.document for r in reader.records(idle_timeout_s=5)]
    by_id: dict[str, list[dict]] = {}
    for verdict in seen:
        by_id.setdefault(verdict["image_id"], []).append(verdict)
    assert set(by_id) == {e.image_id for e in events}, "events without a verdict"
    assert all(v["match_id"] != v["image_id"] for v in seen), "a self-match"
    # Re-deliveries of an indexed image repeat its verdict.
    for verdicts in by_id.values():
        assert len({(v["verdict"], v["match_id"]) for v in verdicts}) == 1, verdicts
    # The survivors stop one after the other, the second while the group is still rebalancing
    # after the first has left: each leaves only once the shard group has settled (leaving
    # in the middle of a rebalance wedges a Tansu group for good). Then the replacement joins
    # alone and is given every shard.
    workers["k1"].stop()
    workers["k2"].stop()
    replacement = worker_factory(settings.replace(worker_name="k3",
                                                  state_dir=str(tmp_path / "state-k3")), "k3")
    _wait_ready([replacement])
    # Its periodic snapshots (every 2 s) show each shard once it has applied the whole
    # changelog partition.
    snapshots = _caught_up_snapshots(tmp_path / "state-k3", settings)
    for shard, snapshot in snapshots.items():
        difference = _difference_from_rebuild(_restored(snapshot), settings, shard)
        assert difference is None, f"shard {shard}: {difference}"


def _caught_up_snapshots(state_dir: Path, settings: Settings) -> dict[int, Path]:
    """Wait until ``state_dir`` has a snapshot of every shard at its changelog's end."""
    ends = {shard: _changelog_end(settings, shard) for shard in range(settings.shards)}
    deadline = time.monotonic() + 120
    while True:
        offsets = {}
        for shard in ends:
            saved = state_dir / "shards" / str(shard) / MANIFEST
            try:
                offsets[shard] = json.loads(saved.read_text())["meta"]["next_offset"]
            except (OSError, ValueError):  # not written yet, or swapped in right now
                offsets[shard] = None
        if offsets == ends:
            return {shard: state_dir / "shards" / str(shard) for shard in ends}
        assert time.monotonic() < deadline, f"snapshots at {offsets}, changelog ends {ends}"
        time.sleep(0.5)


def _distinct_events(samples: list[Sample], count: int) -> list[ImageEvent]:
    """Distinct uploads: each photo at several sizes (copies of one another, to the cascade)."""
    photos = [s for s in samples if s.role != "copy"]
    events = []
    for number in range(count):
        sample = photos[number % len(photos)]
        image = Image.open(sample.file.path).convert("RGB")
        side = 120 + 8 * (number // len(photos))
        image.thumbnail((side, side))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        events.append(ImageEvent(f"e{number:03d}.jpg", "shop", buffer.getvalue()))
    return events


def _new_store(settings: Settings) -> LocalStore:
    return build_cascade(settings.replace(state_dir="")).new_local_store()


def _restored(snapshot: Path) -> LocalStore:
    store = _new_store(Settings())
    store.load(snapshot)
    return store


def _difference_from_rebuild(restored: LocalStore, settings: Settings, shard: int) -> str | None:
    """How a shard differs from one rebuilt by applying its whole changelog partition from the
    start (None: the same images with the same records, and the same answers to every stored
    image's lookup)."""
    rebuilt = _new_store(settings)
    messages = list(_read_changelog(settings, [shard]))
    for message in messages:
        apply(rebuilt, [(message.key(), message.value())])  # one at a time: the reference for the batched shards
    if restored.size() != rebuilt.size():
        return f"sizes {restored.size()} != rebuilt {rebuilt.size()}"
    queries = _lookups_of([decode_entry(m.key(), m.value()) for m in messages
                           if m.value() is not None], settings)
    differing = [query.image_id for query, a, b in zip(queries, restored.lookup(queries, 8),
                                                       rebuilt.lookup(queries, 8)) if a != b]
    return f"lookups differ for {differing[:5]}" if differing else None


def _lookups_of(entries: list[Entry], settings: Settings) -> list[Lookup]:
    """Each stored image looked up with its own signals; a verifying stage (which checks named
    candidates) checks it against every image of its tenant."""
    verifying = {stage.name for stage in build_cascade(settings).stages if stage.verifies}
    by_tenant: dict[str, list[str]] = {}
    for entry in entries:
        by_tenant.setdefault(entry.tenant, []).append(entry.image_id)
    return [Lookup(e.tenant, e.image_id, {
        name: CandidateQuery(signal, tuple(by_tenant[e.tenant])) if name in verifying else signal
        for name, signal in e.signals.items()}) for e in entries]


def test_a_snapshot_plus_the_changelog_tail_equals_a_full_rebuild(
        stream_settings: Settings, tmp_path: Path, samples, caplog) -> None:
    """A shard restored from an older snapshot and the updates after it (adds and takedowns)
    answers exactly like one rebuilt from the whole changelog."""
    settings = _sharded(stream_settings, shards=1)
    ensure_topics(settings)
    cascade = build_cascade(settings)
    cascade.store = shard_client(settings)
    first, second = in_upload_order(samples)
    with _hosting(settings, tmp_path / "snapshots"):  # indexes wave 1, snapshots it at stop
        cascade.check_batch(_items(cascade, first))
        cascade.store.lookup([Lookup("shop", "any", {})], 1)  # answered once wave 1 is applied
    with _hosting(settings, tmp_path / "elsewhere"):  # the tail: wave 2 and a takedown
        cascade.check_batch(_items(cascade, second))
        cascade.store.remove("shop", [first[0].file.image_id, second[0].file.image_id])
    caplog.set_level("INFO", logger="dupwatch.index.sharded")
    with _hosting(settings, tmp_path / "snapshots"):  # restores from the first snapshot
        pass
    assert f"rebuilding shard 0 from offset {len(first)} to" in caplog.text
    # a routine recovery is news, not a warning: warnings are for what needs a look
    assert [r.getMessage() for r in caplog.records
            if r.name == "dupwatch.index.sharded" and r.levelname != "INFO"] == []
    restored = _restored(tmp_path / "snapshots" / "shards" / "0")
    assert restored.size()["sha256"]["shop"] == len(first) + len(second) - 2
    assert _difference_from_rebuild(restored, settings, 0) is None


@contextmanager
def _hosting(settings: Settings, state_dir: Path) -> Iterator[ShardServer]:
    """A shard server in this process, hosting every shard once it has caught up."""
    server = shard_server(settings.replace(state_dir=str(state_dir)),
                          build_cascade(settings).new_local_store).start()
    deadline = time.monotonic() + 60
    while not (server.ready and len(server.hosted()) == settings.shards):
        assert time.monotonic() < deadline, "the shard server never caught up"
        time.sleep(0.2)
    try:
        yield server
    finally:
        server.stop()


def _items(cascade, samples: list[Sample]) -> list:
    return [("shop", s.file.image_id, cascade.image(s.file.path.read_bytes())) for s in samples]
