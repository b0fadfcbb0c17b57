"""Where image bytes come from: files on disk (scan, publish) and file:// URIs in events."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from dupwatch.schemas import Reason, Rejected

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
                 ".webp": "image/webp", ".gif": "image/gif", ".bmp": "image/bmp",
                 ".tif": "image/tiff", ".tiff": "image/tiff"}


@dataclass(frozen=True)
class ImageFile:
    image_id: str
    path: Path

    @property
    def content_type(self) -> str | None:
        return CONTENT_TYPES.get(self.path.suffix.lower())


def image_files(paths: list[str]) -> list[ImageFile]:
    """Files in argument order; directories walked in sorted order, image suffixes only.

    A file's id is its name; a file found in a directory is named by its path inside it.
    """
    found: list[ImageFile] = []
    for arg in paths:
        root = Path(arg)
        if root.is_dir():
            found.extend(ImageFile(p.relative_to(root).as_posix(), p)
                         for p in sorted(root.rglob("*"))
                         if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif root.is_file():
            found.append(ImageFile(root.name, root))
        else:
            raise SystemExit(f"dupwatch: {arg}: no such file or directory")
    return found


def read_uri(uri: str, roots: list[str], max_bytes: int) -> bytes:
    """Bytes behind a ``file://`` URI that resolves (links followed) inside one of ``roots``."""
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise Rejected(Reason.FETCH_FAILED, f"only local file:// URIs are supported, got {uri!r}")
    if not roots:
        raise Rejected(Reason.FETCH_FAILED,
                       "file:// URIs are disabled: the worker has no uri_roots configured")
    path = Path(os.path.realpath(unquote(parsed.path)))
    if not any(path.is_relative_to(os.path.realpath(root)) for root in roots):
        raise Rejected(Reason.FETCH_FAILED, f"{uri!r} is outside the configured uri_roots")
    if not path.is_file():  # a FIFO or device would block the worker
        raise Rejected(Reason.FETCH_FAILED, f"{uri!r} is not a regular file")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise Rejected(Reason.TOO_LARGE, f"{uri!r} is {size} bytes, the limit is {max_bytes}")
        with path.open("rb") as handle:
            return handle.read(max_bytes + 1)
    except OSError as exc:
        raise Rejected(Reason.FETCH_FAILED, f"cannot read {uri!r}: {exc.strerror}") from None
