"""Regenerate the dupwatch sample copies and manifest.

For every ``originals/X.jpg`` this writes five derived files to ``copies/``:

    X__exact.jpg       byte-identical copy                  -> exact_duplicate
    X__reencode.jpg    re-encoded as JPEG quality 60        -> near_duplicate
    X__resize.jpg      scaled to 50 % (JPEG quality 90)     -> near_duplicate
    X__brightness.jpg  brightness +15 % (JPEG quality 90)   -> near_duplicate
    X__crop.jpg        2 % border cropped off each side     -> near_duplicate

It then writes ``manifest.csv`` listing every sample image (originals,
unrelated distractors and copies) with its expected verdict. The script
uses no randomness, so re-running it gives the same files.

Usage: python samples/generate.py
"""

import csv
import shutil
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parent
ORIGINALS = ROOT / "originals"
UNRELATED = ROOT / "unrelated"
COPIES = ROOT / "copies"
MANIFEST = ROOT / "manifest.csv"

QUALITY = 90
REENCODE_QUALITY = 60
RESIZE_SCALE = 0.5
BRIGHTNESS = 1.15
CROP_FRACTION = 0.02


def _load(path):
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).copy()


def _reencode(img):
    return img, REENCODE_QUALITY


def _resize(img):
    size = (round(img.width * RESIZE_SCALE), round(img.height * RESIZE_SCALE))
    return img.resize(size, Image.Resampling.LANCZOS), QUALITY


def _brightness(img):
    return ImageEnhance.Brightness(img).enhance(BRIGHTNESS), QUALITY


def _crop(img):
    dx = round(img.width * CROP_FRACTION)
    dy = round(img.height * CROP_FRACTION)
    return img.crop((dx, dy, img.width - dx, img.height - dy)), QUALITY


TRANSFORMS = {
    "reencode": _reencode,
    "resize": _resize,
    "brightness": _brightness,
    "crop": _crop,
}


def main():
    COPIES.mkdir(exist_ok=True)
    rows = []
    for role, folder in (("original", ORIGINALS), ("unrelated", UNRELATED)):
        for path in sorted(folder.glob("*.jpg")):
            rows.append([path.relative_to(ROOT).as_posix(), role, "", "", "unique"])

    for src in sorted(ORIGINALS.glob("*.jpg")):
        source = src.relative_to(ROOT).as_posix()

        exact = COPIES / f"{src.stem}__exact.jpg"
        shutil.copyfile(src, exact)
        rows.append([exact.relative_to(ROOT).as_posix(), "copy", source, "exact",
                     "exact_duplicate"])

        img = _load(src)
        for name, transform in TRANSFORMS.items():
            out, quality = transform(img)
            dest = COPIES / f"{src.stem}__{name}.jpg"
            out.save(dest, "JPEG", quality=quality)
            rows.append([dest.relative_to(ROOT).as_posix(), "copy", source, name,
                         "near_duplicate"])

    with open(MANIFEST, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["file", "role", "source", "transform", "expected_verdict"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {MANIFEST.relative_to(ROOT.parent)}")


if __name__ == "__main__":
    main()
