"""Writing benchmark results: JSON for machines, a table for people."""
from __future__ import annotations

import ctypes
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    values = np.array(seconds) * 1000
    return {f"p{q}": round(float(np.percentile(values, q)), 2) for q in (50, 90, 99)}


def rss_bytes() -> int:
    """Resident memory after handing freed heap pages back (build temporaries are not the index)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = [headers, ["---"] * len(headers), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def write_results(path: str, results: dict[str, Any], rows: list[tuple[str, str]]) -> None:
    Path(path).write_text(json.dumps(results, indent=2) + "\n")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    print(f"(JSON written to {path})")
