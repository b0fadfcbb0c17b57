"""`dupwatch report` on the samples' verdicts, and the data its page carries: used by
tests/integration/test_report.py and, in a browser, tests/deploy/test_report.py."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dupwatch.locations import samples_dir

PAGE_SIZE = 3
THUMB_SIZE = 120


def dupwatch(*args: str, env: dict[str, str] | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dupwatch", *args], capture_output=True,
                          text=True, timeout=300, check=check, env={**os.environ, **(env or {})})


def image_dirs() -> list[str]:
    return [str(samples_dir() / name) for name in ("originals", "unrelated", "copies")]


def page_data(page: Path) -> dict:
    found = re.search(r'<script id="report-data" type="application/json">(.*?)</script>',
                      page.read_text(), flags=re.S)
    assert found, "the page carries no data"
    return json.loads(found.group(1))


@dataclass
class Scanned:
    verdicts: list[dict]     # as `dupwatch scan` printed them
    jsonl: Path
    page: Path               # the report made from them


def scan_and_report(scratch: Path) -> Scanned:
    """`dupwatch scan` over the samples, then `dupwatch report` on its verdicts, in scratch."""
    jsonl = scratch / "verdicts.jsonl"
    jsonl.write_text(dupwatch("scan", *image_dirs()).stdout)
    page = scratch / "report.html"
    dupwatch("report", "--verdicts", str(jsonl), "--images", *image_dirs(), "--out", str(page),
             "--page-size", str(PAGE_SIZE), "--thumb-size", str(THUMB_SIZE))
    verdicts = [json.loads(line) for line in jsonl.read_text().splitlines()]
    return Scanned(verdicts, jsonl, page)
