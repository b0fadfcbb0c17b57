"""`dupwatch scan`: the cascade in-process over files, no broker.

Each file is checked against the ones before it, exactly as a worker would check events. The
outcomes print as a table, as JSON lines, or as duplicate groups: the connected components of
the matches, each with the file a preference suggests keeping (what a storage clean-up wants).
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TextIO

from PIL import Image

from dupwatch.schemas import DeadLetter, ImageEvent, Reason, Rejected, Verdict, utc_now
from dupwatch.pipeline.processor import InputRecord, Pending, Processor
from dupwatch.reporting.progress import Progress, wanted
from dupwatch.reporting.render import TablePrinter, print_jsonl
from dupwatch.reporting.report import Verdicts, duplicate_groups
from dupwatch.imaging.files import ImageFile

Outcome = Verdict | DeadLetter


@dataclass(frozen=True)
class FileFacts:
    """What the preferences compare, from the file and its image header (no decode)."""
    width: int
    height: int
    size: int        # bytes
    mtime: float

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def bytes_per_pixel(self) -> float:  # more: less compressed
        return self.size / self.pixels if self.pixels else 0.0

    @classmethod
    def of(cls, path: Path) -> "FileFacts":
        stat = path.stat()
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception:  # unreadable: it ranks last among the largest
            width = height = 0
        return cls(width, height, stat.st_size, stat.st_mtime)


# Preferences between files, by name: (what it prefers, the key that sorts the preferred
# first). Ties keep the scan order.
PREFERENCES: dict[str, tuple[str, Callable[[FileFacts], tuple]]] = {
    "largest": ("the largest picture, then the least compressed (most bytes per pixel)",
                lambda f: (-f.pixels, -f.bytes_per_pixel)),
    "oldest": ("the oldest file (modification time)", lambda f: (f.mtime,)),
    "first": ("the first scanned", lambda f: ()),
}


def in_order(files: list[ImageFile], preference: str) -> list[ImageFile]:
    """``files`` sorted by a preference: "largest" puts originals before their resized,
    cropped and recompressed copies, so that the copies are the ones reported as duplicates."""
    key = PREFERENCES[preference][1]
    return sorted(files, key=lambda file: key(FileFacts.of(file.path)))


def scan(processor: Processor, files: list[ImageFile], tenant: str,
         batch_size: int) -> Iterator[tuple[ImageFile, Outcome]]:
    """Outcomes in file order, checked as a worker checks them: ``batch_size`` files at a time,
    each against every file before it. While one batch goes through the cascade (its forward
    pass), the next one is decoded in the decode processes and its per-image work (hashes,
    local features, content regions, resizing) is done on the processor's ahead thread, so both
    cores stay busy."""
    size = max(1, batch_size)
    batches = [files[start:start + size] for start in range(0, len(files), size)]
    ahead = _taken_in(processor, batches[0], tenant) if batches else None
    for number in range(len(batches)):
        current = ahead
        if number + 1 < len(batches):
            ahead = _taken_in(processor, batches[number + 1], tenant)
        yield from _settled(processor, *current)  # type: ignore[misc]


_Slots = list[tuple[ImageFile, DeadLetter | None]]   # a file and its outcome if known already


def _taken_in(processor: Processor, files: list[ImageFile],
              tenant: str) -> tuple[_Slots, list[Pending]]:
    """Read and parse a batch and start preparing it; returns without waiting for it."""
    slots: _Slots = []
    records = []
    for file in files:
        data = file.path.read_bytes()
        if not data:  # an event cannot carry it; say which file, as a worker would for bytes
            slots.append((file, _empty(file, tenant, processor.options.dead_letter_excerpt_bytes)))
            continue
        event = ImageEvent(image_id=file.image_id, tenant=tenant, data=data,
                           content_type=file.content_type, submitted_at=utc_now())
        records.append(InputRecord(value=event.to_json(), key=event.key))
        slots.append((file, None))
    return slots, processor.intake(records)


def _settled(processor: Processor, slots: _Slots,
             pending: list[Pending]) -> Iterator[tuple[ImageFile, Outcome]]:
    outcomes = iter(processor.settle(pending))
    for file, known in slots:
        yield file, known if known is not None else next(outcomes)


def _empty(file: ImageFile, tenant: str, excerpt_bytes: int) -> DeadLetter:
    error = Rejected(Reason.DECODE_FAILED, f"{file.path}: empty file (0 bytes)")
    return DeadLetter.build(error, b"", worker="scan",
                            excerpt_bytes=excerpt_bytes,
                            image_id=file.image_id, tenant=tenant)


def run_scan(new_processor: Callable[[], Processor], batch_size: int, files: list[ImageFile],
             tenant: str, output: str, keep: str, out: TextIO = sys.stdout) -> int:
    """Print the outcomes in ``output`` format; 1 if any file was rejected. The processor is
    made once the progress bar shows (it loads the model)."""
    counts: Counter[str] = Counter()
    scanned: list[tuple[ImageFile, Outcome]] = []
    table = TablePrinter(out)
    with Progress(len(files), "scanned", enabled=wanted(json_stdout=output != "groups")) as bar:
        for file, outcome in scan(new_processor(), files, tenant, batch_size):
            counts["rejected" if isinstance(outcome, DeadLetter) else outcome.verdict.value] += 1
            if output == "jsonl":
                print_jsonl(outcome.to_dict(), out)
            elif output == "table":
                table.row(outcome.to_dict())
            scanned.append((file, outcome))
            bar.advance()
    if output == "groups":
        print_groups(scanned, keep, out)
    summary = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
    print(f"scanned {len(files)} images: {summary or 'none'}", file=sys.stderr)
    return 1 if counts["rejected"] else 0


def print_groups(scanned: list[tuple[ImageFile, Outcome]], keep: str, out: TextIO) -> None:
    """Each group of duplicates, largest first: the file to keep, then the others."""
    verdicts = Verdicts()
    for _, outcome in scanned:
        verdicts.add(outcome.to_dict())
    files = {(outcome.tenant, file.image_id): file for file, outcome in scanned}
    position = {key: n for n, key in enumerate(files)}
    groups = duplicate_groups(verdicts)
    print(f"{len(groups)} groups of duplicates, {sum(len(g.pairs) for g in groups)} files to "
          f"remove; in each group --keep {keep} keeps {PREFERENCES[keep][0]}", file=out)
    prefer = PREFERENCES[keep][1]
    for number, group in enumerate(groups, start=1):
        members = [(group.tenant, m) for m in [group.root] + [p.image_id for p in group.pairs]]
        facts = {m: FileFacts.of(files[m].path) for m in members}
        keeper = min(members, key=lambda m: (prefer(facts[m]), position[m]))
        matched = {(group.tenant, pair.image_id): pair for pair in group.pairs}
        rows = []
        for member in [keeper] + [m for m in members if m != keeper]:
            pair, fact = matched.get(member), facts[member]
            rows.append(["keep" if member == keeper else "remove", str(files[member].path),
                         f"{fact.width}x{fact.height}", f"{fact.size / 1024:.0f} KB",
                         f"{pair.verdict} of {pair.match_id} ({pair.stage}, {pair.score:.3f})"
                         if pair else "first of its group"])
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        print(f"\ngroup {number}: {len(members)} files", file=out)
        for row in rows:
            print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(),
                  file=out)
