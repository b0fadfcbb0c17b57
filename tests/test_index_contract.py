"""One contract for every index: add, search, remove, save/load, tenants never mix."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from dupwatch.index import BinaryIndex, ExactIndex, TenantIndexes, VectorIndex

RNG = np.random.default_rng(7)


def _digest(n: int) -> bytes:
    return hashlib.sha256(b"%d" % n).digest()


def _bits(n: int) -> bytes:
    return np.random.default_rng(n).integers(0, 256, 8, dtype=np.uint8).tobytes()


def _vector(n: int) -> np.ndarray:
    vector = np.random.default_rng(n).normal(size=32).astype(np.float32)
    return vector / np.linalg.norm(vector)


KINDS: dict[str, tuple[Callable, Callable, Callable[[int], bytes]]] = {
    "exact": (ExactIndex, ExactIndex.load, _digest),
    "binary": (lambda: BinaryIndex(64), BinaryIndex.load, _bits),
    "vector": (lambda: VectorIndex(32), VectorIndex.load, _vector),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    return KINDS[request.param]


def _filled(kind, count: int = 50):
    new, _, signal = kind
    index = new()
    for n in range(count):
        index.add(f"img-{n}", signal(n))
    return index


def test_add_then_search_finds_it_first(kind) -> None:
    index = _filled(kind)
    assert len(index) == 50
    for n in (0, 17, 49):
        hits = index.search(kind[2](n), 3)
        assert hits[0].key == f"img-{n}" and hits[0].distance == 0


def test_remove_forgets_and_reports_missing(kind) -> None:
    index = _filled(kind)
    assert index.remove("img-3") is True
    assert index.remove("img-3") is False
    assert all(hit.key != "img-3" for hit in index.search(kind[2](3), 50))
    assert len(index) == 49


def test_adding_a_key_again_replaces_its_signal(kind) -> None:
    index = _filled(kind, 5)
    index.add("img-1", kind[2](1000))
    assert len(index) == 5
    assert index.search(kind[2](1000), 1)[0].key == "img-1"
    assert all(hit.key != "img-1" or hit.distance > 0 for hit in index.search(kind[2](1), 5))


def test_ties_go_to_the_earliest_added(kind) -> None:
    index = kind[0]()
    for key in ("first", "second", "third"):
        index.add(key, kind[2](1))
    assert [hit.key for hit in index.search(kind[2](1), 3)] == ["first", "second", "third"]


def test_save_then_load_gives_the_same_answers(kind, tmp_path: Path) -> None:
    index = _filled(kind)
    index.remove("img-4")
    index.save(tmp_path)
    loaded = kind[1](tmp_path)
    assert len(loaded) == len(index)
    for n in range(0, 50, 7):
        assert loaded.search(kind[2](n), 5) == index.search(kind[2](n), 5)
    loaded.add("new", kind[2](999))  # insertion order continues after a load
    assert loaded.search(kind[2](999), 1)[0].key == "new"


def test_tenants_never_see_each_other(kind, tmp_path: Path) -> None:
    tenants = TenantIndexes(kind[0], kind[1])
    tenants.for_tenant("a").add("a-img", kind[2](1))
    tenants.for_tenant("b").add("b-img", kind[2](2))
    assert all(h.key == "a-img" for h in tenants.for_tenant("a").search(kind[2](2), 10))
    assert tenants.for_tenant("b").search(kind[2](2), 10)[0].key == "b-img"
    assert tenants.existing("c") is None
    tenants.save(tmp_path)
    reloaded = TenantIndexes(kind[0], kind[1])
    reloaded.load(tmp_path)
    assert [name for name, _ in reloaded.tenants()] == ["a", "b"]
    assert reloaded.for_tenant("b").search(kind[2](2), 1)[0].key == "b-img"


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
