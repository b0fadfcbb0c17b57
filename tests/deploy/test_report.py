"""The HTML report of `dupwatch report`, opened in a real headless Chromium."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.report_page import PAGE_SIZE, Scanned, page_data, scan_and_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (`apt-get install chromium`; "
                             ".ci/run installs it when it runs as root)")


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> Scanned:
    return scan_and_report(tmp_path_factory.mktemp("report"))


def chromium(page: Path, fragment: str, tmp_path: Path, *extra: str) -> tuple[str, str]:
    """Load the page headless: (the DOM after its scripts ran, Chromium's log)."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
         *extra, f"{page.as_uri()}{fragment}"],
        capture_output=True, text=True, timeout=120, check=True)
    return result.stdout, result.stderr


def console_messages(log: str) -> list[str]:
    # Chromium logs every console message and uncaught exception of the page as INFO:CONSOLE.
    return [line for line in log.splitlines() if ":CONSOLE" in line]


def shown_pairs(dom: str) -> list[tuple[str, str]]:
    """(verdict, stage) of each pair on the rendered page."""
    return re.findall(r'class="pair" data-verdict="([^"]*)" data-stage="([^"]*)"', dom)


@needs_chromium
def test_the_page_loads_cleanly_and_the_screenshot_shows_the_pairs(scanned: Scanned,
                                                                    tmp_path: Path) -> None:
    dom, log = chromium(scanned.page, "", tmp_path, "--dump-dom")
    assert console_messages(log) == []
    groups = page_data(scanned.page)["groups"]
    assert dom.count('<section class="group">') == PAGE_SIZE
    pages = -(-len(groups) // PAGE_SIZE)
    assert f"page 1 of {pages} · {len(groups)} groups" in dom
    # two thumbnails per pair, as data: URIs
    assert dom.count('src="data:image/jpeg;base64,') == 2 * len(shown_pairs(dom))

    screenshot = tmp_path / "report.png"
    _, log = chromium(scanned.page, "", tmp_path, "--window-size=1280,1000",
                      f"--screenshot={screenshot}")
    assert console_messages(log) == []
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).reshape(-1, 3)
    # Text and boxes alone draw a few hundred colours; photographs draw tens of thousands.
    assert len(np.unique(pixels, axis=0)) > 5000


@needs_chromium
def test_the_filter_and_the_pages_work_in_the_browser(scanned: Scanned, tmp_path: Path) -> None:
    exact = [v for v in scanned.verdicts if v["verdict"] == "exact_duplicate"]
    assert len(exact) > PAGE_SIZE  # so the filtered view has more than one page
    last = -(-len(exact) // PAGE_SIZE)  # each exact copy is alone in its original's group
    dom, log = chromium(scanned.page, f"#verdict=exact_duplicate&page={last}", tmp_path,
                        "--dump-dom")
    assert console_messages(log) == []
    pairs = shown_pairs(dom)
    assert pairs and all(pair == ("exact_duplicate", "sha256") for pair in pairs)
    assert len(pairs) == len(exact) - (last - 1) * PAGE_SIZE
    assert f"page {last} of {last}" in dom

    dom, _ = chromium(scanned.page, "#stage=phash", tmp_path, "--dump-dom")
    assert {stage for _, stage in shown_pairs(dom)} == {"phash"}


@needs_chromium
def test_a_verified_match_marks_the_reused_region_on_the_earlier_image(scanned: Scanned,
                                                                       tmp_path: Path) -> None:
    verified = [v for v in scanned.verdicts if v["stage"] == "verify"]
    assert verified, "the samples' crops are decided by the verify stage"
    dom, log = chromium(scanned.page, "#stage=verify", tmp_path, "--dump-dom")
    assert console_messages(log) == []
    boxes = re.findall(r'class="region"[^>]*style="left:([\d.]+)%;top:([\d.]+)%;'
                       r'width:([\d.]+)%;height:([\d.]+)%"', dom)
    shown = shown_pairs(dom)
    assert shown and all(stage == "verify" for _, stage in shown)
    assert len(boxes) == len(shown)  # one box per pair, on its earlier image
    expected = {tuple(round(100 * x, 2) for x in (r[0], r[1], r[2] - r[0], r[3] - r[1]))
                for r in (v["evidence"]["region"] for v in verified)}
    assert {tuple(float(x) for x in box) for box in boxes} <= expected
    assert "inliers" in dom and "% agree" in dom
