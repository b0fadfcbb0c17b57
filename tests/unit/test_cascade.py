"""The cascade on the bundled real photos: right verdicts, right matches, tenants apart."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from dupwatch.detectors import Cascade
from dupwatch.wiring.cascade import build_cascade
from dupwatch.schemas import VerdictLabel
from dupwatch.settings import Settings
from dupwatch.imaging.samples import Sample, in_upload_order


def _check(cascade: Cascade, sample: Sample, tenant: str = "t", image_id: str | None = None):
    raw = sample.file.path.read_bytes()
    return cascade.check(tenant, image_id or sample.file.image_id, cascade.image(raw))


def test_every_sample_gets_its_expected_verdict_and_match(samples, original_of) -> None:
    cascade = build_cascade(Settings())
    first, second = in_upload_order(samples)
    for sample in first + second:
        result = _check(cascade, sample)
        assert result.label.value == sample.expected_verdict, sample.file.image_id
        if sample.role == "copy":
            assert result.match is not None and original_of[result.match.image_id] == sample.source
        else:
            assert result.match is None


def test_the_cascade_stops_at_the_first_decisive_stage(samples) -> None:
    cascade = build_cascade(Settings())
    original = samples[0]
    exact = next(s for s in samples if s.source == original.file.image_id and s.transform == "exact")
    _check(cascade, original)
    result = _check(cascade, exact)
    assert result.match.stage == "sha256" and result.label == VerdictLabel.EXACT_DUPLICATE
    assert "phash" not in result.timings_ms and "decode" not in result.timings_ms


def test_tenants_never_match_each_other(samples) -> None:
    cascade = build_cascade(Settings())
    photo = samples[0]
    assert _check(cascade, photo, tenant="shop-a").label == VerdictLabel.UNIQUE
    assert _check(cascade, photo, tenant="shop-b").label == VerdictLabel.UNIQUE
    again = _check(cascade, photo, tenant="shop-a", image_id="copy-in-a")
    assert again.label == VerdictLabel.EXACT_DUPLICATE and again.match.image_id == photo.file.image_id


def test_a_redelivered_image_never_matches_itself(samples) -> None:
    cascade = build_cascade(Settings())
    for _ in range(3):
        result = _check(cascade, samples[0])
        assert result.label == VerdictLabel.UNIQUE and result.match is None
    assert cascade.store.size()["sha256"]["t"] == 1


def test_top_k_lists_the_closest_candidates(samples) -> None:
    cascade = build_cascade(Settings(top_k=3))
    first, second = in_upload_order(samples)
    for sample in first:
        _check(cascade, sample)
    crop = next(s for s in second if s.transform == "crop")
    result = _check(cascade, crop)
    assert 1 <= len(result.candidates) <= 3
    assert result.candidates[0].image_id == crop.source
    assert [c.score for c in result.candidates] == sorted((c.score for c in result.candidates), reverse=True)


def test_a_saved_cascade_remembers_its_images(samples, tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path / "state"))
    cascade = build_cascade(settings)
    first, second = in_upload_order(samples)
    for sample in first:
        _check(cascade, sample)
    cascade.store.save(settings.state_path())
    restored = build_cascade(settings)
    restored.store.load(settings.state_path())
    assert restored.store.size() == cascade.store.size()
    for sample in second:
        assert _check(restored, sample).label.value == sample.expected_verdict


def test_turned_and_mirrored_copies_are_variants_found_by_the_reoriented_phash(samples) -> None:
    cascade = build_cascade(Settings())
    originals = [s for s in samples if s.role == "original"]
    for sample in originals:
        _check(cascade, sample)
    for number, sample in enumerate(originals):
        photo = Image.open(sample.file.path)
        turned = photo.transpose([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                  Image.Transpose.ROTATE_270, Image.Transpose.FLIP_LEFT_RIGHT,
                                  Image.Transpose.TRANSVERSE][number % 5])
        buffer = io.BytesIO()
        turned.convert("RGB").save(buffer, "JPEG", quality=85)
        result = cascade.check("t", f"turned-{number}", cascade.image(buffer.getvalue()))
        assert result.label == VerdictLabel.VARIANT, sample.file.image_id
        assert result.match.image_id == sample.file.image_id
        assert result.match.stage == "phash_reoriented"
        assert "embedding" not in result.timings_ms  # settled before the costly stage


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 150), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_flat_pictures_match_only_byte_for_byte_in_a_batch_too() -> None:
    cascade = build_cascade(Settings())
    colours = [(0, 0, 0), (255, 255, 255), (200, 10, 10), (10, 10, 200)]
    items = [("t", f"flat-{n}", cascade.image(_png(c))) for n, c in enumerate(colours)]
    items.append(("t", "flat-0-again", cascade.image(_png(colours[0]))))
    results = cascade.check_batch(items)
    assert [(r.label, r.flags) for r in results[:4]] == [(VerdictLabel.UNIQUE, ("low_information",))] * 4
    assert (results[4].label, results[4].match.image_id) == (VerdictLabel.EXACT_DUPLICATE, "flat-0")
    assert "phash" not in results[0].timings_ms  # the pixel stages passed it over


def test_new_bytes_under_an_indexed_id_are_judged_afresh_and_replace_the_old(samples) -> None:
    cascade = build_cascade(Settings(stages=["sha256", "phash"]))
    a, b, c = [s.file.path.read_bytes() for s in samples if s.role != "copy"][:3]
    assert cascade.check("t", "x", cascade.image(a)).flags == ()
    # the same bytes twice in one batch are checked once
    reused, again = cascade.check_batch([("t", "x", cascade.image(b)), ("t", "x", cascade.image(b))])
    assert reused.flags == ("image_id_reused",) and reused is again
    copy = cascade.check("t", "copy", cascade.image(b))
    assert (copy.label, copy.match.image_id) == (VerdictLabel.EXACT_DUPLICATE, "x")
    assert cascade.check("t", "old", cascade.image(a)).label == VerdictLabel.UNIQUE
    # different bytes under one new id, both in one batch: the second is new content too
    first, second = cascade.check_batch([("t", "y", cascade.image(c)), ("t", "y", cascade.image(a))])
    assert (first.flags, second.flags) == ((), ("image_id_reused",))
    assert (second.label, second.match.image_id) == (VerdictLabel.EXACT_DUPLICATE, "old")
