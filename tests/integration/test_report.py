"""`dupwatch report` on the real photos' verdicts, opened in a real headless Chromium."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer
from PIL import Image

from dupwatch.settings import Settings
from dupwatch.messaging.kafka import confluent_config, ensure_topics
from dupwatch.locations import samples_dir

PAGE_SIZE = 3
THUMB_SIZE = 120
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (`apt-get install chromium`; "
                             ".ci/run installs it when it runs as root)")


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


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> Scanned:
    scratch = tmp_path_factory.mktemp("report")
    jsonl = scratch / "verdicts.jsonl"
    jsonl.write_text(dupwatch("scan", *image_dirs()).stdout)
    page = scratch / "report.html"
    dupwatch("report", "--verdicts", str(jsonl), "--images", *image_dirs(), "--out", str(page),
             "--page-size", str(PAGE_SIZE), "--thumb-size", str(THUMB_SIZE))
    verdicts = [json.loads(line) for line in jsonl.read_text().splitlines()]
    return Scanned(verdicts, jsonl, page)


def test_every_duplicate_is_paired_with_its_match_and_has_thumbnails(scanned: Scanned,
                                                                     original_of) -> None:
    data = page_data(scanned.page)
    duplicates = {v["image_id"]: v for v in scanned.verdicts if v["match_id"]}
    pairs = [pair for group in data["groups"] for pair in group["pairs"]]
    assert {p["id"]: p["match"] for p in pairs} == {i: v["match_id"] for i, v in duplicates.items()}
    assert len(pairs) == len(duplicates) > 0
    for pair in pairs:
        expected = duplicates[pair["id"]]
        assert (pair["verdict"], pair["stage"], pair["score"]) == (
            expected["verdict"], expected["stage"], expected["score"])
    # Every copy in the samples derives from an original (matched directly or through an
    # earlier copy of it): one group per original with copies, rooted at the original.
    roots = {original_of[v["match_id"]] for v in duplicates.values()}
    assert sorted(g["root"] for g in data["groups"]) == sorted(roots)
    for image_id, uri in data["thumbs"].items():
        assert uri and uri.startswith("data:image/jpeg;base64,"), image_id
        thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert max(thumb.size) <= THUMB_SIZE and thumb.format == "JPEG"
    assert data["verdictCounts"] == dict(Counter(v["verdict"] for v in scanned.verdicts))


def test_an_image_without_a_file_gets_a_placeholder_not_a_failure(scanned: Scanned,
                                                                  tmp_path: Path) -> None:
    page = tmp_path / "no-images.html"
    result = dupwatch("report", "--verdicts", str(scanned.jsonl), "--out", str(page))
    assert set(page_data(page)["thumbs"].values()) == {None}
    assert "not found in --images" in result.stderr


def test_a_missing_verdicts_file_is_named_in_the_error(tmp_path: Path) -> None:
    result = dupwatch("report", "--verdicts", str(tmp_path / "nope.jsonl"), check=False)
    assert result.returncode != 0 and "nope.jsonl: no such file" in result.stderr


def test_report_explains_itself() -> None:
    out = dupwatch("report", "--help").stdout
    for flag in ("--verdicts FILE_OR_TOPIC", "--images PATH", "--out FILE", "--page-size N"):
        assert flag in out


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


# Last in the module: pytest groups tests by the broker parameter, and tests after this one
# would have `scanned` set up a second time.
@pytest.mark.broker
def test_a_report_can_read_the_verdict_topic(scanned: Scanned, stream_settings: Settings,
                                             tmp_path: Path) -> None:
    ensure_topics(stream_settings)
    producer = Producer(confluent_config(stream_settings))
    for verdict in scanned.verdicts:
        producer.produce(stream_settings.verdict_topic, json.dumps(verdict).encode(),
                         key=f"{verdict['tenant']}/{verdict['image_id']}".encode())
    assert producer.flush(30) == 0
    page = tmp_path / "from-topic.html"
    dupwatch("report", "--verdicts", stream_settings.verdict_topic, "--images", *image_dirs(),
             "--out", str(page), "--page-size", str(PAGE_SIZE), "--thumb-size", str(THUMB_SIZE),
             "--max", str(len(scanned.verdicts)), "--idle-timeout", "30",
             env=stream_settings.to_env())
    assert page_data(page) == page_data(scanned.page)
    missing = dupwatch("report", "--verdicts", "no-such-topic", env=stream_settings.to_env(),
                       check=False)
    assert missing.returncode != 0 and "no such topic" in missing.stderr
