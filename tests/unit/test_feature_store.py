"""Local features live in the store like every other signal: on disk, in snapshots, on the wire.

(The contract every index keeps, the feature index included: test_index_contract.py.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dupwatch.wiring.cascade import build_cascade
from dupwatch.imaging import features
from dupwatch.index import CandidateQuery, Entry, Found, Hit, Lookup
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
    entry = Entry("t", "a", {"verify": _signal(1)}, {}, 5)
    assert decode_entry(entry_key("t", "a"), encode_entry(entry)) == entry
