"""The cascade on the bundled real photos: right verdicts, right matches, tenants apart."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from dupwatch.detectors import Cascade, build_cascade
from dupwatch.schemas import VerdictLabel
from dupwatch.settings import Settings
from dupwatch.streams.samples import Sample, in_upload_order


def _check(cascade: Cascade, sample: Sample, tenant: str = "t", image_id: str | None = None):
    raw = sample.file.path.read_bytes()
    return cascade.check(tenant, image_id or sample.file.image_id, cascade.image(raw))


def test_every_sample_gets_its_expected_verdict_and_match(samples) -> None:
    cascade = build_cascade(Settings())
    first, second = in_upload_order(samples)
    for sample in first + second:
        result = _check(cascade, sample)
        assert result.label.value == sample.expected_verdict, sample.file.image_id
        if sample.role == "copy":
            assert result.match is not None and result.match.image_id == sample.source
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
