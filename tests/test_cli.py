"""The command line as a user runs it: help everywhere, scan, settings from env and flags."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dupwatch.schemas import validate
from dupwatch.settings import Settings
from dupwatch.streams.samples import samples_dir

README = Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = [[], ["demo"], ["worker"], ["publish"], ["verdicts"], ["scan"], ["bench"],
            ["bench", "throughput"], ["bench", "soak"]]


def dupwatch(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dupwatch", *args], capture_output=True,
                          text=True, timeout=300, check=check)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "dupwatch")
def test_every_command_explains_itself(command: list[str]) -> None:
    out = dupwatch(*command, "--help").stdout
    assert out.startswith("usage: dupwatch")
    assert len(out.splitlines()) > 5


def test_scan_prints_one_valid_verdict_per_image_in_order(samples) -> None:
    root = samples_dir()
    result = dupwatch("scan", "--top-k", "2", str(root / "originals"), str(root / "unrelated"),
                      str(root / "copies"))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    expected = {Path(s.file.image_id).name: s for s in samples}
    assert len(lines) == len(expected)
    originals = sorted(p.name for p in (root / "originals").iterdir())
    assert [line["image_id"] for line in lines[: len(originals)]] == originals
    for line in lines:
        assert validate("verdict", line) == []
        sample = expected[line["image_id"]]
        assert line["verdict"] == sample.expected_verdict
        assert (line["match_id"] or "") == Path(sample.source).name if sample.source else True
    assert "scanned 52 images" in result.stderr


def test_scan_reports_a_broken_file_and_carries_on(tmp_path: Path, samples) -> None:
    (tmp_path / "a_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = samples[0].file.path
    result = dupwatch("scan", str(tmp_path / "a_broken.jpg"), str(good), check=False)
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert result.returncode == 1
    assert first["reason"] == "decode_failed" and validate("dead_letter", first) == []
    assert second["verdict"] == "unique"


def test_flags_override_environment_which_overrides_defaults() -> None:
    env = {"DUPWATCH_PHASH_MAX_DISTANCE": "6", "DUPWATCH_URI_ROOTS": "/a,/b",
           "DUPWATCH_WEB_ENABLED": "yes", "DUPWATCH_TOP_K": "4"}
    args = argparse.Namespace(top_k="2", phash_max_distance=None)
    settings = Settings.load(env=env, args=args)
    assert (settings.phash_max_distance, settings.uri_roots, settings.web_enabled,
            settings.top_k) == (6, ["/a", "/b"], True, 2)
    assert Settings.load(env={}).phash_max_distance == Settings().phash_max_distance
    assert Settings.load(env=Settings(top_k=9).to_env()) == Settings(top_k=9, worker_name=Settings().worker_name)


def test_a_bad_setting_says_which_and_why() -> None:
    result = dupwatch("scan", "--top-k", "many", str(samples_dir() / "originals"), check=False)
    assert result.returncode != 0
    assert "top_k" in result.stderr and "many" in result.stderr


def test_the_readme_configuration_table_lists_every_setting() -> None:
    rows = re.findall(r"^\| `(--[a-z0-9-]+)` \| `(DUPWATCH_[A-Z0-9_]+)` \| `([^`]*)` \|",
                      README.read_text(), flags=re.M)
    assert rows == [(flag, env, default) for flag, env, default, _ in Settings.reference_rows()]
