"""Training data: the source split keeps whole packages out, batches never pair near-duplicates
as negatives, and hard-negative mining brings each anchor's look-alikes into its batch."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from dupwatch.model.data import (CALIBRATION_SOURCES, TEST_SOURCES, Photo, by_source, list_photos,
                                 training_set)
from dupwatch.model.train import BatchSampler, TrainConfig


def _photo(name: str, package: str, group: str = "", kind: str = "photo") -> Photo:
    return Photo(Path("/data") / name, f"group:{group}" if group else name, package, kind)


def test_held_out_sources_and_photos_never_reach_training() -> None:
    assert CALIBRATION_SOURCES and TEST_SOURCES and not CALIBRATION_SOURCES & TEST_SOURCES
    photos = [_photo(f"{package}-{i}.jpg", package) for package in
              [*sorted(CALIBRATION_SOURCES), *sorted(TEST_SOURCES), "some-training-package"]
              for i in range(40)]
    chosen = training_set(photos)
    assert chosen and {p.package for p in chosen} == {"some-training-package"}
    assert not any(p.held_out for p in chosen)  # photos: the photo split holds them out
    assert 0 < len(chosen) < 40  # the photo split holds some of the training package out too
    splits = by_source(photos)
    assert {p.package for p in splits["test"]} == set(TEST_SOURCES)
    assert {p.package for p in splits["calibration"]} == set(CALIBRATION_SOURCES)


def test_the_manifest_names_each_images_package_kind_and_group(tmp_path: Path) -> None:
    (tmp_path / "a__one.png").write_bytes(b"")
    (tmp_path / "b__two.png").write_bytes(b"")
    (tmp_path / "manifest.csv").write_text(
        "file,source_package,registry,width,height,licence,kind,near_dup_group,source_path\n"
        "a__one.png,pkg-a,debian,100,100,GPL,screenshot,g001,/x\n")
    one, two = list_photos(tmp_path)
    assert (one.package, one.kind, one.group) == ("pkg-a", "screenshot", "group:g001")
    assert (two.package, two.kind, two.group) == ("b", "photo", "b__two.png")  # no manifest row


def test_batches_hold_one_image_per_near_duplicate_group_and_mined_neighbours() -> None:
    photos = [_photo(f"{i}.jpg", "p", group=f"g{i // 2}", kind="photo" if i % 3 else "screenshot")
              for i in range(60)]
    config = TrainConfig(photos=(), out="", anchors=4, neighbours=3)
    sampler = BatchSampler(photos, 16, config)
    rng = random.Random(3)
    descriptors = np.random.default_rng(0).normal(size=(60, 8)).astype("float32")
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    sampler.mine(descriptors, log=lambda line: None)
    for _ in range(20):
        batch = sampler.batch(rng)
        assert len(batch) == 16
        groups = [photos[i].near_duplicates_key for i in batch]
        assert len(set(groups)) == len(groups)
    # The first anchor is followed by the nearest images of other groups.
    batch = sampler.batch(random.Random(5))
    anchor = batch[0]
    nearest_others = [int(i) for i in sampler.nearest[anchor][1:]
                      if photos[int(i)].near_duplicates_key != photos[anchor].near_duplicates_key]
    assert batch[1] == nearest_others[0]
