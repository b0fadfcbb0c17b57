"""The verification stage on real photos: local features, geometry, aligned content.

Copies that the hashes and the embedding rank but cannot decide (crops, small rotations,
perspective) are confirmed; distinct pictures, including hostile and degenerate ones, are not."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from dupwatch.wiring.cascade import build_cascade
from dupwatch.detectors.verify import VerifyStage, compare
from dupwatch.imaging import features
from dupwatch.imaging.features import LocalFeatures, PictureKind
from dupwatch.imaging.samples import Sample
from dupwatch.model import augment
from dupwatch.schemas import VerdictLabel
from dupwatch.settings import Settings

MIN_SCORE = Settings().min_score
# The verify stage as the worker builds it: with the shipped calibration.
VERIFY = build_cascade(Settings(stages=["verify"])).stages[0]


def _originals(samples: list[Sample]) -> list[Image.Image]:
    return [Image.open(s.file.path).convert("RGB") for s in samples if s.role == "original"]


def _jpeg(picture: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=85)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _score(query: Image.Image, reference: Image.Image) -> float:
    """The verify stage's calibrated score for the pair."""
    return VERIFY.score(compare(features.extract(query).to_bytes(),
                                features.extract(reference).to_bytes())[0])


def test_a_signal_fits_its_budget_and_round_trips(samples) -> None:
    for picture in _originals(samples):
        described = features.extract(picture)
        packed = described.to_bytes()
        assert len(packed) <= features.MAX_BYTES
        again = LocalFeatures.from_bytes(packed)
        assert again.kind == described.kind and again.frame == described.frame
        n = len(again.points)
        assert n >= 150  # real photos fill the budget with keypoints
        assert np.array_equal(again.descriptors, described.descriptors[:n])
        assert np.abs(again.points - described.points[:n]).max() <= 1 / 128


@pytest.mark.parametrize("bad", [b"", b"DWLF", b"x" * 100, b"\x00" * 9000])
def test_malformed_signals_are_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        LocalFeatures.from_bytes(bad)


# Of the eight sample photos' copies, how many must be confirmed at min_score: a pasted patch
# hides a quarter of the picture, and cells it covers disagree.
CONFIRMED_OF_8 = {"crop": 7, "rotate": 7, "perspective": 7, "text": 7, "patch": 6}


@pytest.mark.parametrize("family", sorted(CONFIRMED_OF_8))
def test_copies_the_earlier_stages_cannot_decide_are_confirmed(samples, family: str) -> None:
    rng = random.Random(5)
    edit = augment.families()[family]
    confirmed = [_score(_jpeg(edit(picture, rng)), picture) >= MIN_SCORE
                 for picture in _originals(samples)]
    assert len(confirmed) == 8 and sum(confirmed) >= CONFIRMED_OF_8[family], confirmed


def test_distinct_photos_are_refuted(samples) -> None:
    pictures = _originals(samples)
    for i, query in enumerate(pictures):
        for reference in pictures[i + 1:]:
            assert _score(query, reference) < 0.1


def test_the_region_shown_is_where_the_crop_came_from(samples) -> None:
    picture = _originals(samples)[0]
    w, h = picture.size
    crop = picture.crop((int(w * 0.3), int(h * 0.1), w, int(h * 0.9)))
    judged = compare(features.extract(_jpeg(crop)).to_bytes(), features.extract(picture).to_bytes())
    assert VERIFY.score(judged[0]) >= MIN_SCORE
    assert judged[1]["region"] == pytest.approx([0.3, 0.1, 1.0, 0.9], abs=0.03)


def _page(lines: list[str]) -> Image.Image:
    """A page of text in one font on one template: header bar, margins, body lines."""
    page = Image.new("RGB", (600, 800), "white")
    draw = ImageDraw.Draw(page)
    draw.rectangle((0, 0, 600, 60), fill=(40, 60, 120))
    draw.text((20, 18), "Settings - Preferences", font=ImageFont.load_default(22), fill="white")
    font = ImageFont.load_default(16)
    for row, line in enumerate(lines):
        draw.text((40, 90 + 26 * row), line, font=font, fill="black")
    draw.rectangle((420, 740, 580, 780), outline="black")
    draw.text((470, 750), "OK", font=font, fill="black")
    return page


def _words(seed: int, rows: int = 24) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(["alpha", "beta", "gamma", "delta", "option", "value", "enable",
                                 "the", "window", "colour", "size", "files"])
                     for _ in range(rng.randint(4, 9))) for _ in range(rows)]


def _checkerboard(cell: int, size: tuple[int, int] = (512, 384)) -> Image.Image:
    y, x = np.mgrid[: size[1], : size[0]]
    return Image.fromarray((((x // cell + y // cell) % 2) * 255).astype(np.uint8)).convert("RGB")


def _tiles(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    tile = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return Image.fromarray(np.tile(tile, (12, 16, 1)))


HOSTILE_PAIRS = {
    "two pages of one template and font": lambda: (_page(_words(1)), _page(_words(2))),
    "checkerboards of two cell sizes": lambda: (_checkerboard(16), _checkerboard(20)),
    "a checkerboard and its shifted self": lambda: (_checkerboard(16), _checkerboard(16).crop((8, 0, 512, 384))),
    "two different tilings": lambda: (_tiles(1), _tiles(2)),
    "two flat pictures": lambda: (Image.new("RGB", (400, 300), "red"), Image.new("RGB", (400, 300), "blue")),
    "tiny pictures": lambda: (Image.new("RGB", (6, 4), "white"), _tiles(3).resize((5, 5))),
    "extreme aspect ratios": lambda: (_tiles(4).resize((3000, 12)), _tiles(5).resize((3000, 12))),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_PAIRS))
def test_hostile_and_degenerate_pairs_are_never_confirmed(name: str) -> None:
    query, reference = HOSTILE_PAIRS[name]()
    assert _score(query, reference) < 0.5, name


def test_a_page_is_graphic_and_a_photo_is_a_photo(samples) -> None:
    assert features.extract(_page(_words(1))).kind is PictureKind.GRAPHIC
    kinds = [features.extract(p).kind for p in _originals(samples)]
    assert kinds.count(PictureKind.PHOTO) >= len(kinds) - 2


def _outline_object(seed: int) -> bytes:
    """A puzzle-like outline filled with a dark texture of its own, on white: what a hash sees
    is the outline (as with puzzle pieces of different paintings, or two planets)."""
    noise = np.random.default_rng(seed).integers(40, 140, (30, 30, 3), dtype=np.uint8)
    fill = Image.fromarray(noise).resize((300, 300), Image.Resampling.BICUBIC)
    mask = Image.new("L", (300, 300), 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon([(40, 60), (250, 40), (270, 250), (60, 270)], fill=255)
    for x, y in [(150, 50), (260, 150), (150, 260)]:
        draw.ellipse((x - 35, y - 35, x + 35, y + 35), fill=255)
    canvas = Image.new("RGB", (340, 340), "white")
    canvas.paste(fill, (20, 20), mask)
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_distinct_objects_sharing_an_outline_on_white_are_not_duplicates() -> None:
    """The hash stages see only the outline: without verification a loose pHash match decides;
    with it (the default) the pictures disagree and both stay unique."""
    first, second = _outline_object(1), _outline_object(2)
    without = build_cascade(Settings(stages=["sha256", "phash", "phash_reoriented"]))
    with_verify = build_cascade(Settings(stages=["sha256", "phash", "phash_reoriented", "verify"]))
    results = {}
    for name, cascade in (("without", without), ("with", with_verify)):
        cascade.check("t", "first", cascade.image(first))
        results[name] = cascade.check("t", "second", cascade.image(second))
    assert results["without"].label is not VerdictLabel.UNIQUE   # the hash is fooled
    assert results["with"].label is VerdictLabel.UNIQUE


def test_the_default_cascade_decides_a_crop_by_verification_with_its_evidence(samples) -> None:
    cascade = build_cascade(Settings())
    original = next(s for s in samples if s.role == "original")
    picture = Image.open(original.file.path).convert("RGB")
    w, h = picture.size
    buffer = io.BytesIO()
    picture.crop((0, 0, int(w * 0.6), int(h * 0.6))).rotate(8, expand=True).save(buffer, "JPEG")
    cascade.check("t", "original", cascade.image(original.file.path.read_bytes()))
    result = cascade.check("t", "copy", cascade.image(buffer.getvalue()))
    assert result.label is VerdictLabel.VARIANT and result.match.image_id == "original"
    assert result.match.stage == "verify" and result.evidence is not None
    assert result.evidence["inliers"] >= features.MIN_INLIERS and result.evidence["kind"] == "photo"
    verdict = result.to_verdict(image_id="copy", tenant="t", worker="w").to_dict()
    # the copy's outline in the original: the crop's corner, widened by the turned corners
    x0, y0, x1, y1 = verdict["evidence"]["region"]
    assert x0 == y0 == 0 and 0.58 <= x1 <= 0.75 and 0.58 <= y1 <= 0.75


def test_verify_stage_label_names_the_kind_of_copy() -> None:
    stage = VerifyStage()
    whole = {"region": [0.0, 0.0, 1.0, 0.99], "model": "similarity"}
    assert stage.label_for(whole) is VerdictLabel.NEAR_DUPLICATE
    assert stage.label_for({**whole, "model": "homography"}) is VerdictLabel.VARIANT
    assert stage.label_for({**whole, "region": [0.2, 0.2, 0.8, 0.8]}) is VerdictLabel.VARIANT
