"""When a shard is written while its worker waits (a stop, a rebalance): only when that saves
the next start more than it costs, since at a million images it takes minutes."""
from __future__ import annotations

import time

import pytest

from dupwatch.index import Entry, ExactIndex, LocalStore
from dupwatch.index.sharded import QUICK_SNAPSHOT_IMAGES, _Shard, _Snapshotted


def _shard(images: int, next_offset: int, snapshot: _Snapshotted) -> _Shard:
    store = LocalStore({"sha256": (ExactIndex, ExactIndex.load)})
    store.add([Entry("t", f"img-{n}", {"sha256": b"%d" % n}, {}, n) for n in range(images)])
    return _Shard(0, store, next_offset, next_offset, snapshot)


BIG = QUICK_SNAPSHOT_IMAGES * 2


@pytest.mark.parametrize("images, next_offset, snapshot, worth", [
    (BIG, BIG + 100, _Snapshotted(BIG, time.time()), False),   # a short tail: the next start applies it
    (BIG, BIG * 2, _Snapshotted(BIG // 2, time.time()), True),  # more new than half: write it
    (BIG, BIG, _Snapshotted(), True),                           # none on disk yet
    (BIG, BIG, _Snapshotted(BIG, time.time()), False),          # nothing changed
    (BIG, BIG, _Snapshotted(BIG, time.time() - 5 * 24 * 3600), True),  # too old to be used soon
    (100, 101, _Snapshotted(100, time.time()), True),           # small: written in a moment
])
def test_a_shard_is_written_while_its_worker_waits_only_when_worth_it(
        images: int, next_offset: int, snapshot: _Snapshotted, worth: bool) -> None:
    assert _shard(images, next_offset, snapshot).worth_a_snapshot_now() is worth
