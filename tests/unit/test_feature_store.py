"""Local features live in the store like every other signal: on disk, in snapshots, on the wire.

(The contract every index keeps, the feature index included: test_index_contract.py.)"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from dupwatch.wiring.cascade import build_cascade
from dupwatch.imaging import features
from dupwatch.index import CandidateQuery, Entry, Found, Hit, Lookup
from dupwatch.index import codec
from dupwatch.index.codec import (decode_entry, decode_found, decode_lookups, encode_entry,
                                  encode_found, encode_lookups, entry_key)
from dupwatch.settings import Settings


def _signal(seed: int) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 256, (48, 64), dtype=np.uint8)
    return features.extract(Image.fromarray(noise).resize((512, 384)).convert("RGB")).to_bytes()


def test_signals_are_kept_on_disk_and_the_file_is_compacted() -> None:
    index = build_cascade(Settings(stages=["verify"])).stages[0].new_index()
    signals = {n: _signal(n) for n in range(3)}
    for n, signal in signals.items():
        index.add(f"img-{n}", signal)
    assert index.get("img-1") == signals[1] and index.disk_bytes == sum(map(len, signals.values()))
    for round_ in range(300):  # replacing a key leaves its old bytes behind until compaction
        index.add("img-0", signals[round_ % 3])
    assert len(index) == 3
    assert index.disk_bytes <= 2 * (1 << 20) + features.MAX_BYTES  # compacted along the way
    assert index.get("img-2") == signals[2] and index.get("img-0") == signals[299 % 3]


def test_a_snapshot_of_the_store_keeps_the_features(tmp_path: Path) -> None:
    cascade = build_cascade(Settings(stages=["sha256", "verify"]))
    store = cascade.new_local_store()
    store.add([Entry("t", "a", {"sha256": b"\x01" * 32, "verify": _signal(1)}, {}, 1),
               Entry("t", "b", {"sha256": b"\x02" * 32, "verify": _signal(2)}, {}, 2)])
    store.remove("t", ["b"])
    store.save(tmp_path / "snapshot")
    loaded = cascade.new_local_store()
    loaded.load(tmp_path / "snapshot")
    query = Lookup("t", "q", {"verify": CandidateQuery(_signal(1), ("a", "b"))})
    (found,) = loaded.lookup([query], 5)
    assert [(hit.key, hit.distance) for hit in found.hits["verify"]] == [("a", 0.0)]
    assert found.hits["verify"][0].evidence["inliers"] >= features.MIN_INLIERS


def test_candidate_queries_and_evidence_travel_between_shards() -> None:
    query = Lookup("t", "q", {"verify": CandidateQuery(_signal(1), ("a", "b")), "sha256": b"\x01"})
    assert decode_lookups(encode_lookups([query])) == [query]
    hit = Hit(0.25, 7, "a", {"inliers": 40, "region": [0.1, 0.2, 0.9, 0.8]})
    (back,) = decode_found(encode_found([Found({"verify": [hit], "phash": [Hit(3.0, 1, "b")]})]))
    assert back.hits["verify"][0].evidence == hit.evidence
    assert back.hits["phash"][0].evidence is None
    entry = Entry("t", "a", {"verify": _signal(1)}, {"verdict": "unique"}, 5)
    # the record as the JSON it travels as: the store decodes it only when asked
    assert decode_entry(entry_key("t", "a"), encode_entry(entry)) == Entry(
        "t", "a", entry.signals, b'{"verdict":"unique"}', 5)


def _entries(count: int) -> list[Entry]:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(count, 256)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [Entry("t" if n % 3 else "u", f"img-{n % 40}", {
        "sha256": rng.bytes(32), "phash": rng.bytes(32), "embedding": vectors[n:n + 1],
        "verify": _signal(n % 5)}, {"verdict": "unique", "n": n}, n) for n in range(count)]


def test_a_store_adding_a_batch_answers_as_one_adding_in_turn() -> None:
    """A shard applies the changelog in batches: images repeated in a batch, across tenants."""
    cascade = build_cascade(Settings(stages=["sha256", "phash", "embedding", "verify"]))
    batched, one_by_one = cascade.new_local_store(), cascade.new_local_store()
    entries = _entries(60)  # 40 images, 20 of them indexed again
    batched.add(entries)
    for entry in entries:
        one_by_one.add([entry])
    assert batched.size() == one_by_one.size()
    queries = [Lookup(e.tenant, "query", {**e.signals, "verify": CandidateQuery(
        e.signals["verify"], tuple(f"img-{n}" for n in range(40)))}) for e in entries[::7]]
    for got, expected in zip(batched.lookup(queries, 5), one_by_one.lookup(queries, 5)):
        assert got == expected


def test_changelog_entries_written_as_json_by_earlier_versions_still_load() -> None:
    (entry,) = _entries(1)
    old = codec.encode_entry_json(entry)
    back = decode_entry(entry_key("u", "img-0"), old)
    assert (back.tenant, back.image_id, back.record, back.order) == ("u", "img-0", entry.record, 0)
    assert json.loads(decode_entry(entry_key("u", "img-0"), encode_entry(entry)).record) == entry.record
    assert back.signals.keys() == entry.signals.keys()
    assert all(np.array_equal(back.signals[stage], signal) for stage, signal in entry.signals.items())
    assert encode_entry(entry).startswith(codec.ENTRY_MAGIC)
    assert len(encode_entry(entry)) < 0.8 * len(old)  # raw bytes, not base64


def test_a_loaded_index_reads_its_snapshot_in_place_even_once_a_newer_one_replaced_it(
        tmp_path: Path) -> None:
    stage = build_cascade(Settings(stages=["verify"])).stages[0]
    index = stage.new_index()
    signals = {n: _signal(n) for n in range(4)}
    for n in range(3):
        index.add(f"img-{n}", signals[n])
    index.save(tmp_path / "old")
    loaded = stage.load_index(tmp_path / "old")
    loaded.add("img-3", signals[3])  # appended beside the snapshot's file, never into it
    assert (tmp_path / "old" / "features.bin").stat().st_size == sum(map(len, list(signals.values())[:3]))
    shutil.rmtree(tmp_path / "old")  # as a newer snapshot's swap removes it
    assert [loaded.get(f"img-{n}") for n in range(4)] == list(signals.values())
    loaded.save(tmp_path / "new")
    again = stage.load_index(tmp_path / "new")
    assert [again.get(f"img-{n}") for n in range(4)] == list(signals.values())
    for round_ in range(300):  # compaction moves everything into its own file
        again.add("img-0", signals[round_ % 4])
    shutil.rmtree(tmp_path / "new")
    assert again.get("img-0") == signals[299 % 4] and again.get("img-2") == signals[2]
