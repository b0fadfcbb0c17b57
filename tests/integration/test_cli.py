"""The command line as a user runs it: help everywhere, scan, a bad setting.

Settings from env and flags are checked in-process in tests/unit/test_settings.py; the commands
that need a broker are tested in test_local_stack.py."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dupwatch.schemas import validate
from dupwatch.settings import Settings
from dupwatch.locations import samples_dir

COMMANDS = [[], ["demo"], ["broker"], ["worker"], ["publish"], ["verdicts"], ["scan"], ["bench"],
            ["bench", "throughput"], ["bench", "soak"], ["bench", "chaos"], ["bench", "embedding"],
            ["model", "export"]]


def dupwatch(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dupwatch", *args], capture_output=True,
                          text=True, timeout=300, check=check)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "dupwatch")
def test_every_command_explains_itself(command: list[str]) -> None:
    out = dupwatch(*command, "--help").stdout
    assert out.startswith("usage: dupwatch")
    assert len(out.splitlines()) > 5


def test_scan_prints_one_valid_verdict_per_image_in_order(samples, original_of) -> None:
    root = samples_dir()
    result = dupwatch("scan", "--top-k", "2", "--format", "jsonl", str(root / "originals"),
                      str(root / "unrelated"), str(root / "copies"))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    expected = {s.file.image_id: s for s in samples}  # ids relative to samples/, as given
    assert len(lines) == len(expected)
    originals = sorted(f"originals/{p.name}" for p in (root / "originals").iterdir())
    assert [line["image_id"] for line in lines[: len(originals)]] == originals
    for line in lines:
        assert validate("verdict", line) == []
        sample = expected[line["image_id"]]
        assert line["verdict"] == sample.expected_verdict
        assert original_of.get(line["match_id"]) == (sample.source or None)
    assert "scanned 52 images" in result.stderr


def test_scan_reports_a_broken_file_and_carries_on(tmp_path: Path, samples) -> None:
    (tmp_path / "a_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = samples[0].file.path
    result = dupwatch("scan", "--format", "jsonl", str(tmp_path / "a_broken.jpg"), str(good),
                      check=False)
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert result.returncode == 1
    assert first["reason"] == "decode_failed" and validate("dead_letter", first) == []
    assert second["verdict"] == "unique"


def test_a_bad_setting_says_which_and_why() -> None:
    result = dupwatch("scan", "--top-k", "many", str(samples_dir() / "originals"), check=False)
    assert result.returncode != 0
    assert "top_k" in result.stderr and "many" in result.stderr


def test_a_bad_list_of_numbers_says_which_and_why() -> None:
    result = dupwatch("bench", "workers", "--counts", "1,x", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--counts: '1,x': expected whole numbers separated by commas" in result.stderr


# -- scan names every file, skips nothing silently, and groups what it found


def _copy_photo(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def test_scan_checks_same_named_files_in_different_folders(tmp_path: Path, samples) -> None:
    photo = samples[0].file.path
    first = _copy_photo(photo, tmp_path / "a" / "IMG_0001.jpg")
    second = _copy_photo(photo, tmp_path / "b" / "IMG_0001.jpg")
    for args in ([str(first), str(second)], [str(tmp_path / "a"), str(tmp_path / "b")]):
        lines = [json.loads(line) for line in  # JSON lines: stdout is not a terminal
                 dupwatch("scan", *args).stdout.splitlines()]
        assert [(line["image_id"], line["verdict"], line["match_id"]) for line in lines] == [
            ("a/IMG_0001.jpg", "unique", None),
            ("b/IMG_0001.jpg", "exact_duplicate", "a/IMG_0001.jpg")]
        assert "sha256" in lines[1]["timings_ms"]  # checked, not taken for a re-delivery


def test_scan_names_what_it_skips_and_the_empty_file_it_rejects(tmp_path: Path, samples) -> None:
    _copy_photo(samples[0].file.path, tmp_path / "photos" / "a.jpg")
    (tmp_path / "photos" / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (tmp_path / "photos" / "empty.jpg").write_bytes(b"")
    result = dupwatch("scan", str(tmp_path / "photos"), check=False)  # JSON lines, as piped
    assert result.returncode == 1
    assert "skipped 1 files" in result.stderr and "logo.svg" in result.stderr
    photo, empty = (json.loads(line) for line in result.stdout.splitlines())  # a.jpg, empty.jpg
    assert validate("dead_letter", empty) == []
    assert (empty["reason"], empty["image_id"]) == ("decode_failed", "empty.jpg")
    assert "empty.jpg" in empty["detail"] and "empty" in empty["detail"]
    assert photo["verdict"] == "unique"


@pytest.fixture(scope="module")
def originals_and_edits(tmp_path_factory: pytest.TempPathFactory, samples) -> Path:
    """photos/originals and photos/edits (smaller or more compressed copies): edits/ sorts
    first, as in a real photo folder."""
    root = tmp_path_factory.mktemp("photos")
    (root / "edits").mkdir()
    for sample in [s for s in samples if s.role == "original"][:3]:
        original = _copy_photo(sample.file.path, root / "originals" / sample.file.path.name)
        with Image.open(original) as image:
            image.convert("RGB").resize((image.width // 2, image.height // 2)).save(
                root / "edits" / f"small_{original.name}", quality=90)
            image.convert("RGB").save(root / "edits" / f"recompressed_{original.name}",
                                      quality=40)
    return root


def test_scan_prints_a_table(originals_and_edits: Path) -> None:
    out = dupwatch("scan", "--format", "table", str(originals_and_edits)).stdout.splitlines()
    assert out[0].split() == ["tenant", "image", "verdict", "match", "stage", "score", "ms"]
    rows = [line.split() for line in out[2:]]
    assert len(rows) == 9 and all(row[0] == "default" for row in rows)
    assert {row[1] for row in rows} == {f"edits/{p.name}" for p in
                                        (originals_and_edits / "edits").iterdir()} | {
        f"originals/{p.name}" for p in (originals_and_edits / "originals").iterdir()}


def test_scan_can_check_the_largest_pictures_first(originals_and_edits: Path) -> None:
    def verdicts(*order: str) -> dict[str, str | None]:
        out = dupwatch("scan", "--format", "jsonl", *order, str(originals_and_edits)).stdout
        return {doc["image_id"]: doc["match_id"] for doc in map(json.loads, out.splitlines())}
    as_given = verdicts()  # edits/ sorts first: the originals come out as their copies
    assert all(as_given[name] for name in as_given if name.startswith("originals/"))
    largest_first = verdicts("--order", "largest")
    assert all(largest_first[name] is None
               for name in largest_first if name.startswith("originals/"))
    assert all(largest_first[name].startswith("originals/")
               for name in largest_first if name.startswith("edits/"))


def test_scan_groups_duplicates_and_keeps_the_best_file_of_each(originals_and_edits: Path) -> None:
    out = dupwatch("scan", "--format", "groups", str(originals_and_edits)).stdout
    assert out.startswith("3 groups of duplicates") and "6 files" in out.splitlines()[0]
    kept = [line.split()[1] for line in out.splitlines() if line.strip().startswith("keep ")]
    removed = [line.split()[1] for line in out.splitlines() if line.strip().startswith("remove ")]
    originals = sorted(str(p) for p in (originals_and_edits / "originals").iterdir())
    assert sorted(kept) == originals
    assert sorted(removed) == sorted(str(p) for p in (originals_and_edits / "edits").iterdir())
    first = dupwatch("scan", "--format", "groups", "--keep", "first",
                     str(originals_and_edits)).stdout
    assert all("/edits/" in line for line in first.splitlines() if line.strip().startswith("keep "))


# -- --help: each command its own options, with their defaults


def test_help_lists_only_the_options_a_command_uses_with_their_defaults() -> None:
    def options(command: str) -> set[str]:
        return set(re.findall(r"^  (--[a-z0-9-]+)", dupwatch(command, "--help").stdout, re.M))
    publish = options("publish")
    assert "--uri-roots" not in publish and not any(o.startswith("--fetch-") for o in publish)
    assert "--stages" not in publish and {"--tenant", "--bootstrap-servers"} <= publish
    assert "--partitions" not in options("verdicts")
    assert "--bootstrap-servers" not in options("scan")
    text = " ".join(dupwatch("publish", "--help").stdout.split())
    assert "[default: 127.0.0.1:9092; env DUPWATCH_BOOTSTRAP_SERVERS]" in text
    assert "tenant) (default: default)" in text
    assert "Kafka connection settings:" in text and "topics settings:" in text
    for command in ("publish", "verdicts", "remove", "broker"):
        assert len(dupwatch(command, "--help").stdout.splitlines()) < 80, command
