"""A worker as a child process (`python -m dupwatch worker`), for the demo, benchmarks and tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Callable

from dupwatch.settings import Settings


def this_python(settings_env: dict[str, str]) -> list[str]:
    """The worker in this Python, which inherits the settings' variables."""
    return [sys.executable, "-m", "dupwatch", "worker"]


class WorkerProcess:
    """One ``dupwatch worker`` child process run with these settings (passed as ``DUPWATCH_*``
    variables), its output appended to ``log_path``. ``stop`` sends SIGTERM so it leaves its group
    and saves its state (SIGKILL after ``timeout_s``) and returns its exit code; ``wait_ready``
    raises if it exits or is not ready in time. A context manager: stopped on exit.
    ``command`` makes the command line from the settings' variables (another: a worker inside
    a container image, tests/deploy/test_image.py)."""
    def __init__(self, settings: Settings, log_path: Path | None = None,
                 command: Callable[[dict[str, str]], list[str]] = this_python) -> None:
        self.settings = settings
        self.log_path = log_path
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> "WorkerProcess":
        settings_env = self.settings.to_env()
        env = {**os.environ, **settings_env, "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "ab") if self.log_path else None
        self.process = subprocess.Popen(
            self.command(settings_env), env=env,
            stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
        return self

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, so the worker leaves its group and saves its state; SIGKILL if it hangs."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        if self._log:
            self._log.close()
        return code

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until the worker's /readyz answers 200 (group joined, any shards caught up)."""
        url = f"http://127.0.0.1:{self.settings.web_port}/readyz"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:  # not listening yet, or 503 (not ready)
                pass
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"worker {self.settings.worker_name} exited before it was ready")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.settings.worker_name} not ready "
                                   f"after {timeout_s:.0f}s")
            time.sleep(0.5)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
