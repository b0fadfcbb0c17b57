"""How a FAISS-backed index lies on disk: FAISS's own file and the key map beside it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


def save_faiss(path: Path, name: str, write: Callable[[Any, str], None], index: Any,
               keys: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    write(index, str(path / f"{name}.faiss"))
    (path / f"{name}.keys.json").write_text(json.dumps(keys))


def load_faiss(path: Path, name: str, read: Callable[[str], Any]) -> tuple[Any, dict]:
    return read(str(path / f"{name}.faiss")), json.loads((path / f"{name}.keys.json").read_text())
