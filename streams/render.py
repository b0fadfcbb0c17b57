"""Printing verdicts and dead letters for people (a table) and for programs (JSON lines)."""
from __future__ import annotations

import json
from typing import Any, TextIO

_COLUMNS = (("image", 34), ("verdict", 16), ("match", 34), ("stage", 7), ("score", 6), ("ms", 7))


class TablePrinter:
    """Prints one aligned row per record as it arrives (no buffering: it is a live view)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._header_done = False

    def row(self, document: dict[str, Any]) -> None:
        if not self._header_done:
            self._print([name for name, _ in _COLUMNS])
            self._print(["-" * width for _, width in _COLUMNS])
            self._header_done = True
        self._print(_cells(document))

    def _print(self, cells: list[str]) -> None:
        line = "  ".join(_fit(cell, width) for cell, (_, width) in zip(cells, _COLUMNS))
        print(line.rstrip(), file=self.out, flush=True)


def _cells(document: dict[str, Any]) -> list[str]:
    if "reason" in document:  # a dead letter
        return [document.get("image_id") or "?", f"REJECTED:{document['reason']}",
                document["detail"], "", "", ""]
    score = document["score"]
    return [document["image_id"], document["verdict"], document["match_id"] or "-",
            document["stage"] or "-", "-" if score is None else f"{score:.3f}",
            f"{document['timings_ms'].get('total', 0):.1f}"]


def _fit(text: str, width: int) -> str:
    return text.ljust(width) if len(text) <= width else text[: width - 1] + "…"


def print_jsonl(document: dict[str, Any], out: TextIO) -> None:
    print(json.dumps(document, separators=(",", ":")), file=out, flush=True)
