"""Decodes that can be stopped: marker pre-checks, decode processes killed at their budget and
capped in memory, and tenants that never wait behind one another's slow images."""
from __future__ import annotations

import io
import os
from collections import Counter

import pytest
from PIL import Image

from dupwatch.bench.hostile import scan_bomb
from dupwatch.imaging import jpeg
from dupwatch.imaging.decode_pool import SUSPECT_WAITING, DecodePool
from dupwatch.imaging.image import DecodeLimits, ImageInput, decode
from dupwatch.schemas import Reason, Rejected
from dupwatch.locations import samples_dir

PHOTO = (samples_dir() / "originals" / "coffee.jpg").read_bytes()
# The decode budget of these tests. Measured on the 2-core development machine, idle: the photo
# decodes in ~50 ms in a fresh decode process (its start-up counts against the budget), a bomb
# runs ~3.5 s. A 300-500 ms budget let photos be stopped as decode_timeout while the machine was
# busy (load average 4-6, the suite beside benchmarks); 1.5 s still stops every bomb.
BUDGET_MS = 1500


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """3,000 scans of a 3000 x 3000 picture: seconds of CPU for ~400 KB."""
    return scan_bomb(side=3000, scans=3000)


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _outcome(image: ImageInput) -> str:
    try:
        image.pixels  # noqa: B018
        return "decoded"
    except Rejected as rejected:
        return rejected.reason.value


def test_the_generated_bomb_is_a_valid_jpeg_of_thousands_of_scans(bomb: bytes) -> None:
    assert jpeg.count_scans(bomb) == 3010  # Pillow's 10 scans and 3,000 repeats
    assert Image.open(io.BytesIO(bomb)).size == (3000, 3000)


@pytest.mark.parametrize("fmt, params, scans", [
    ("JPEG", {}, 1), ("JPEG", {"progressive": True}, 10),
])
def test_scans_are_counted_from_the_markers(fmt: str, params: dict, scans: int) -> None:
    picture = Image.open(io.BytesIO(PHOTO))
    assert jpeg.count_scans(_encode(picture, fmt, **params)) == scans
    # An MPO holds a second JPEG after the first: only the first image counts.
    mpo = _encode(picture, "MPO", save_all=True, append_images=[picture], **params)
    assert jpeg.count_scans(mpo) == scans


def test_a_scan_bomb_is_refused_from_its_markers_before_decoding(bomb: bytes) -> None:
    with pytest.raises(Rejected) as caught:
        decode(bomb, DecodeLimits())
    assert caught.value.reason == Reason.TOO_COMPLEX
    assert "3010 scans, the limit is 100" in caught.value.detail


def test_a_decode_past_its_budget_is_killed_and_its_process_replaced(bomb: bytes) -> None:
    pool = DecodePool(DecodeLimits(timeout_ms=BUDGET_MS, max_scans=0), processes=1)
    assert pool.decode(PHOTO).mode == "RGB"
    first = pool._idle[0].process  # the process that will get the bomb
    with pytest.raises(Rejected) as caught:
        pool.decode(bomb)
    assert caught.value.reason == Reason.DECODE_TIMEOUT and "was stopped" in caught.value.detail
    # Stopped for real: the process is gone (killed and reaped), not decoding on in the back.
    assert not first.is_alive() and first.exitcode == -9
    with pytest.raises(ProcessLookupError):
        os.kill(first.pid, 0)
    assert pool.decode(PHOTO).size == Image.open(io.BytesIO(PHOTO)).size


def test_a_decode_over_its_memory_cap_is_too_large() -> None:
    big = _encode(Image.new("RGBA", (6000, 6000), (10, 20, 30, 40)), "PNG")  # 144 MB decoded
    pool = DecodePool(DecodeLimits(memory_mb=64), processes=1)
    with pytest.raises(Rejected) as caught:
        pool.decode(big)
    assert caught.value.reason == Reason.TOO_LARGE, caught.value.detail
    assert "decode_memory_mb (64 MB)" in caught.value.detail
    assert pool.decode(PHOTO).mode == "RGB"  # the same process goes on


def test_one_tenants_bombs_never_refuse_another_tenants_images(bomb: bytes) -> None:
    """The issue's finding: once 4 decodes ran over, every tenant's decodes were refused."""
    pool = DecodePool(DecodeLimits(timeout_ms=BUDGET_MS, max_scans=0), processes=2)
    work = [("mallory", ImageInput(bomb + b"%d" % n, DecodeLimits())) for n in range(5)]
    work += [(f"shop-{n % 3}", ImageInput(PHOTO + b"\0%d" % n, DecodeLimits())) for n in range(60)]
    work.insert(3, work.pop())  # good images queued among the bombs too
    for future in [pool.submit(tenant, image) for tenant, image in work]:
        future.result(timeout=120)
    outcomes = Counter((tenant == "mallory", _outcome(image)) for tenant, image in work)
    assert outcomes == {(False, "decoded"): 60, (True, "decode_timeout"): 5}


def test_a_tenant_that_overran_cannot_pile_up_more_work(bomb: bytes) -> None:
    pool = DecodePool(DecodeLimits(timeout_ms=BUDGET_MS, max_scans=0), processes=1)
    first = pool.submit("mallory", ImageInput(bomb, DecodeLimits())).result(timeout=60)
    assert _outcome(first) == "decode_timeout"
    images = [ImageInput(bomb + b"%d" % n, DecodeLimits()) for n in range(SUSPECT_WAITING + 2)]
    futures = [pool.submit("mallory", image) for image in images]
    for refused in futures[SUSPECT_WAITING:]:  # at once, without a decode
        with pytest.raises(Rejected, match="already has 8 images waiting or decoding"):
            refused.result(timeout=0)
    other = pool.submit("shop", ImageInput(PHOTO, DecodeLimits())).result(timeout=60)
    assert _outcome(other) == "decoded"  # other tenants are not limited
    for future in futures[:SUSPECT_WAITING]:
        assert _outcome(future.result(timeout=120)) == "decode_timeout"


def test_when_a_tenant_overruns_its_queue_is_cut_to_the_suspect_limit(bomb: bytes) -> None:
    pool = DecodePool(DecodeLimits(timeout_ms=BUDGET_MS, max_scans=0), processes=1)
    futures = [pool.submit("mallory", ImageInput(bomb + b"%d" % n, DecodeLimits()))
               for n in range(12)]  # all queued before the first overrun
    outcomes = []
    for future in futures:
        try:
            outcomes.append(_outcome(future.result(timeout=120)))
        except Rejected as refused:
            outcomes.append("shed" if "already has 8" in refused.detail else refused.detail)
    # one decoding when the first overran, 8 kept waiting, the last 3 shed
    assert outcomes == ["decode_timeout"] * 9 + ["shed"] * 3
