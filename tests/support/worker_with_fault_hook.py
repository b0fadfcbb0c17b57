"""`dupwatch worker` with a fault hook only tests reach (nothing in dupwatch can trigger it).
Its argument is a folder: once ``fail`` exists in it, the shard server's thread raises at its
next pass, as a bug or a lost resource would; the worker's stop that follows waits until
``stop`` exists too, so the test can see the failed worker's probes first
(tests/integration/test_faults.py)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from dupwatch.cli.main import main
from dupwatch.index.sharded import ShardServer


class InjectedFault(RuntimeError):
    """The fault the test asked for."""


def _hook(triggers: Path) -> None:
    tick, stop_the_worker = ShardServer._tick, ShardServer._stop_the_worker

    def tick_or_fail(self: ShardServer) -> None:
        if (triggers / "fail").exists():
            raise InjectedFault(f"fault injected by the test ({triggers / 'fail'} exists)")
        tick(self)

    def stop_when_asked(self: ShardServer) -> None:
        deadline = time.monotonic() + 120  # a test that died meanwhile: stop anyway
        while not (triggers / "stop").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        stop_the_worker(self)

    ShardServer._tick = tick_or_fail  # type: ignore[method-assign]
    ShardServer._stop_the_worker = stop_when_asked  # type: ignore[method-assign]


if __name__ == "__main__":
    _hook(Path(sys.argv[1]))
    raise SystemExit(main(["worker"]))
