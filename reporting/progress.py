"""A one-line progress bar for long commands, drawn on stderr only when a person watches it.

    with Progress(len(files), "scanned", enabled=wanted(json_stdout=True)) as bar:
        for file in files:
            ...
            bar.advance()
"""
from __future__ import annotations

import shutil
import sys
import time
from types import TracebackType
from typing import TextIO

_REDRAW_EVERY_S = 0.1  # a redraw per item would slow down fast loops and flicker


def wanted(json_stdout: bool = False) -> bool:
    """Whether to draw: stderr is a terminal, and no JSON is being written to it as well.

    A command that prints JSON on stdout passes ``json_stdout=True``: the bar then shows when
    stdout goes to a file or pipe, and stays away from JSON lines on the same terminal.
    """
    return sys.stderr.isatty() and not (json_stdout and sys.stdout.isatty())


class Progress:
    """``label [#####.....] done/total  pct  rate/s  eta``; a count and rate if total is None."""

    def __init__(self, total: int | None, label: str, *, enabled: bool,
                 stream: TextIO | None = None) -> None:
        self.total = total
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.monotonic()
        self._drawn_at = 0.0

    def advance(self, step: int = 1) -> None:
        self.done += step
        now = time.monotonic()
        if self.enabled and (now - self._drawn_at >= _REDRAW_EVERY_S or self.done == self.total):
            self._drawn_at = now
            self._draw(now)

    def close(self) -> None:
        """End the bar's line, so what is printed next starts on its own."""
        if self.enabled and self._drawn_at:
            self._draw(time.monotonic())
            print(file=self.stream, flush=True)

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        if not self.total:
            return f"{self.label} {self.done}  {rate:.1f}/s"
        share = min(self.done / self.total, 1.0)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        tail = (f" {self.done}/{self.total} {share:4.0%}  {rate:.1f}/s  "
                f"{'eta ' + _duration(eta) if self.done < self.total else _duration(elapsed)}")
        room = shutil.get_terminal_size((80, 24)).columns - len(self.label) - len(tail) - 4
        width = max(10, min(40, room))
        filled = int(share * width)
        return f"{self.label} [{'#' * filled}{'.' * (width - filled)}]{tail}"

    def _draw(self, now: float) -> None:
        # \r back to the line's start; \x1b[K clears what a longer previous line left behind.
        print(f"\r{self.line(now)}\x1b[K", end="", file=self.stream, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
