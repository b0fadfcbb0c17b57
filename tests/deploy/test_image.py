"""The container image (the repository's Dockerfile), built and run as a user would, without a
Docker daemon: Debian's mmdebstrap makes a base image (bookworm's Python 3.11), pip a wheelhouse
(nothing inside a build reaches a package index here), `buildah build` the image; then a worker
runs inside it, as the image's own non-root user, against the bundled broker on the host, gives
the bundled samples the verdicts `dupwatch demo` expects, and writes nothing outside /tmp."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from dupwatch.imaging.samples import in_upload_order
from dupwatch.messaging.broker import free_port
from dupwatch.messaging.publish import file_events
from dupwatch.settings import Settings
from dupwatch.streams.worker_process import WorkerProcess
from dupwatch.wiring.kafka import ensure_topics, kafka_publisher, topic_reader

REPOSITORY = Path(__file__).resolve().parents[2]
# Kept between runs in buildah's storage, like a registry's base image: the bootstrap takes
# minutes; the image under test is built anew each time.
BASE = "localhost/dupwatch-test-base:bookworm"
IMAGE = "localhost/dupwatch-test:latest"
USER_ID = 10001
WRITABLE = ("/tmp",)
BUILDAH_OWN = ("/proc", "/sys", "/dev", "/run")   # mount points buildah run sets up itself


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return ("building and running an image without a Docker daemon needs root (buildah "
                "--isolation chroot, mmdebstrap); .ci/run runs as root")
    missing = [tool for tool in ("buildah", "mmdebstrap", "git") if shutil.which(tool) is None]
    if missing:
        return (f"needs {' and '.join(missing)} (Debian: apt-get install buildah mmdebstrap; "
                ".ci/run installs them when it runs as root)")
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


def _run(*command: str, timeout: float = 900) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command[:3])}: {result.stderr[-3000:]}"
    return result.stdout.strip()


def _base_image(work: Path) -> str:
    if subprocess.run(["buildah", "inspect", "--type", "image", BASE],
                      capture_output=True).returncode == 0:
        return BASE
    tarball = work / "base.tar"
    _run("mmdebstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm",
         str(tarball))
    container = _run("buildah", "from", "scratch")
    try:
        _run("buildah", "add", "--quiet", container, str(tarball), "/")
        _run("buildah", "commit", "--quiet", container, BASE)
    finally:
        _run("buildah", "rm", container)
    return BASE


def _build_context(work: Path) -> Path:
    """The working tree's files (what a clean clone has, with local changes) and a wheelhouse
    of everything the default install needs, setuptools included for building dupwatch."""
    context = work / "context"
    listed = _run("git", "-C", str(REPOSITORY), "ls-files", "--cached", "--others",
                  "--exclude-standard", "-z")
    for name in filter(None, listed.split("\0")):
        if (REPOSITORY / name).is_file():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPOSITORY / name, context / name)
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir",
         str(context / "wheelhouse"), str(context), "setuptools>=69")
    return context


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("image")
    base = _base_image(work)
    context = _build_context(work)
    _run("buildah", "build", "--isolation", "chroot", "--network", "host", "--quiet",
         "--build-arg", f"BASE={base}",
         "--build-arg", "PIP_OPTIONS=--no-index --find-links /src/wheelhouse",
         "-t", IMAGE, str(context))
    yield IMAGE
    subprocess.run(["buildah", "rmi", IMAGE], capture_output=True)


@pytest.fixture
def container(image: str) -> Iterator[str]:
    name = _run("buildah", "from", image)
    yield name
    subprocess.run(["buildah", "rm", name], capture_output=True)


def test_the_image_runs_as_its_own_user_without_pytorch_or_compilers(image: str) -> None:
    config = json.loads(_run("buildah", "inspect", "--type", "image", image))["OCIv1"]["config"]
    assert config["User"] == f"{USER_ID}:{USER_ID}"
    assert config["Entrypoint"] == ["dupwatch"] and config["Cmd"] == ["worker"]
    assert config["Labels"]["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert config["Labels"]["org.opencontainers.image.version"]
    container = _run("buildah", "from", image)
    try:
        root = Path(_run("buildah", "mount", container))
        site = next(root.glob("opt/dupwatch/lib/python3*/site-packages"))
        assert (site / "onnxruntime").is_dir() and not (site / "torch").exists()
        assert not any((root / "usr/bin" / tool).exists() for tool in ("gcc", "cc", "g++"))
        assert (site / "dupwatch/artifacts/weights/encoder-v3.fp32.onnx").is_file()
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True)
        subprocess.run(["buildah", "rm", container], capture_output=True)


def test_a_worker_inside_the_image_gives_the_demo_verdicts_and_writes_only_to_tmp(
        container: str, stream_settings: Settings, samples, tmp_path: Path) -> None:
    settings = stream_settings.replace(web_port=free_port())
    ensure_topics(settings)
    started = time.time()
    worker = WorkerProcess(settings, tmp_path / "worker.log", command=_in(container))
    with worker, topic_reader(settings, [settings.verdict_topic,
                                         settings.dead_letter_topic]) as reader:
        worker.wait_ready()
        publisher = kafka_publisher(settings)
        received = {}
        for wave in in_upload_order(samples):
            for event in file_events([s.file for s in wave], tenant="image-test"):
                publisher.publish(event)
            publisher.flush()
            for record in reader.records(max_records=len(wave), idle_timeout_s=120):
                received[record.document.get("image_id")] = record.document.get("verdict")
        publisher.close()
        assert _stop_inside(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert received == {s.file.image_id: s.expected_verdict for s in samples}
    assert _written_outside_writable_paths(container, started) == []


def _in(container: str):
    def command(settings_env: dict[str, str]) -> list[str]:
        variables = [f"--env={name}={value}" for name, value in settings_env.items()]
        return ["buildah", "run", "--isolation", "chroot", "--network", "host", *variables,
                container, "--", "dupwatch", "worker"]
    return command


def _stop_inside(worker: WorkerProcess) -> int:
    """SIGTERM to the worker itself (buildah run would kill it outright), as Kubernetes stops a
    pod; the exit status buildah passes on."""
    os.kill(_worker_pid(), signal.SIGTERM)
    assert worker.process is not None
    return worker.process.wait(timeout=60)


def _worker_pid() -> int:
    """The image's Python running `dupwatch worker` (not buildah's wrapper around it, nor its
    decode processes)."""
    for entry in Path("/proc").iterdir():
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            if entry.stat().st_uid == USER_ID and arguments[:3] == [
                    b"/opt/dupwatch/bin/python3", b"/opt/dupwatch/bin/dupwatch", b"worker"]:
                return int(entry.name)
        except (OSError, IndexError):  # not a process, or gone meanwhile
            continue
    raise AssertionError("no `dupwatch worker` process of the image's user")


def _written_outside_writable_paths(container: str, since: float) -> list[str]:
    root = Path(_run("buildah", "mount", container))
    try:
        changed = []
        for path in root.rglob("*"):
            inside = "/" + str(path.relative_to(root))
            if inside.startswith(WRITABLE + BUILDAH_OWN) and inside not in WRITABLE:
                continue
            if not path.is_symlink() and path.stat().st_mtime > since and not path.is_dir():
                changed.append(inside)
        return changed
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True)
