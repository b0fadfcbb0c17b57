"""Copy-detection transforms modelled on DISC2021's: the edits people make to re-upload a photo.

Each family is a function ``(image, rng) -> image`` drawing its parameters from ``rng``, so the
same seed gives the same copy: training draws fresh ones, the quality benchmark fixes seeds.
"""
from __future__ import annotations

import functools
import io
import random
import string
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from dupwatch.locations import samples_dir

Transform = Callable[[Image.Image, random.Random], Image.Image]


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled FreeType font: no system fonts


def _words(rng: random.Random, count: int) -> str:
    return " ".join("".join(rng.choices(string.ascii_letters, k=rng.randint(2, 8)))
                    for _ in range(count))


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))


def crop(image: Image.Image, rng: random.Random) -> Image.Image:
    """Keep 25-60 % of the area, anywhere in the picture."""
    return image.crop(random_box(image, rng, 0.25, 0.6))


def random_box(image: Image.Image, rng: random.Random, min_area: float, max_area: float
               ) -> tuple[int, int, int, int]:
    """A box of ``min_area``..``max_area`` of the picture's area, of a roughly square aspect
    (0.75-1.33), anywhere in it: (left, top, right, bottom)."""
    area = rng.uniform(min_area, max_area)
    aspect = rng.uniform(0.75, 1.33)
    w = min(image.width, int(image.width * (area * aspect) ** 0.5))
    h = min(image.height, int(image.height * (area / aspect) ** 0.5))
    x, y = rng.randint(0, image.width - w), rng.randint(0, image.height - h)
    return x, y, x + w, y + h


def rotate90(image: Image.Image, rng: random.Random) -> Image.Image:
    return image.rotate(rng.choice([90, 180, 270]), expand=True)


def rotate(image: Image.Image, rng: random.Random) -> Image.Image:
    angle = rng.choice([-1, 1]) * rng.uniform(5, 25)
    return image.rotate(angle, expand=rng.random() < 0.5, fillcolor=_colour(rng),
                        resample=Image.Resampling.BILINEAR)


def flip(image: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.mirror(image) if rng.random() < 0.75 else ImageOps.flip(image)


def colour(image: Image.Image, rng: random.Random) -> Image.Image:
    """Strong colour edits: hue rotation, saturation, brightness, contrast."""
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + rng.randint(30, 225)) % 256
    image = Image.fromarray(hsv, "HSV").convert("RGB")
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.3, 2.0))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.6, 1.4))
    return ImageEnhance.Contrast(image).enhance(rng.uniform(0.5, 1.6))


def greyscale(image: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.grayscale(image).convert("RGB")


def blur(image: Image.Image, rng: random.Random) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 4.0) * max(image.size) / 512))


def jpeg(image: Image.Image, rng: random.Random) -> Image.Image:
    return _reencoded(image, rng.randint(5, 20))


def _reencoded(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def text(image: Image.Image, rng: random.Random) -> Image.Image:
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 3)):
        size = int(min(image.size) * rng.uniform(0.06, 0.15))
        xy = (rng.randint(0, image.width // 2), rng.randint(0, image.height - size))
        draw.text(xy, _words(rng, rng.randint(1, 4)), font=_font(size), fill=_colour(rng),
                  stroke_width=max(1, size // 15), stroke_fill=_colour(rng))
    return image


def sticker(image: Image.Image, rng: random.Random) -> Image.Image:
    """Emoji-like stickers: filled outlined shapes with a face or a symbol."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 3)):
        r = int(min(image.size) * rng.uniform(0.08, 0.2))
        cx, cy = rng.randint(r, max(r, image.width - r)), rng.randint(r, max(r, image.height - r))
        box = (cx - r, cy - r, cx + r, cy + r)
        fill, outline = _colour(rng), _colour(rng)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=fill, outline=outline, width=max(2, r // 8))
        else:
            draw.regular_polygon((cx, cy, r), rng.choice([3, 5, 6]), rotation=rng.uniform(0, 90),
                                 fill=fill, outline=outline)
        draw.text((cx, cy), rng.choice(":-) <3 !! ?? ★ ☺".split()), font=_font(r), fill=outline,
                  anchor="mm")
    return image


def pad(image: Image.Image, rng: random.Random) -> Image.Image:
    border = [int(s * rng.uniform(0.05, 0.3)) for s in (image.width, image.height) * 2]
    return ImageOps.expand(image, border=tuple(border), fill=_colour(rng))


def screenshot(image: Image.Image, rng: random.Random) -> Image.Image:
    """The photo as a post in a phone app: status bar, header, caption, buttons; resized."""
    width = rng.randint(360, 540)
    photo = image.resize((width, max(1, int(image.height * width / image.width))))
    top, bottom = rng.randint(60, 140), rng.randint(80, 220)
    background = rng.choice([(255, 255, 255), (18, 18, 18), (240, 242, 245)])
    ink = (20, 20, 20) if sum(background) > 300 else (230, 230, 230)
    canvas = Image.new("RGB", (width, top + photo.height + bottom), background)
    canvas.paste(photo, (0, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 6), f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}", font=_font(14), fill=ink)
    draw.ellipse((10, top - 48, 50, top - 8), fill=_colour(rng))
    draw.text((60, top - 40), _words(rng, 2), font=_font(16), fill=ink)
    y = top + photo.height + 10
    for _ in range(3):
        draw.rounded_rectangle((10 + _ * 60, y, 50 + _ * 60, y + 24), 6, outline=ink)
    draw.text((10, y + 36), _words(rng, rng.randint(4, 9)), font=_font(15), fill=ink)
    scale = rng.uniform(0.6, 1.0)
    return canvas.resize((int(canvas.width * scale), int(canvas.height * scale)))


def meme(image: Image.Image, rng: random.Random) -> Image.Image:
    """Caption bars above and/or below in bold outlined type."""
    bar = int(image.height * rng.uniform(0.12, 0.25))
    canvas = Image.new("RGB", (image.width, image.height + 2 * bar), (255, 255, 255))
    canvas.paste(image, (0, bar))
    draw = ImageDraw.Draw(canvas)
    for y in (bar // 2, image.height + bar + bar // 2):
        draw.text((image.width // 2, y), _words(rng, rng.randint(2, 4)).upper(),
                  font=_font(int(bar * 0.5)), fill=(0, 0, 0), anchor="mm")
    return canvas if rng.random() < 0.5 else canvas.crop((0, bar, image.width, canvas.height))


def perspective(image: Image.Image, rng: random.Random) -> Image.Image:
    w, h = image.size
    d = lambda s: rng.uniform(0, 0.2) * s  # noqa: E731
    quad = (d(w), d(h), d(w), h - d(h), w - d(w), h - d(h), w - d(w), d(h))
    return image.transform((w, h), Image.Transform.QUAD, quad, Image.Resampling.BILINEAR)


def pixelate(image: Image.Image, rng: random.Random) -> Image.Image:
    factor = rng.uniform(0.05, 0.12)
    small = image.resize((max(4, int(image.width * factor)), max(4, int(image.height * factor))))
    return small.resize(image.size, Image.Resampling.NEAREST)


def noise(image: Image.Image, rng: random.Random) -> Image.Image:
    pixels = np.asarray(image).astype(np.int16)
    generator = np.random.default_rng(rng.randint(0, 2**31))
    noisy = pixels + generator.normal(0, rng.uniform(10, 30), pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def resize(image: Image.Image, rng: random.Random) -> Image.Image:
    """Downscale with an aspect-ratio change."""
    return image.resize((max(16, int(image.width * rng.uniform(0.3, 0.8))),
                         max(16, int(image.height * rng.uniform(0.3, 0.8)))))


class Patch:
    """Another picture pasted over this one, covering 20-30 % of it (DISC's overlay family):
    a rectangle cut from a donor image, anywhere. Donors default to the bundled sample photos;
    training and the quality benchmark pass their own."""

    def __init__(self, donors: Sequence[Image.Image] = ()) -> None:
        self._donors = list(donors)

    def __call__(self, image: Image.Image, rng: random.Random) -> Image.Image:
        donors = self._donors or _bundled_photos()
        donor = donors[rng.randrange(len(donors))]
        area = rng.uniform(0.2, 0.3)
        aspect = rng.uniform(0.6, 1.6)
        w = max(8, min(image.width, int(image.width * (area * aspect) ** 0.5)))
        h = max(8, min(image.height, int(image.height * (area / aspect) ** 0.5)))
        patch = donor.crop(random_box(donor, rng, 0.1, 0.5)).convert("RGB").resize((w, h))
        pasted = image.copy()
        pasted.paste(patch, (rng.randint(0, image.width - w), rng.randint(0, image.height - h)))
        return pasted


@functools.cache
def _bundled_photos() -> tuple[Image.Image, ...]:
    folder = samples_dir() / "originals"
    photos = []
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as photo:
            photo.thumbnail((256, 256))
            photos.append(photo.convert("RGB"))
    return tuple(photos)


_FIXED: dict[str, Transform] = {
    f.__name__: f for f in (crop, rotate90, rotate, flip, colour, greyscale, blur, jpeg, text,
                            sticker, pad, screenshot, meme, perspective, pixelate, noise, resize)
}
def families(donors: Sequence[Image.Image] = ()) -> dict[str, Transform]:
    """Every family by name: the single edits, ``patch`` (overlays cut from ``donors``) and
    ``combo`` (2-3 stacked single edits)."""
    single: dict[str, Transform] = {**_FIXED, "patch": Patch(donors)}

    def combo(image: Image.Image, rng: random.Random) -> Image.Image:
        for name in rng.sample(sorted(single), rng.randint(2, 3)):
            image = single[name](image, rng)
        return image

    return {**single, "combo": combo}


FAMILIES: dict[str, Transform] = families()
SINGLE: tuple[str, ...] = tuple(sorted(name for name in FAMILIES if name != "combo"))


def training_pair(image: Image.Image, rng: random.Random, chosen: dict[str, Transform],
                  focus: tuple[str, ...] = ()) -> tuple[Image.Image, Image.Image]:
    """A positive pair shaped like a lookup: a reference view (the picture as an upload brings
    it: scaled and re-encoded) and a copy view (1-3 edits of any family; with ``focus``, half of
    the copies start with one of those families, the ones the model finds hardest)."""
    return reference_view(image, rng), training_view(image, rng, chosen, focus)


def reference_view(image: Image.Image, rng: random.Random) -> Image.Image:
    """The picture scaled to 50-100 % and saved as a JPEG of quality 60-95."""
    scale = rng.uniform(0.5, 1.0)
    scaled = image.resize((max(16, int(image.width * scale)), max(16, int(image.height * scale))))
    return _reencoded(scaled, rng.randint(60, 95))


def training_view(image: Image.Image, rng: random.Random, chosen: dict[str, Transform],
                  focus: tuple[str, ...] = ()) -> Image.Image:
    """A copy for training: 1-3 edits, any family; see :func:`training_pair` for ``focus``."""
    if focus and rng.random() < 0.5:
        image = chosen[rng.choice(sorted(focus))](image, rng)
    for _ in range(rng.choice([1, 1, 2, 2, 3])):
        image = chosen[rng.choice(SINGLE)](image, rng)
    return image
