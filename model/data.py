"""Photos for training and evaluation, and the fixed split between them.

The split is a rule, not a list: a photo is held out when the SHA-256 of its group key (its
``near_dup_group`` from the gather manifest, else its file name) falls in the lowest
HELD_OUT_PERCENT of the hash range. Near-duplicates of each other always land on the same side,
and a photo never moves side when others are added.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dupwatch.detectors.image import DecodeLimits, decode

HELD_OUT_PERCENT = 30
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class Photo:
    path: Path
    group: str          # photos sharing a group are near-duplicates of each other

    @property
    def held_out(self) -> bool:
        digest = hashlib.sha256(self.group.encode()).digest()
        return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT


def list_photos(folder: Path) -> list[Photo]:
    """Photos in ``folder`` (sorted), grouped by its manifest.csv when there is one."""
    groups: dict[str, str] = {}
    manifest = folder / "manifest.csv"
    if manifest.exists():
        with manifest.open(newline="") as handle:
            groups = {row["file"]: row.get("near_dup_group") or "" for row in csv.DictReader(handle)}
    return [Photo(path, f"group:{groups[path.name]}" if groups.get(path.name) else path.name)
            for path in sorted(folder.rglob("*")) if path.suffix.lower() in PHOTO_SUFFIXES]


def split(photos: list[Photo]) -> tuple[list[Photo], list[Photo]]:
    """(training photos, held-out photos)."""
    return [p for p in photos if not p.held_out], [p for p in photos if p.held_out]


def load_rgb(path: Path, max_side: int) -> Image.Image:
    """Upright RGB as the worker decodes it, shrunk so the longer side is at most ``max_side``
    (keeps memory small). Full-scale decode: training sees no draft artefacts."""
    image = decode(path.read_bytes(), DecodeLimits(draft_min_side=0))
    image.thumbnail((max_side, max_side))
    return image
