"""The pHash stages give imagehash's pHash exactly: upright, and for each of the eight turned or
mirrored views, which the reoriented stage derives from one DCT instead of eight."""
from __future__ import annotations

import imagehash
import numpy as np
import pytest
from PIL import Image

from dupwatch.detectors.phash import PHashStage, ReorientedPHashStage
from dupwatch.imaging.image import DecodeLimits, ImageInput
from dupwatch.imaging.samples import Sample

_T = Image.Transpose
# The reoriented signal's views, in its order: upright, then PIL's transposes.
VIEWS = (None, _T.ROTATE_90, _T.ROTATE_180, _T.ROTATE_270, _T.FLIP_LEFT_RIGHT, _T.TRANSVERSE,
         _T.FLIP_TOP_BOTTOM, _T.TRANSPOSE)


def _imagehash(picture: Image.Image, size: int) -> bytes:
    return np.packbits(imagehash.phash(picture, hash_size=size).hash.ravel()).tobytes()


@pytest.mark.parametrize("size", [8, 16])
def test_every_view_hashes_as_imagehash_hashes_the_turned_picture(samples: list[Sample],
                                                                   size: int) -> None:
    upright, reoriented = PHashStage(size=size), ReorientedPHashStage(size=size)
    code_bytes = size * size // 8
    for sample in samples:
        image = ImageInput(sample.file.path.read_bytes(), DecodeLimits())
        assert upright.describe(image) == _imagehash(image.pixels, size), sample.file.image_id
        small = image.pixels.convert("L").resize((size * 4, size * 4), Image.Resampling.LANCZOS)
        signal = reoriented.describe(image)
        for number, turn in enumerate(VIEWS):
            view = small if turn is None else small.transpose(turn)
            code = signal[number * code_bytes:(number + 1) * code_bytes]
            assert code == _imagehash(view, size), (sample.file.image_id, turn)
