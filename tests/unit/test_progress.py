"""The progress bar: drawn for a person at a terminal, never mixed into JSON output.

`dupwatch scan` on a pseudo-terminal: tests/integration/test_progress.py."""
from __future__ import annotations

import io

from dupwatch.reporting.progress import Progress


def test_a_disabled_bar_writes_nothing_and_an_enabled_one_ends_its_line() -> None:
    quiet, shown = io.StringIO(), io.StringIO()
    for stream, enabled in ((quiet, False), (shown, True)):
        with Progress(3, "published", enabled=enabled, stream=stream) as bar:
            for _ in range(3):
                bar.advance()
    assert quiet.getvalue() == ""
    assert "published [" in shown.getvalue() and "3/3 100%" in shown.getvalue()
    assert shown.getvalue().endswith("\n")


def test_without_a_total_the_bar_counts() -> None:
    stream = io.StringIO()
    bar = Progress(None, "events", enabled=True, stream=stream)
    bar.advance(5)
    assert bar.line(bar.started + 1.0) == "events 5  5.0/s"
