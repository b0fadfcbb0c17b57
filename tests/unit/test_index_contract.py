"""One contract for every index: add, search, remove, save/load, tenants never mix."""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
import pytest

from PIL import Image

from dupwatch.detectors.verify import VerifyStage
from dupwatch.imaging import features
from dupwatch.index import BinaryIndex, CandidateQuery, ExactIndex, Hit, TenantIndexes, VectorIndex
from dupwatch.index.files import save_faiss
from dupwatch.index.vector import VectorIndexOptions

RNG = np.random.default_rng(7)


def _digest(n: int) -> bytes:
    return hashlib.sha256(b"%d" % n).digest()


def _bits(n: int) -> bytes:
    return np.random.default_rng(n).integers(0, 256, 8, dtype=np.uint8).tobytes()


def _vector(n: int) -> np.ndarray:
    vector = np.random.default_rng(n).normal(size=32).astype(np.float32)
    return vector / np.linalg.norm(vector)


@functools.cache
def _local_features(n: int) -> bytes:
    """A real picture's local features: noise of seed n, blurred into texture."""
    noise = np.random.default_rng(n).integers(0, 256, (48, 64), dtype=np.uint8)
    picture = Image.fromarray(noise).resize((512, 384), Image.Resampling.BICUBIC)
    return features.extract(picture.convert("RGB")).to_bytes()


# Every key the tests below add: an index that checks named candidates is asked about all.
_KEYS = (*(f"img-{n}" for n in range(61)), "first", "second", "third", "new", "a-img", "b-img")


def _identity(signal: object) -> object:
    return signal


@dataclass(frozen=True)
class Kind:
    new: Callable
    load: Callable
    signal: Callable
    copy_distance: float = 0.0  # largest distance an exact copy may be found at
    malformed: object = None    # a signal the kind refuses (None: it takes any)
    query: Callable = _identity  # what a search takes, from a signal


_WRONG_SIDE = np.ones(16, dtype=np.float32)
# train_after=50: the compressed indexes train at the 50th add of _filled, so the tests below
# cover them both before (a handful of keys, served flat) and after training.
IVF = VectorIndexOptions("ivf-sq8", train_after=50, nprobe=1)
HNSW = VectorIndexOptions("hnsw-sq8", train_after=50)

KINDS: dict[str, Kind] = {
    "exact": Kind(ExactIndex, ExactIndex.load, _digest),
    "binary": Kind(lambda: BinaryIndex(64), BinaryIndex.load, _bits, malformed=b"\x00" * 3),
    "vector-flat": Kind(lambda: VectorIndex(32), VectorIndex.load, _vector, malformed=_WRONG_SIDE),
    # int8 codes: an exact copy comes back within ~1e-3 of distance 0, not at 0
    "vector-ivf-sq8": Kind(lambda: VectorIndex(32, IVF), VectorIndex.load, _vector, 0.01,
                           _WRONG_SIDE),
    "vector-hnsw-sq8": Kind(lambda: VectorIndex(32, HNSW), VectorIndex.load, _vector, 0.01,
                            _WRONG_SIDE),
    # checks the candidates it is named (here every key), by local features
    "features": Kind(VerifyStage().new_index, VerifyStage().load_index, _local_features,
                     malformed=b"\x00" * (features.MAX_BYTES + 1),
                     query=lambda signal: CandidateQuery(signal, _KEYS)),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request) -> Kind:
    return KINDS[request.param]


def _filled(kind: Kind, count: int = 50):
    index = kind.new()
    for n in range(count):
        index.add(f"img-{n}", kind.signal(n))
    return index


def test_add_then_search_finds_it_first(kind) -> None:
    index = _filled(kind)
    assert len(index) == 50
    for n in (0, 17, 49):
        hits = index.search(kind.query(kind.signal(n)), 3)
        assert hits[0].key == f"img-{n}" and hits[0].distance <= kind.copy_distance


def test_remove_forgets_and_reports_missing(kind) -> None:
    index = _filled(kind)
    assert index.remove("img-3") is True
    assert index.remove("img-3") is False
    assert all(hit.key != "img-3" for hit in index.search(kind.query(kind.signal(3)), 50))
    assert len(index) == 49


def test_adding_a_key_again_replaces_its_signal(kind) -> None:
    index = _filled(kind)
    index.add("img-1", kind.signal(1000))
    assert len(index) == 50
    assert index.search(kind.query(kind.signal(1000)), 1)[0].key == "img-1"
    assert all(hit.key != "img-1" or hit.distance > kind.copy_distance
               for hit in index.search(kind.query(kind.signal(1)), 5))


def test_a_malformed_signal_for_a_held_key_leaves_its_old_signal(kind) -> None:
    if kind.malformed is None:
        pytest.skip("this kind takes any signal (every byte string is a digest)")
    index = _filled(kind)
    with pytest.raises(ValueError):
        index.add("img-1", kind.malformed)
    assert len(index) == 50
    hits = index.search(kind.query(kind.signal(1)), 1)
    assert hits[0].key == "img-1" and hits[0].distance <= kind.copy_distance


def test_ties_go_to_the_earliest_added(kind) -> None:
    index = _filled(kind)
    for key in ("first", "second", "third"):
        index.add(key, kind.signal(1000))
    assert [hit.key for hit in index.search(kind.query(kind.signal(1000)), 3)] == ["first", "second", "third"]


# Keys replaced by later ones (img-3), given twice in one batch (img-60), and a batch that
# crosses train_after (50) for the compressed kinds.
_BATCHES = [[(f"img-{n}", n) for n in range(30)],
            [("img-60", 60), *((f"img-{n}", n) for n in range(30, 45)), ("img-3", 1003),
             ("img-60", 1060), *((f"img-{n}", n) for n in range(45, 58))],
            [("img-10", 1010), ("img-58", 58)]]


def test_adding_in_batches_gives_the_index_adding_in_turn_gives(kind) -> None:
    one_by_one, batched = kind.new(), kind.new()
    for batch in _BATCHES:
        for key, n in batch:
            one_by_one.add(key, kind.signal(n))
        batched.add_many([(key, kind.signal(n)) for key, n in batch])
    assert len(batched) == len(one_by_one) == 60
    for n in (0, 3, 10, 31, 57, 60, 1003, 1010, 1060):
        query = kind.query(kind.signal(n))
        # The same hits in the same ranks; insertion numbers may differ (a key given twice in a
        # batch takes one), their order does not.
        assert _ranked(batched.search(query, 5)) == _ranked(one_by_one.search(query, 5))


def _ranked(hits: list[Hit]) -> list[tuple[str, float]]:
    return [(hit.key, hit.distance) for hit in hits]


def test_a_malformed_signal_in_a_batch_adds_nothing(kind) -> None:
    if kind.malformed is None:
        pytest.skip("this kind takes any signal (every byte string is a digest)")
    index = _filled(kind)
    with pytest.raises(ValueError):
        index.add_many([("new", kind.signal(999)), ("img-1", kind.malformed)])
    assert len(index) == 50 and all(hit.key != "new"
                                    for hit in index.search(kind.query(kind.signal(999)), 50))
    assert index.search(kind.query(kind.signal(1)), 1)[0].key == "img-1"


def test_save_then_load_gives_the_same_answers(kind, tmp_path: Path) -> None:
    index = _filled(kind)
    index.remove("img-4")
    index.save(tmp_path)
    loaded = kind.load(tmp_path)
    assert len(loaded) == len(index)
    for n in range(0, 50, 7):
        assert loaded.search(kind.query(kind.signal(n)), 5) == index.search(kind.query(kind.signal(n)), 5)
    loaded.add("new", kind.signal(999))  # insertion order continues after a load
    assert loaded.search(kind.query(kind.signal(999)), 1)[0].key == "new"


def test_tenants_never_see_each_other(kind, tmp_path: Path) -> None:
    tenants = TenantIndexes(kind.new, kind.load)
    tenants.for_tenant("a").add("a-img", kind.signal(1))
    tenants.for_tenant("b").add("b-img", kind.signal(2))
    assert all(h.key == "a-img" for h in tenants.for_tenant("a").search(kind.query(kind.signal(2)), 10))
    assert tenants.for_tenant("b").search(kind.query(kind.signal(2)), 10)[0].key == "b-img"
    assert tenants.existing("c") is None
    tenants.save(tmp_path)
    reloaded = TenantIndexes(kind.new, kind.load)
    reloaded.load(tmp_path)
    assert [name for name, _ in reloaded.tenants()] == ["a", "b"]
    assert reloaded.for_tenant("b").search(kind.query(kind.signal(2)), 1)[0].key == "b-img"


def test_binary_distances_are_true_hamming_distances() -> None:
    signals = RNG.integers(0, 256, (300, 8), dtype=np.uint8)
    index = BinaryIndex(64)
    for n, row in enumerate(signals):
        index.add(str(n), row.tobytes())
    query = RNG.integers(0, 256, 8, dtype=np.uint8)
    expected = np.unpackbits(signals ^ query, axis=1).sum(axis=1)
    hits = index.search(query.tobytes(), 10)
    assert [h.distance for h in hits] == sorted(expected)[:10]
    for hit in hits:
        assert hit.distance == expected[int(hit.key)]


def test_vector_keys_with_several_views_match_at_their_best_view() -> None:
    index = VectorIndex(32)
    index.add("two-views", np.stack([_vector(1), _vector(2)]))
    index.add("one-view", _vector(3))
    hits = index.search(np.stack([_vector(9), _vector(2)]), 5)
    assert hits[0].key == "two-views" and hits[0].distance == 0
    assert [h.key for h in hits].count("two-views") == 1
    assert len(index) == 2 and index.remove("two-views") and len(index) == 1


def _clustered(count: int, seed: int) -> np.ndarray:
    """Unit vectors around 20 centres: neighbours share IVF lists, as real embeddings do."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 32))
    vectors = centres[rng.integers(0, 20, count)] + 0.5 * rng.normal(size=(count, 32))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _index_from(vectors: np.ndarray, options: VectorIndexOptions) -> VectorIndex:
    index = VectorIndex(32, options)
    for n, vector in enumerate(vectors):
        index.add(f"img-{n}", vector)
    return index


COMPRESSED = ["ivf-sq8", "hnsw-sq8"]


@pytest.mark.parametrize("kind", COMPRESSED)
def test_a_compressed_index_trains_from_the_stream_and_still_finds_copies(kind: str) -> None:
    options = VectorIndexOptions(kind, train_after=500, nprobe=2)  # ivf: 10 lists
    vectors = _clustered(800, seed=3)
    index = _index_from(vectors[:499], options)
    assert not index.trained
    assert all(index.search(vectors[n], 1)[0] == Hit(0.0, n, f"img-{n}") for n in range(0, 499, 7))
    index.add("img-499", vectors[499])
    assert index.trained and len(index) == 500
    for n in range(300, 800):
        index.add(f"img-{n}", vectors[n])  # 300..499 again (replaced), then new ones
    assert len(index) == 800
    for n in range(0, 800, 7):
        hit = index.search(vectors[n], 1)[0]
        assert hit.key == f"img-{n}" and hit.distance < 0.01
    assert index.remove("img-7") and all(h.key != "img-7" for h in index.search(vectors[7], 10))
    assert len(index.search(vectors[7], 10)) == 10


@pytest.mark.parametrize("kind", COMPRESSED)
def test_the_same_stream_trains_the_same_index(kind: str) -> None:
    options = VectorIndexOptions(kind, train_after=500, nprobe=2)
    vectors = _clustered(600, seed=4)
    queries = _clustered(50, seed=5)
    first, second = _index_from(vectors, options), _index_from(vectors, options)
    assert first.trained and second.trained
    assert [first.search(q, 10) for q in queries] == [second.search(q, 10) for q in queries]


@pytest.mark.parametrize("kind", COMPRESSED)
def test_a_flat_snapshot_loaded_as_compressed_trains_once_it_holds_enough(
        kind: str, tmp_path: Path) -> None:
    vectors = _clustered(120, seed=6)
    _index_from(vectors, VectorIndexOptions()).save(tmp_path)
    loaded = VectorIndex.load(tmp_path, VectorIndexOptions(kind, train_after=100))
    assert loaded.structure == kind and len(loaded) == 120
    assert loaded.search(vectors[42], 1)[0].key == "img-42"


def test_graph_tombstones_survive_a_snapshot(tmp_path: Path) -> None:
    vectors = _clustered(120, seed=7)
    index = _index_from(vectors, VectorIndexOptions("hnsw-sq8", train_after=100))
    index.remove("img-5")
    index.add("img-6", vectors[60])  # replaced: its first vector becomes a tombstone too
    index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    assert len(loaded) == 119
    assert all(h.key != "img-5" for h in loaded.search(vectors[5], 20))
    assert all(h.key != "img-6" or h.distance > 0.01 for h in loaded.search(vectors[6], 20))
    assert loaded.search(vectors[60], 2)[0].key == "img-60"


def test_snapshots_from_before_options_existed_still_load(tmp_path: Path) -> None:
    """Old layout: sequential FAISS ids per vector in an IndexIDMap2, {key: [order, ids]}."""
    old = faiss.IndexIDMap2(faiss.IndexFlatIP(32))
    old.add_with_ids(np.stack([_vector(1), _vector(2), _vector(3)]), np.array([0, 1, 2]))
    save_faiss(tmp_path, "vector", faiss.write_index, old, {
        "dim": 32, "next_id": 3, "next_order": 2,
        "keys": {"two-views": [0, [0, 1]], "one": [1, [2]]}})
    loaded = VectorIndex.load(tmp_path)
    assert loaded.search(_vector(2), 1)[0] == Hit(0.0, 0, "two-views")
    assert loaded.search(_vector(3), 1)[0] == Hit(0.0, 1, "one")
    assert loaded.remove("two-views") and loaded.search(_vector(1), 1)[0].key == "one"


def test_a_bad_vector_in_a_bulk_add_leaves_the_index_as_it_was() -> None:
    index = VectorIndex(32)
    index.add("kept", _vector(1))
    with pytest.raises(ValueError, match="32-d"):
        index.add_many([("new", _vector(2)), ("kept", np.ones(16, dtype=np.float32))])
    assert len(index) == 1 and index.search(_vector(1), 2) == [Hit(0.0, 0, "kept")]
