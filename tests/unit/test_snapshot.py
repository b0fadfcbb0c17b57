"""Crash-safe, validated snapshots: a damaged snapshot is refused naming the file, never
served partially, and a failed write keeps the previous one."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from dupwatch.detectors import Cascade
from dupwatch.wiring.cascade import build_cascade
from dupwatch.index import LocalStore, Lookup
from dupwatch.index.snapshot import (
    MANIFEST, BackgroundSnapshot, SnapshotError, read_snapshot, write_snapshot,
)
from dupwatch.settings import Settings
from dupwatch.imaging.samples import in_upload_order

STAGES = ["sha256", "phash", "phash_reoriented"]


@pytest.fixture
def indexed(samples) -> Cascade:
    cascade = build_cascade(Settings().replace(stages=STAGES))
    first, _ = in_upload_order(samples)
    for sample in first:
        cascade.check("t", sample.file.image_id, cascade.image(sample.file.path.read_bytes()))
    return cascade


def _full_disk(folder: Path) -> None:
    """A snapshot's files half written when the disk fills up."""
    (folder / "half").write_bytes(b"x" * 100)
    raise OSError(28, "No space left on device")


def _files(snapshot: Path) -> list[Path]:
    return sorted(p for p in snapshot.rglob("*") if p.is_file() and p.name != MANIFEST)


def test_a_snapshot_round_trips_with_its_metadata(indexed: Cascade, tmp_path: Path) -> None:
    store = indexed.store
    assert isinstance(store, LocalStore)
    store.save(tmp_path / "snap", {"next_offset": 7})
    restored = indexed.new_local_store()
    assert restored.load(tmp_path / "snap") == {"next_offset": 7}
    assert restored.size() == store.size()
    assert not list(tmp_path.glob("snap.*"))  # no partial or old copy left beside it


def test_no_snapshot_is_none_and_leaves_the_store_empty(indexed: Cascade, tmp_path: Path) -> None:
    store = indexed.new_local_store()
    assert store.load(tmp_path / "absent") is None
    assert store.size() == {stage: {} for stage in STAGES}


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "missing", "flipped"])
def test_a_damaged_file_is_refused_by_name_and_nothing_is_loaded(
        indexed: Cascade, tmp_path: Path, damage: str) -> None:
    indexed.store.save(tmp_path / "snap")  # type: ignore[attr-defined]
    for victim in _files(tmp_path / "snap"):
        shutil.rmtree(tmp_path / "copy", ignore_errors=True)
        shutil.copytree(tmp_path / "snap", tmp_path / "copy")
        target = tmp_path / "copy" / victim.relative_to(tmp_path / "snap")
        raw = target.read_bytes()
        if damage == "missing":
            target.unlink()
        else:
            target.write_bytes({"truncated": raw[: len(raw) // 2],
                                "zeroed": bytes(len(raw)),
                                "flipped": raw[:-1] + bytes([raw[-1] ^ 1])}[damage])
        store = indexed.new_local_store()
        with pytest.raises(SnapshotError) as error:
            store.load(tmp_path / "copy")
        assert error.value.path == target and str(target) in str(error.value)
        assert store.size() == {stage: {} for stage in STAGES}, "a partial index was loaded"


def test_a_snapshot_without_a_manifest_is_refused(indexed: Cascade, tmp_path: Path) -> None:
    indexed.store.save(tmp_path / "snap")  # type: ignore[attr-defined]
    (tmp_path / "snap" / MANIFEST).unlink()
    with pytest.raises(SnapshotError, match="manifest.json: missing"):
        read_snapshot(tmp_path / "snap")
    (tmp_path / "snap" / MANIFEST).write_text('{"format": 99, "files": {}, "meta": {}}')
    with pytest.raises(SnapshotError, match="format 99"):
        read_snapshot(tmp_path / "snap")


def test_a_failed_write_keeps_the_previous_snapshot(indexed: Cascade, tmp_path: Path) -> None:
    store = indexed.store
    assert isinstance(store, LocalStore)
    store.save(tmp_path / "snap", {"n": 1})

    with pytest.raises(OSError):
        write_snapshot(tmp_path / "snap", _full_disk, {"n": 2})
    assert read_snapshot(tmp_path / "snap") == {"n": 1}
    assert not (tmp_path / "snap.partial").exists()


def test_a_crash_between_the_swaps_renames_recovers_the_old_snapshot(
        indexed: Cascade, tmp_path: Path) -> None:
    indexed.store.save(tmp_path / "snap", {"n": 1})  # type: ignore[attr-defined]
    os.rename(tmp_path / "snap", tmp_path / "snap.old")  # the first rename happened, not the second
    restored = indexed.new_local_store()
    assert restored.load(tmp_path / "snap") == {"n": 1}
    assert restored.size() == indexed.store.size()  # type: ignore[attr-defined]


def test_a_background_snapshot_holds_the_store_as_it_was_when_it_began(
        indexed: Cascade, samples, tmp_path: Path) -> None:
    """The parent goes on changing the store while the forked child writes (a shard goes on
    applying the changelog and answering lookups during a snapshot)."""
    store = indexed.store
    assert isinstance(store, LocalStore)
    before = store.size()
    snapshot = store.save_in_background(tmp_path / "snap", {"next_offset": 7})
    _, later = in_upload_order(samples)
    for sample in later:  # while the child writes
        indexed.check("t", sample.file.image_id, indexed.image(sample.file.path.read_bytes()))
    assert store.size() != before
    assert snapshot.poll(wait=True) is True and snapshot.error is None
    restored = indexed.new_local_store()
    assert restored.load(tmp_path / "snap") == {"next_offset": 7}
    assert restored.size() == before


def test_a_failed_background_snapshot_says_why_and_keeps_the_previous(
        indexed: Cascade, tmp_path: Path) -> None:
    store = indexed.store
    assert isinstance(store, LocalStore)
    store.save(tmp_path / "snap", {"n": 1})

    snapshot = BackgroundSnapshot(tmp_path / "snap", _full_disk, {"n": 2})
    assert snapshot.poll(wait=True) is False
    assert "No space left on device" in snapshot.error
    assert read_snapshot(tmp_path / "snap") == {"n": 1}
    assert not (tmp_path / "snap.partial").exists()


def test_snapshots_of_earlier_versions_still_load(indexed: Cascade, tmp_path: Path) -> None:
    """Before records were kept as JSON lines, a snapshot held them as one JSON document."""
    store = indexed.store
    assert isinstance(store, LocalStore)
    store.save(tmp_path / "snap", {"n": 1})
    lines = (tmp_path / "snap" / "records.jsonl").read_bytes().split(b"\n")
    head = json.loads(lines[0])
    before = {head["tenant"]: {image_id: [json.loads(record), order] for image_id, record, order
                               in zip(head["ids"], lines[1:], head["orders"])}}
    (tmp_path / "snap" / "records.jsonl").unlink()
    (tmp_path / "snap" / "records.json").write_text(json.dumps(before))
    (tmp_path / "snap" / MANIFEST).unlink()  # rewritten for the files as they are now
    write_snapshot(tmp_path / "rewritten", lambda folder: shutil.copytree(
        tmp_path / "snap", folder, dirs_exist_ok=True), {"n": 1})
    restored = indexed.new_local_store()
    assert restored.load(tmp_path / "rewritten") == {"n": 1}
    queries = [Lookup("t", image_id, {}) for image_id in head["ids"]]
    assert restored.lookup(queries, 3) == store.lookup(queries, 3)
    assert all(found.earlier and found.earlier["label"] for found in restored.lookup(queries, 3))


def test_a_cancelled_background_snapshot_keeps_the_previous(indexed: Cascade, tmp_path: Path) -> None:
    store = indexed.store
    assert isinstance(store, LocalStore)
    store.save(tmp_path / "snap", {"n": 1})

    def slow(folder: Path) -> None:  # a snapshot of millions of images takes minutes
        (folder / "half").write_bytes(b"x" * 100)
        time.sleep(60)

    snapshot = BackgroundSnapshot(tmp_path / "snap", slow, {"n": 2})
    assert snapshot.cancel() is False
    assert read_snapshot(tmp_path / "snap") == {"n": 1}
