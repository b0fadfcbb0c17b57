"""`dupwatch report` on the real photos' verdicts, from a file and from the verdict topic.
(The page in a real headless Chromium: tests/deploy/test_report.py.)"""
from __future__ import annotations

import base64
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer
from PIL import Image

from dupwatch.settings import Settings
from dupwatch.messaging.kafka import confluent_config
from dupwatch.wiring.kafka import ensure_topics, kafka_options
from support.report_page import (
    PAGE_SIZE, THUMB_SIZE, Scanned, dupwatch, image_dirs, page_data, scan_and_report,
)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> Scanned:
    return scan_and_report(tmp_path_factory.mktemp("report"))


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


# Last in the module: pytest groups tests by the broker parameter, and tests after this one
# would have `scanned` set up a second time.
def test_a_report_can_read_the_verdict_topic(scanned: Scanned, stream_settings: Settings,
                                             tmp_path: Path) -> None:
    ensure_topics(stream_settings)
    producer = Producer(confluent_config(kafka_options(stream_settings)))
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
