"""`dupwatch lookup`: ask a worker whether image files are already known (POST /v1/lookup); the
command and its client.

Each file is sent as it is (its bytes, never indexed by the worker) over one kept-alive HTTP
connection; the answers print as a table or JSON lines. Exit status, as grep's: 0 when at
least one file matched an indexed image, 1 when none did, 2 when a lookup failed.
"""
from __future__ import annotations

import argparse
import http.client
import json
import mimetypes
import sys
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit

from dupwatch.cli.base import Commands, add_paths_and_tenant, select_files
from dupwatch.imaging.files import ImageFile
from dupwatch.reporting.render import TablePrinter, print_jsonl
from dupwatch.settings import Settings

TIMEOUT_S = 60.0


def register(commands: Commands) -> None:
    """Add `dupwatch lookup`."""
    lookup = commands.add("lookup", _lookup,
                          "Ask a running worker whether image files are already known (never "
                          "indexes them).",
                          "Sends each file to the worker's POST /v1/lookup, which checks it with "
                          "the worker's cascade against every image the tenant's index holds and "
                          "answers as a verdict would, without indexing it. Files are chosen and "
                          "named as by `dupwatch publish`. Needs a token the worker accepts "
                          "(--token or DUPWATCH_TOKEN). Exit status: 0 when at least one file "
                          "matched, 1 when none did, 2 when a lookup failed.")
    add_paths_and_tenant(lookup, tenant_help="tenant whose images to compare with", required=True)
    lookup.add_argument("--url", default="http://127.0.0.1:6066", metavar="URL",
                        help="the worker's web address (its --web-port)")
    lookup.add_argument("--format", choices=["table", "jsonl"], default="table",
                        help="table: one row per file; jsonl: each answer in full, with 'file'")
    lookup.add_argument("--top-k", type=int, default=None, metavar="N",
                        help="candidates to list per answer (default: the worker's top_k)")


def _lookup(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.token:
        print("dupwatch: lookup needs a token: --token or DUPWATCH_TOKEN", file=sys.stderr)
        return 2
    try:
        client = LookupClient(args.url, settings.token)
    except ValueError as exc:
        print(f"dupwatch: {exc}", file=sys.stderr)
        return 2
    files, empty = select_files(args.paths)
    status = run_lookup(files, client, args.tenant, args.format, args.top_k)
    return 2 if empty else status


class LookupFailed(Exception):
    """A lookup the worker did not answer with a result: status (0: no connection) and why."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("detail", ""))
        self.status = status
        self.body = body


@dataclass
class LookupClient:
    """One worker's lookup endpoint, over a connection kept open between lookups."""
    url: str
    token: str
    timeout_s: float = TIMEOUT_S

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--url {self.url!r} is not an http(s):// address of a worker")
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._connection = kind(parts.hostname, parts.port, timeout=self.timeout_s)
        self._path = parts.path.rstrip("/") + "/v1/lookup"

    def look_up(self, data: bytes, tenant: str, content_type: str,
                top_k: int | None = None) -> dict[str, Any]:
        query = {"tenant": tenant, **({"top_k": top_k} if top_k is not None else {})}
        headers = {"Content-Type": content_type, "Authorization": f"Bearer {self.token}"}
        status, body = self._post(f"{self._path}?{urlencode(query)}", data, headers)
        if status != 200:
            raise LookupFailed(status, body)
        return body

    def _post(self, path: str, data: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        for attempt in (1, 2):  # a kept-alive connection the worker has closed: reconnect once
            try:
                self._connection.request("POST", path, body=data, headers=headers)
                response = self._connection.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._connection.close()
                if attempt == 2:
                    raise
            except OSError as exc:
                self._connection.close()
                raise LookupFailed(0, {"error": "unreachable",
                                       "detail": f"cannot reach {self.url}: {exc}"}) from None
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, {"error": "http_error",
                                     "detail": f"HTTP {response.status}: {raw[:200]!r}"}

    def close(self) -> None:
        self._connection.close()


def content_type_of(name: str) -> str:
    guessed = mimetypes.guess_type(name)[0] or ""
    return guessed if guessed.startswith("image/") else "application/octet-stream"


def run_lookup(files: list[ImageFile], client: LookupClient, tenant: str, output: str,
               top_k: int | None, out: TextIO = sys.stdout) -> int:
    """Look every file up and print each answer; the exit status (see the module's doc)."""
    table = TablePrinter(out) if output == "table" else None
    matched = failed = False
    try:
        for file in files:
            try:
                doc = client.look_up(file.path.read_bytes(), tenant, content_type_of(file.path.name),
                                     top_k)
                matched = matched or doc["verdict"] != "unique"
                row = {**doc, "file": str(file.path)}
            except LookupFailed as failure:
                failed = True
                row = {"file": str(file.path), "status": failure.status, **failure.body}
                if failure.status in (0, 401, 403, 404):  # every later file would fail alike
                    _print(row, file, tenant, table, out)
                    break
            _print(row, file, tenant, table, out)
    finally:
        client.close()
    return 2 if failed else 0 if matched else 1


def _print(row: dict[str, Any], file: ImageFile, tenant: str, table: TablePrinter | None,
           out: TextIO) -> None:
    if table is None:
        print_jsonl(row, out)
    elif "verdict" in row:
        table.row({**row, "image_id": file.image_id})
    else:  # shown as a rejection, with its reason (or the HTTP error) and why
        table.row({"tenant": tenant, "image_id": file.image_id,
                   "reason": row.get("reason") or f"HTTP {row['status'] or 'error'}",
                   "detail": row.get("detail", "")})
