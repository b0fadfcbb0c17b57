"""The bundled sample photos (real photos plus copies with known expected verdicts)."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from dupwatch.imaging.files import ImageFile
from dupwatch.locations import samples_dir


@dataclass(frozen=True)
class Sample:
    """One bundled photo and the verdict it should get (a row of samples/manifest.csv): an original,
    an unrelated photo, or a copy made from ``source`` by ``transform``."""
    file: ImageFile
    role: str              # original | unrelated | copy
    source: str            # the original a copy derives from
    transform: str
    expected_verdict: str


def load_samples(root: Path | None = None) -> list[Sample]:
    root = root or samples_dir()
    with (root / "manifest.csv").open(newline="") as handle:
        return [Sample(ImageFile(row["file"], root / row["file"]), row["role"], row["source"],
                       row["transform"], row["expected_verdict"])
                for row in csv.DictReader(handle)]


def in_upload_order(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(first wave, second wave): every original is uploaded before any copy of it."""
    return ([s for s in samples if s.role != "copy"], [s for s in samples if s.role == "copy"])
