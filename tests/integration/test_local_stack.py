"""The local stack as the README runs it (`dupwatch broker`, worker, publish, verdicts, each a
subprocess on a real broker), and every Kafka command when no broker answers."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from dupwatch.settings import Settings
from dupwatch.messaging.broker import free_port
from dupwatch.wiring.kafka import ensure_topics, kafka_publisher
from dupwatch.locations import samples_dir
from support.without_pytorch import env_without_pytorch

ORIGINALS = samples_dir() / "originals"
README = Path(__file__).resolve().parents[2] / "README.md"
DUPWATCH = [sys.executable, "-m", "dupwatch"]


def dupwatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DUPWATCH, *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})}, cwd=README.parent)


class Running:
    """A long-running command whose output lines are collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env={**os.environ, **env}, cwd=README.parent)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        for stream, lines in ((self.process.stdout, self.stdout),
                              (self.process.stderr, self.stderr)):
            threading.Thread(target=lambda s=stream, l=lines: l.extend(iter(s.readline, "")),
                             daemon=True).start()

    def wait_for(self, pattern: str, lines: list[str], timeout_s: float = 120.0) -> str:
        """The first line matching ``pattern``; fails if the command exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = next((line for line in list(lines) if re.search(pattern, line)), None)
            if found is not None:
                return found
            assert self.process.poll() is None, f"exited: {''.join(self.stderr)[-3000:]}"
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r}: {''.join(lines)[-3000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


KAFKA_COMMANDS = [["worker"], ["publish", str(ORIGINALS)], ["verdicts"],
                  ["remove", "--tenant", "t", "some-id"],
                  ["bank", "add", "--tenant", "t", str(ORIGINALS)],
                  ["report", "--verdicts", "dupwatch.verdicts"]]


@pytest.mark.parametrize("command", KAFKA_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_without_a_broker_a_command_says_so_in_one_line(command: list[str],
                                                        closed_port: int) -> None:
    address = f"127.0.0.1:{closed_port}"
    result = dupwatch(*command, "--bootstrap-servers", address)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert address in line and "Connection refused" in line and "dupwatch broker" in line


def test_librdkafka_speaks_only_at_debug_level(closed_port: int) -> None:
    result = dupwatch("verdicts", "--bootstrap-servers", f"127.0.0.1:{closed_port}",
                      "--log-level", "debug")
    assert result.returncode == 2 and "rdkafka" in result.stderr


def test_the_broker_command_serves_the_other_commands_until_stopped() -> None:
    address = f"127.0.0.1:{free_port()}"
    broker = Running([*DUPWATCH, "broker", "--bootstrap-servers", address], env={})
    try:
        assert "Ctrl-C" in broker.wait_for(re.escape(f"listening on {address}"), broker.stdout)
        published = dupwatch("publish", "--bootstrap-servers", address, str(ORIGINALS))
        assert published.returncode == 0
        assert f"published {len(list(ORIGINALS.iterdir()))} images" in published.stderr
        second = dupwatch("broker", "--bootstrap-servers", address)
        assert second.returncode != 0 and f"cannot listen on {address}" in second.stderr
    finally:
        code = broker.stop()
    assert code == 0
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", int(address.rsplit(":", 1)[1])))


def test_verdicts_prints_only_new_ones_unless_from_beginning(stream_settings: Settings) -> None:
    ensure_topics(stream_settings)
    old = [_verdict(f"old-{n}", "unique") for n in range(12)]
    _produce(stream_settings, old)  # in one batch: Tansu lists the end at its first record + 1
    env = stream_settings.to_env()
    replayed = dupwatch("verdicts", "--format", "jsonl", "--idle-timeout", "3", env=env)
    assert replayed.returncode == 0 and replayed.stdout == ""
    everything = dupwatch("verdicts", "--format", "jsonl", "--from-beginning", "--max", "12",
                          "--idle-timeout", "30", env=env)
    assert [json.loads(line)["image_id"] for line in everything.stdout.splitlines()] == [
        doc["image_id"] for doc in old]  # one key, one partition: in order
    follower = Running([*DUPWATCH, "verdicts", "--format", "jsonl", "--max", "2"], env=env)
    follower.wait_for("following", follower.stderr)
    new = [_verdict("a-rather-long-image-id-from-an-upload-service-0001.jpg", "variant",
                    tenant="a-tenant", stage="phash_reoriented"),
           _verdict("new-1", "unique")]
    _produce(stream_settings, new)
    assert follower.process.wait(timeout=60) == 0
    assert [json.loads(line)["image_id"] for line in follower.stdout] == [
        doc["image_id"] for doc in new]
    table = dupwatch("verdicts", "--from-beginning", "--max", "14", "--idle-timeout", "30",
                     env=env).stdout.splitlines()
    assert table[0].split() == ["tenant", "image", "verdict", "match", "stage", "score", "ms"]
    row = next(line.split() for line in table if "phash_reoriented" in line)
    assert row[:3] == ["a-tenant", new[0]["image_id"], "variant"]


def _verdict(image_id: str, label: str, tenant: str = "shop", stage: str | None = None) -> dict:
    match = label != "unique"
    return {"schema_version": 1, "image_id": image_id, "tenant": tenant, "verdict": label,
            "match_id": "original-7" if match else None, "stage": stage if match else None,
            "score": 0.995 if match else None, "distance": 3 if match else None,
            "candidates": [], "timings_ms": {"total": 2.5}, "worker": "test",
            "processed_at": "2026-11-24T10:15:01.250Z", "model_version": None,
            "submitted_at": None, "metadata": {}}


def _produce(settings: Settings, documents: list[dict]) -> None:
    publisher = kafka_publisher(settings, topic=settings.verdict_topic)
    for document in documents:
        publisher.publish_raw(json.dumps(document).encode(), key=b"same-partition")
    publisher.close()


def test_a_worker_logs_its_start_and_rebalances_in_plain_text(stream_settings: Settings,
                                                              worker_factory) -> None:
    worker = worker_factory(stream_settings)  # its output goes to a file, not a terminal
    worker.wait_ready()
    assert worker.stop() == 0
    log = worker.log_path.read_text()
    starts = [line for line in log.splitlines() if "starting: broker" in line]
    assert len(starts) == 1, log[-3000:]
    start = starts[0]
    s = stream_settings
    for part in (f"broker {s.bootstrap_servers}", f"group {s.group_id}",
                 f"topics {s.input_topic} -> {s.verdict_topic}",
                 f"dead letters {s.dead_letter_topic}",
                 f"stages {','.join(s.stages)}", "model encoder-", f"store {s.shards} shards"):
        assert part in start, part
    consumes = rf"rebalance: this worker now consumes .*{re.escape(s.input_topic)} \[0, 1\]"
    assert re.search(consumes, log)
    assert "\x1b" not in log



def test_a_worker_writes_nothing_into_its_working_directory(
        stream_settings: Settings, worker_factory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust's data directory defaults to '<app id>-data/' under the working directory: each
    worker left an empty '<group id>-data/v1/tables' there (the repository root, for tests)."""
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # the worker process inherits it
    worker = worker_factory(stream_settings)
    worker.wait_ready()
    assert worker.stop() == 0
    assert sorted(path.name for path in workdir.iterdir()) == []

def test_the_default_install_runs_every_command_but_training_without_pytorch(
        stream_settings: Settings, tmp_path: Path) -> None:
    env = {**env_without_pytorch(tmp_path / "hidden"), **stream_settings.to_env()}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dupwatch", *args], capture_output=True,
                              text=True, timeout=180, env=env)
    originals = str(ORIGINALS)
    assert run("publish", originals).returncode == 0
    _produce(stream_settings, [_verdict("x", "unique")])
    assert run("verdicts", "--from-beginning", "--max", "1", "--idle-timeout", "30").returncode == 0
    page = tmp_path / "page.html"
    report = run("report", "--verdicts", stream_settings.verdict_topic, "--max", "1",
                 "--idle-timeout", "30", "--out", str(page))
    assert report.returncode == 0 and page.is_file(), report.stderr
    every_stage = run("scan", originals)
    assert every_stage.returncode == 0, every_stage.stderr[-3000:]
    assert f"scanned {len(list(ORIGINALS.iterdir()))} images" in every_stage.stderr
    training = run("train", "--photos", str(tmp_path), "--out", str(tmp_path / "run"))
    assert training.returncode == 2
    assert "pip install 'dupwatch[train]'" in training.stderr
    assert "Traceback" not in training.stderr


def _readme_commands() -> list[str]:
    """The commands of the README's "Run the stack locally", in order."""
    section = README.read_text().split("## Run the stack locally", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```(?:bash|sh)\n(dupwatch [^\n]+)\n", section, flags=re.M)


def test_the_readme_runs_the_stack_in_four_commands(tmp_path: Path, samples) -> None:
    broker_cmd, worker_cmd, verdicts_cmd, publish_cmd = _readme_commands()[:4]
    env = {"DUPWATCH_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
           "DUPWATCH_WEB_PORT": str(free_port()), "DUPWATCH_REBALANCE_TIMEOUT_S": "6",
           "DUPWATCH_SESSION_TIMEOUT_S": "6"}
    started: list[Running] = []
    try:
        broker = Running([*DUPWATCH, *shlex.split(broker_cmd)[1:]], env)
        started.append(broker)
        broker.wait_for("listening on", broker.stdout)
        worker = Running([*DUPWATCH, *shlex.split(worker_cmd)[1:]], env)
        started.append(worker)
        start = worker.wait_for("starting: broker", worker.stderr)
        for part in (env["DUPWATCH_BOOTSTRAP_SERVERS"], "group dupwatch", "dupwatch.images",
                     "stages sha256,phash,phash_reoriented,embedding,verify", "model encoder-", "store"):
            assert part in start, part
        worker.wait_for("rebalance: this worker now consumes .*dupwatch.images", worker.stderr)
        verdicts = Running([*DUPWATCH, *shlex.split(verdicts_cmd)[1:]], env)
        started.append(verdicts)
        verdicts.wait_for("following", verdicts.stderr)
        published = subprocess.run([*DUPWATCH, *shlex.split(publish_cmd)[1:]], text=True,
                                   capture_output=True, env={**os.environ, **env},
                                   cwd=README.parent, timeout=120)
        assert published.returncode == 0, published.stderr
        verdicts.wait_for(re.escape(samples[-1].file.image_id), verdicts.stdout)
        deadline = time.monotonic() + 60
        while len(verdicts.stdout) < 2 + len(samples) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        codes = [running.stop() for running in reversed(started)]
    rows = [line.split() for line in verdicts.stdout[2:]]
    assert sorted(row[1] for row in rows) == sorted(s.file.image_id for s in samples)
    assert {row[2] for row in rows} >= {"unique", "exact_duplicate", "near_duplicate"}
    assert "\x1b" not in "".join(worker.stdout + worker.stderr)  # plain text into a pipe
    assert codes[1:] == [0, 0], "".join(worker.stderr)[-3000:]  # the worker and the broker
