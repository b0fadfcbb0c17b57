"""The import contract of pyproject.toml [tool.importlinter] (docs/architecture.md): folders
along the data path import only downward, no cycles inside a folder. `lint-imports` checks
it on this checkout."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dupwatch

ROOT = Path(__file__).resolve().parents[2]  # the repository root is the dupwatch package
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) \
    or shutil.which("lint-imports")


def test_the_import_contract_holds() -> None:
    assert LINT_IMPORTS, "lint-imports not found: pip install -e '.[test]' (import-linter)"
    # The graph is built from the importable `dupwatch`: make sure it is this checkout, and
    # give the command the same import path as these tests.
    assert Path(dupwatch.__file__).resolve().parent == ROOT, dupwatch.__file__
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(entry for entry in sys.path if entry)}
    result = subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, f"lint-imports failed:\n{result.stdout}\n{result.stderr}"
