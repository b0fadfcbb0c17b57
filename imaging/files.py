"""Image files on disk: which files a command takes (scan, publish), their ids and types."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dupwatch.errors import UserError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
                 ".webp": "image/webp", ".gif": "image/gif", ".bmp": "image/bmp",
                 ".tif": "image/tiff", ".tiff": "image/tiff"}


@dataclass(frozen=True)
class ImageFile:
    """A file a command takes, with the image id it is checked and published under (unique within
    its selection, see :func:`image_files`); ``content_type`` is guessed from the suffix."""
    image_id: str
    path: Path

    @property
    def content_type(self) -> str | None:
        return CONTENT_TYPES.get(self.path.suffix.lower())


@dataclass(frozen=True)
class FileSelection:
    """What :func:`image_files` took, in order, and what it left out with the reason, which the
    command reports rather than dropping silently."""
    files: list[ImageFile]
    skipped: list[tuple[Path, str]]   # (file, why), for the command to report


def image_files(paths: list[str]) -> FileSelection:
    """Files in argument order, directories walked in sorted order.

    In a directory only files with an image suffix are taken: the others are ``skipped``, as is
    a file given twice. Ids are unique within the selection: each file's path relative to the
    deepest folder that holds every argument (one file: its name; one directory: the path
    inside it; ``a/x.jpg b/x.jpg``: ``a/x.jpg`` and ``b/x.jpg``).
    """
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for arg in paths:
        root = Path(arg)
        if root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    found.append(path)
                else:
                    skipped.append((path, f"not an image file name ({path.suffix or 'no suffix'})"))
        elif root.is_file():
            found.append(root)  # named on purpose: taken whatever its suffix
        else:
            raise UserError(f"{arg}: no such file or directory")
    base = os.path.commonpath([Path(arg).absolute() if Path(arg).is_dir()
                               else Path(arg).absolute().parent for arg in paths]) if paths else ""
    files: list[ImageFile] = []
    seen: set[Path] = set()
    for path in found:
        if path.resolve() in seen:
            skipped.append((path, "given more than once"))
            continue
        seen.add(path.resolve())
        files.append(ImageFile(path.absolute().relative_to(base).as_posix(), path))
    return FileSelection(files, skipped)
