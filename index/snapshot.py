"""Crash-safe, validated snapshots of a directory of index files.

A snapshot is written into ``<name>.partial`` beside its target, every file fsynced, then a
``manifest.json`` (format version, SHA-256 and size of every file, the caller's metadata) is
written and fsynced last, and the directory is swapped in by renames (the old one moved to
``<name>.old`` first and removed after). A crash at any point leaves either the previous
snapshot or the new one, whole; a full disk fails the write and keeps the previous one.

:class:`BackgroundSnapshot` writes one from a forked child: the child sees the parent's memory
as it was at the fork (copy-on-write), so the parent goes on changing and serving the index
while the child writes, and the only pause is the fork itself (copying the page tables: tens
of ms for GBs; `dupwatch bench recovery` measures it). Threads do not survive a fork, and
Python's would hold the GIL for seconds serialising a big index in the parent; the child only
writes files and exits with os._exit (no Kafka client, no OpenMP, no garbage collection runs
in it). Its cost is memory: pages the parent changes meanwhile, and the Python objects the
child walks (reference counts are writes), are copied.

Reading checks the manifest before anything is loaded: a missing, truncated, zeroed or
changed file, or a manifest of another format, raises :class:`SnapshotError` naming the file,
so a caller never serves a partial index (a shard rebuilds from its changelog instead).
"""
from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable, NoReturn

from dupwatch.errors import StateError

FORMAT = 1
MANIFEST = "manifest.json"
_CHUNK = 1 << 20
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class SnapshotError(StateError):
    """A snapshot that must not be loaded; ``path`` is the file at fault."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"index snapshot file {path}: {reason}")
        self.path = path


def write_snapshot(target: Path, fill: Callable[[Path], None], meta: dict | None = None) -> None:
    """Have ``fill`` write the snapshot's files into an empty directory, then make it
    ``target`` atomically (see the module docstring)."""
    partial, old = _beside(target, "partial"), _beside(target, "old")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        fill(partial)
        files = {}
        for file in sorted(p for p in partial.rglob("*") if p.is_file()):
            _fsync(file)
            files[file.relative_to(partial).as_posix()] = {
                "sha256": _digest(file), "bytes": file.stat().st_size}
        for folder in sorted({p.parent for p in partial.rglob("*")}, reverse=True):
            _fsync(folder)
        manifest = partial / MANIFEST
        manifest.write_text(json.dumps({"format": FORMAT, "files": files, "meta": meta or {}}))
        _fsync(manifest)
        _fsync(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # the previous snapshot stays as it was
        raise
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(partial, target)
    _fsync(target.parent)
    shutil.rmtree(old, ignore_errors=True)


class BackgroundSnapshot:
    """:func:`write_snapshot` in a forked child (see the module docstring); :meth:`poll` until it
    ends. Its ``error`` says why one failed (the previous snapshot is kept)."""

    def __init__(self, target: Path, fill: Callable[[Path], None], meta: dict | None = None) -> None:
        self.target = target
        self.error: str | None = None
        self.started = time.monotonic()
        self._reason, writer = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self._reason)
            _write_and_exit(target, fill, meta, writer)
        os.close(writer)

    def cancel(self) -> bool:
        """Stop the child (it writes into a partial copy: the previous snapshot stays whole);
        returns whether it had written the snapshot all the same."""
        os.kill(self.pid, signal.SIGTERM)  # not reaped yet, so the pid is still the child's
        return bool(self.poll(wait=True))

    def poll(self, wait: bool = False) -> bool | None:
        """None while the child writes; then whether the snapshot was written."""
        pid, status = os.waitpid(self.pid, 0 if wait else os.WNOHANG)
        if pid == 0:
            return None
        with os.fdopen(self._reason, "rb") as reason:
            written = os.waitstatus_to_exitcode(status) == 0
            if not written:
                self.error = reason.read().decode(errors="replace") or \
                    f"the snapshot process ended with status {os.waitstatus_to_exitcode(status)}"
        return written


def _write_and_exit(target: Path, fill: Callable[[Path], None], meta: dict | None,
                    reason: int) -> NoReturn:
    """The child: write the snapshot, report a failure's reason on the pipe, exit at once (no
    atexit handlers, no destructors of the parent's clients)."""
    status = 1
    try:
        gc.disable()  # a collected Kafka client would try to join threads the child lacks
        # Dies with the thread that forked it: an orphan would hold the worker's sockets (its
        # web port) open while it finishes writing.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        os.nice(10)  # the parent's lookups come first on a shared core
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # stopping the worker stops its child
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        write_snapshot(target, fill, meta)
        status = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which logs it
        os.write(reason, repr(exc).encode()[:4000])
    finally:
        os._exit(status)


def read_snapshot(target: Path) -> dict | None:
    """The snapshot's metadata once every file checks out; None if there is no snapshot.
    Raises :class:`SnapshotError` for one that is there but must not be loaded."""
    old = _beside(target, "old")
    if not target.exists() and old.exists():  # a crash between the two renames of a swap
        os.rename(old, target)
    if not target.exists():
        return None
    manifest = target / MANIFEST
    if not manifest.is_file():
        raise SnapshotError(manifest, "missing (a partial snapshot, or one written before "
                                      "dupwatch validated snapshots)")
    try:
        doc = json.loads(manifest.read_text())
        files, version, meta = doc["files"], doc["format"], doc["meta"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise SnapshotError(manifest, f"unreadable ({exc})") from None
    if version != FORMAT:
        raise SnapshotError(manifest, f"format {version}, this dupwatch reads format {FORMAT}")
    for name, expected in files.items():
        file = target / name
        if not file.is_file():
            raise SnapshotError(file, "missing")
        if file.stat().st_size != expected["bytes"]:
            raise SnapshotError(file, f"{file.stat().st_size} bytes, the manifest says "
                                      f"{expected['bytes']} (truncated?)")
        if _digest(file) != expected["sha256"]:
            raise SnapshotError(file, "its SHA-256 is not the manifest's (damaged)")
    return meta


def _beside(target: Path, suffix: str) -> Path:
    return target.with_name(f"{target.name}.{suffix}")


def _digest(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
