"""A worker that the broker turns down for SASL exits and never logs its password."""
from __future__ import annotations

from pathlib import Path

from dupwatch.settings import Settings
from dupwatch.messaging.broker import free_port
from dupwatch.streams.worker_process import WorkerProcess

PASSWORD = "kafka-pw-7f3a91"


def test_a_worker_that_fails_sasl_never_logs_the_password(bootstrap_servers: str,
                                                          tmp_path: Path) -> None:
    """Debug logging, a SCRAM handshake the broker turns down, and the exit that follows."""
    settings = Settings(bootstrap_servers=bootstrap_servers, security_protocol="SASL_PLAINTEXT",
                        sasl_mechanism="SCRAM-SHA-512", sasl_username="dupwatch",
                        sasl_password=PASSWORD, log_level="debug", web_port=free_port(),
                        stages=["sha256"])
    log = tmp_path / "worker.log"
    worker = WorkerProcess(settings, log).start()
    try:
        worker.process.wait(timeout=120)  # it cannot list its topics, so it gives up (~30 s)
    finally:
        code = worker.stop()
    text = log.read_text(errors="replace")
    assert code != 0 and "SASL" in text  # it did try, and did log about it
    assert PASSWORD not in text
