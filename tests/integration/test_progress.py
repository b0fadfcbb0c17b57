"""The progress bar of `dupwatch scan`: drawn for a person at a terminal, never mixed into JSON
output. (The bar itself, in-process: tests/unit/test_progress.py.)"""
from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dupwatch.locations import samples_dir


PHOTOS = 3


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of a few real photos: enough for a bar, few enough to scan quickly."""
    folder = tmp_path_factory.mktemp("photos")
    for photo in sorted((samples_dir() / "originals").iterdir())[:PHOTOS]:
        shutil.copy(photo, folder / photo.name)
    return folder


def scan_with_terminal(photos: Path, *, stdout_on_terminal: bool) -> tuple[str, str]:
    """Run `dupwatch scan` with stderr (and maybe stdout) on a pseudo-terminal: (tty, stdout)."""
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "dupwatch", "scan", "--format", "jsonl", str(photos)],
            stdout=terminal if stdout_on_terminal else subprocess.PIPE, stderr=terminal,
            timeout=300, check=True)
        os.close(terminal)
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child side is closed and everything is read
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(controller)
    return seen.decode(errors="replace"), (result.stdout or b"").decode()


def test_scan_draws_a_bar_on_the_terminal_when_its_json_goes_to_a_pipe(photos: Path) -> None:
    terminal, stdout = scan_with_terminal(photos, stdout_on_terminal=False)
    assert f"] {PHOTOS}/{PHOTOS} 100%" in terminal
    assert "scanned [" in terminal and "\r" in terminal
    assert len(stdout.splitlines()) == PHOTOS and "scanned [" not in stdout


def test_scan_keeps_the_bar_out_of_json_printed_on_the_terminal(photos: Path) -> None:
    terminal, _ = scan_with_terminal(photos, stdout_on_terminal=True)
    assert '"verdict"' in terminal  # the JSON lines are there...
    assert "scanned [" not in terminal  # ...and no bar between them
