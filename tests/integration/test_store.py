"""Issue 13: one durable store. Workers with default settings (changelog-backed shards, all of
them hosted by a lone worker) lose nothing to a SIGKILL and find copies whichever worker gets
them; a damaged shard snapshot is rebuilt from the changelog, never served."""
from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from dupwatch.index.snapshot import MANIFEST
from dupwatch.schemas import ImageEvent
from dupwatch.settings import Settings
from dupwatch.messaging.follow import TopicReader
from dupwatch.wiring.kafka import ensure_topics, kafka_publisher, topic_reader
from dupwatch.messaging.publish import file_events
from dupwatch.imaging.samples import Sample, in_upload_order


def _publish(settings: Settings, events: list[ImageEvent]) -> None:
    publisher = kafka_publisher(settings)
    for event in events:
        publisher.publish(event)
    publisher.close()


def _events(samples: list[Sample]) -> list[ImageEvent]:
    return list(file_events([s.file for s in samples], "shop"))


def _verdicts(reader: TopicReader, events: list[ImageEvent]) -> dict[str, dict]:
    """The verdicts of these events, by image id. Re-deliveries of events from before a kill
    (processed, not yet committed) may come in between: they are skipped."""
    wanted, got = {e.image_id for e in events}, {}
    for record in reader.records(idle_timeout_s=180):
        if record.document["image_id"] in wanted:
            got[record.document["image_id"]] = record.document
        if set(got) == wanted:
            break
    assert set(got) == wanted, f"no verdict for {sorted(wanted - set(got))}"
    return got


def _assert_copies_found(second: list[Sample], verdicts: dict[str, dict]) -> None:
    """Every copy matches its original or an earlier copy of it, and every original with
    copies is matched directly by one of them (its first copy had nothing else to match)."""
    original_of = {s.file.image_id: s.source for s in second}
    directly_matched, copied = set(), set()
    for sample in second:
        verdict = verdicts[sample.file.image_id]
        assert verdict["verdict"] == sample.expected_verdict, (sample.file.image_id, verdict)
        if sample.expected_verdict != "unique":
            match = verdict["match_id"]
            assert original_of.get(match, match) == sample.source, sample.file.image_id
            copied.add(sample.source)
            if match == sample.source:
                directly_matched.add(match)
    assert directly_matched == copied


def test_a_default_worker_killed_after_its_verdicts_loses_nothing(
        stream_settings: Settings, worker_factory, samples) -> None:
    settings = stream_settings  # default store settings: 8 shards, no state_dir
    assert settings.shards == Settings().shards > 0 and not settings.state_dir
    ensure_topics(settings)
    first, second = in_upload_order(samples)
    with topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic]) as reader:
        worker = worker_factory(settings, "before")
        worker.wait_ready(timeout_s=300)
        _publish(settings, _events(first))
        assert all(v["verdict"] == "unique" for v in _verdicts(reader, _events(first)).values())
        worker.kill()  # SIGKILL: no orderly stop, no snapshot
        worker_factory(settings, "after").wait_ready(timeout_s=300)
        _publish(settings, _events(second))
        _assert_copies_found(second, _verdicts(reader, _events(second)))


def test_two_default_workers_find_a_copy_whichever_gets_it(
        stream_settings: Settings, worker_factory, samples) -> None:
    settings = stream_settings
    ensure_topics(settings)
    workers = [worker_factory(settings.replace(worker_name=f"pair-{n}"), f"pair-{n}")
               for n in range(2)]
    for worker in workers:
        worker.wait_ready(timeout_s=300)
    first, second = in_upload_order(samples)
    with topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic]) as reader:
        _publish(settings, _events(first))
        originals = _verdicts(reader, _events(first))
        _publish(settings, _events(second))
        copies = _verdicts(reader, _events(second))
    _assert_copies_found(second, copies)
    checked = {**originals, **copies}
    crossed = [image_id for image_id, v in copies.items()
               if v["match_id"] and checked[v["match_id"]]["worker"] != v["worker"]]
    assert crossed, "no copy was checked by another worker than its original's"


def test_a_damaged_shard_snapshot_is_rebuilt_from_the_changelog(
        stream_settings: Settings, worker_factory, samples, tmp_path: Path) -> None:
    state = tmp_path / "state"
    settings = stream_settings.replace(state_dir=str(state))
    ensure_topics(settings)
    first, second = in_upload_order(samples)
    with topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic]) as reader:
        worker = worker_factory(settings, "first")
        worker.wait_ready(timeout_s=300)
        _publish(settings, _events(first))
        _verdicts(reader, _events(first))
        assert worker.stop() == 0  # snapshots every shard on the way out
        damaged = []
        for shard in sorted((state / "shards").iterdir()):
            files = json.loads((shard / MANIFEST).read_text())["files"]
            biggest = max(files, key=lambda name: files[name]["bytes"])
            if files[biggest]["bytes"]:  # an empty shard's only file is empty: nothing to zero
                (shard / biggest).write_bytes(bytes(files[biggest]["bytes"]))  # zeroed
                damaged.append(shard / biggest)
        assert damaged
        again = worker_factory(settings, "second")
        again.wait_ready(timeout_s=300)
        with urllib.request.urlopen(f"http://127.0.0.1:{again.settings.web_port}/healthz") as r:
            assert r.status == 200
        _publish(settings, _events(second))
        _assert_copies_found(second, _verdicts(reader, _events(second)))
    log = (tmp_path / "second.log").read_text()
    for file in damaged:
        assert f"index snapshot file {file}" in log and "from the changelog alone" in log


def _noise_events(count: int) -> list[ImageEvent]:
    """Distinct pictures no hash stage settles, so each reaches the embedding index."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(13)
    events = []
    for number in range(count):
        blocks = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        picture = Image.fromarray(blocks).resize((192, 192), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        events.append(ImageEvent(f"noise-{number:03d}.png", "shop", buffer.getvalue()))
    return events


@pytest.mark.parametrize("kind", ["hnsw-sq8", "ivf-sq8"])
def test_a_worker_serves_the_configured_vector_index_after_train_after_vectors(
        stream_settings: Settings, worker_factory, kind: str) -> None:
    # One shard, so that every vector of the tenant is in one index.
    settings = stream_settings.replace(shards=1, vector_index=kind, vector_train_after=50)
    ensure_topics(settings)
    worker = worker_factory(settings, "structure")
    worker.wait_ready(timeout_s=300)
    url = f"http://127.0.0.1:{worker.settings.web_port}/metrics"
    events = _noise_events(60)
    with topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic]) as reader:
        _publish(settings, events)
        verdicts = _verdicts(reader, events)
    assert all("verdict" in v for v in verdicts.values())
    wanted = f'dupwatch_index_structure_info{{shard="0",structure="{kind}",tenant="shop"}} 1.0'
    deadline = time.monotonic() + 30  # the gauges are refreshed every 5 s
    while wanted not in (text := urllib.request.urlopen(url).read().decode()):
        assert time.monotonic() < deadline, [l for l in text.splitlines() if "structure" in l]
        time.sleep(1)
