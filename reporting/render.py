"""Printing verdicts and dead letters for people (a table) and for programs (JSON lines)."""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from typing import Any, TextIO

# Widths fit every value of these columns; the ids (image, match) and a dead letter's reason
# share what the terminal has left.
_VERDICT, _STAGE, _SCORE, _MS, _TENANT = 15, 16, 5, 6, 10
_GAP = "  "


@dataclass(frozen=True)
class _Widths:
    tenant: int
    image: int
    match: int
    fit: bool   # shorten cells to the widths (a terminal); else let them run over


class TablePrinter:
    """Prints one aligned row per record as it arrives (no buffering: it is a live view).

    On a terminal the columns share its width and long ids are shortened in the middle (a note
    on stderr says so once); into a file or pipe nothing is shortened.
    """

    def __init__(self, out: TextIO, notes: TextIO | None = None) -> None:
        self.out = out
        self.notes = notes or sys.stderr
        self._widths = _widths(out)
        self._header_done = False
        self._noted = False

    def row(self, document: dict[str, Any]) -> None:
        if not self._header_done:
            self._print(["tenant", "image", "verdict", "match", "stage", "score", "ms"])
            self._print(["-" * width for width in self._column_widths()])
            self._header_done = True
        self._print(_cells(document))

    def _column_widths(self) -> list[int]:
        w = self._widths
        return [w.tenant, w.image, _VERDICT, w.match, _STAGE, _SCORE, _MS]

    def _print(self, cells: list[str]) -> None:
        widths = self._column_widths()
        if len(cells) < len(widths):  # a dead letter: its reason spans the last columns
            widths = widths[:3] + [sum(widths[3:]) + len(_GAP) * (len(widths) - 4)]
        fitted = [self._fit(cell, width) for cell, width in zip(cells, widths)]
        print(_GAP.join(fitted).rstrip(), file=self.out, flush=True)

    def _fit(self, text: str, width: int) -> str:
        if len(text) <= width or not self._widths.fit:
            return text.ljust(width)
        if not self._noted:
            print("(long values are shortened with … to fit the terminal; --format jsonl "
                  "prints them in full)", file=self.notes, flush=True)
            self._noted = True
        head = (width - 1) // 2
        return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def _widths(out: TextIO) -> _Widths:
    if not out.isatty():
        return _Widths(tenant=_TENANT, image=34, match=34, fit=False)
    columns = shutil.get_terminal_size((120, 24)).columns
    ids = max(2 * 12, columns - (_TENANT + _VERDICT + _STAGE + _SCORE + _MS + len(_GAP) * 6))
    return _Widths(tenant=_TENANT, image=ids - ids // 2, match=ids // 2, fit=True)


def _cells(document: dict[str, Any]) -> list[str]:
    tenant = document.get("tenant") or "?"
    if "reason" in document:  # a dead letter
        return [tenant, document.get("image_id") or "?", "rejected",
                f"{document['reason']}: {document['detail']}"]
    score = document["score"]
    return [tenant, document["image_id"], document["verdict"], document["match_id"] or "-",
            document["stage"] or "-", "-" if score is None else f"{score:.3f}",
            f"{document['timings_ms'].get('total', 0):.1f}"]


def print_jsonl(document: dict[str, Any], out: TextIO) -> None:
    print(json.dumps(document, separators=(",", ":")), file=out, flush=True)
