"""Stage 3: a learned descriptor (our siamese encoder) for heavy edits: crops, rotations,
overlays, colour changes, borders, screenshots. Searched by cosine distance in FAISS.

Each image is described by up to two views: the whole picture and, when the picture has
uniform margins, bars or a frame around a busier region (padding, meme captions, a screenshot
of a post), that region alone. A copy is often a region of the image it copies.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from dupwatch.detectors.calibration import Calibration
from dupwatch.detectors.image import ImageInput
from dupwatch.index import VectorIndex
from dupwatch.index.vector import VectorIndexOptions
from dupwatch.schemas import VerdictLabel

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "model" / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "encoder-v2.pt"


class WeightsMismatch(RuntimeError):
    pass


@dataclass(frozen=True)
class EmbeddingModel:
    """The committed encoder, checked against its recorded SHA-256 and loaded once."""
    encoder: object
    resolution: int
    device: str
    version: str

    @classmethod
    def load(cls, weights: Path = DEFAULT_WEIGHTS, resolution: int = 160, device: str = "auto",
             threads: int = 0) -> "EmbeddingModel":
        import torch

        from dupwatch.model.encoder import Encoder, load_exported

        expected = (weights.parent / (weights.name + ".sha256")).read_text().split()[0]
        actual = hashlib.sha256(weights.read_bytes()).hexdigest()
        if actual != expected:
            raise WeightsMismatch(f"{weights} has SHA-256 {actual}, expected {expected}: "
                                  "the file was changed or damaged; restore it from the repository")
        if threads:
            torch.set_num_threads(threads)
        chosen = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        encoder = Encoder()
        load_exported(encoder, weights)
        encoder = encoder.eval().to(chosen)
        if chosen == "cuda":
            encoder = encoder.half()  # half precision on GPUs: twice the throughput, same ranking
        return cls(encoder, resolution, chosen, f"{weights.stem}+{actual[:12]}")

    @property
    def dim(self) -> int:
        return int(self.encoder.project.out_features)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """One forward pass over all ``images``: (N, dim) unit vectors."""
        import torch

        from dupwatch.model.encoder import as_batch

        pixels = as_batch(images, self.resolution).to(self.device)
        if self.device == "cuda":
            pixels = pixels.half()
        with torch.inference_mode():
            return self.encoder(pixels).float().cpu().numpy()


def content_region(image: Image.Image, tolerance: int = 24, min_fill: float = 0.35) -> Image.Image | None:
    """The busy rectangle inside uniform margins, bars or UI chrome, if there is one.

    A row (column) belongs to the content when at least ``min_fill`` of its pixels differ from
    the border colour; the region is the longest run of such rows, then of such columns within
    it. None when it covers nearly the whole picture or is too small to mean anything.
    """
    small = image.copy()
    small.thumbnail((128, 128))
    pixels = np.asarray(small, dtype=np.int16)
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(edge, axis=0)
    busy = np.abs(pixels - background).max(axis=2) > tolerance
    rows = _longest_run(busy.mean(axis=1) >= min_fill)
    if rows is None:
        return None
    cols = _longest_run(busy[rows[0]:rows[1]].mean(axis=0) >= min_fill)
    if cols is None:
        return None
    h, w = busy.shape
    area = (rows[1] - rows[0]) * (cols[1] - cols[0]) / (h * w)
    if area > 0.9 or area < 0.1:
        return None
    sx, sy = image.width / w, image.height / h
    return image.crop((int(cols[0] * sx), int(rows[0] * sy), int(cols[1] * sx), int(rows[1] * sy)))


def _longest_run(mask: np.ndarray) -> tuple[int, int] | None:
    best, start = None, None
    for i, on in enumerate(list(mask) + [False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            if best is None or i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


class EmbeddingStage:
    name = "embedding"
    label = VerdictLabel.VARIANT
    needs_pixels = True
    batched = True

    def __init__(self, model: EmbeddingModel, calibration: Calibration,
                 on_batch: Callable[[int, float], None] | None = None,
                 index_options: VectorIndexOptions = VectorIndexOptions()) -> None:
        self.model = model
        self.calibration = calibration
        self.index_options = index_options
        self.dim = model.dim
        self._on_batch = on_batch

    def describe(self, image: ImageInput) -> np.ndarray:
        return self.describe_batch([image])[0]

    def describe_batch(self, images: list[ImageInput]) -> list[np.ndarray]:
        """All views of all images in one forward pass; (views, dim) per image."""
        started = time.perf_counter()
        views = [[image.pixels] + [v for v in [content_region(image.pixels)] if v is not None]
                 for image in images]
        vectors = self.model.embed([view for image_views in views for view in image_views])
        if self._on_batch is not None:
            self._on_batch(len(images), time.perf_counter() - started)
        bounds = np.cumsum([0] + [len(v) for v in views])
        return [vectors[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def new_index(self) -> VectorIndex:
        return VectorIndex(self.dim, self.index_options)

    def load_index(self, path: Path) -> VectorIndex:
        return VectorIndex.load(path, self.index_options)

    def score(self, distance: float) -> float:
        return self.calibration.score(distance)

    def recognises(self, distance: float) -> bool:
        return True
