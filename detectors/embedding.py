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
from dupwatch.imaging.image import ImageInput
from dupwatch.detectors.registry import StageContext, stage
from dupwatch.errors import ConfigError
from dupwatch.index import VectorIndex
from dupwatch.index.vector import VectorIndexOptions
from dupwatch.model import backends, pinned
from dupwatch.model.backends import EmbeddingBackend
from dupwatch.schemas import VerdictLabel
from dupwatch.detectors.options import EmbeddingOptions

DEFAULT_WEIGHTS = pinned.bundled_path()


class WeightsError(ValueError):
    """Weights that must not be loaded, and why (what to do is in the message)."""


class WeightsMismatch(WeightsError):
    """The weights file's SHA-256 is not the one pinned for it: changed, damaged or swapped."""


@dataclass(frozen=True)
class EmbeddingModel:
    """An encoder whose weights file has the SHA-256 the code expects, loaded once and run by
    one of the backends (model/backends/: torch, onnx, onnx-int8)."""
    backend: EmbeddingBackend
    resolution: int
    version: str

    @classmethod
    def load(cls, weights: Path | None = None, resolution: int = 160, device: str = "auto",
             threads: int = 0, *, sha256: str | None = None, backend: str = "onnx",
             export_dir: Path | None = None) -> "EmbeddingModel":
        """The bundled encoder (``weights`` None), or the weights file ``weights``, which must
        have the SHA-256 ``sha256``, or be a bundled file by name (model/pinned.py). Raises
        WeightsError, or BackendError for a backend that cannot run (no export, no runtime)."""
        path, actual = pinned_weights(weights, sha256)
        runner = backends.build(backend, backends.BackendOptions(path, actual, device, threads,
                                                                 export_dir))
        return cls(runner, resolution, f"{path.stem}+{actual[:12]}{runner.version_suffix}")

    @classmethod
    def from_options(cls, options: EmbeddingOptions) -> "EmbeddingModel":
        return cls.load(options.weights, options.resolution, options.device, options.threads,
                        sha256=options.sha256, backend=options.backend,
                        export_dir=options.export_dir)

    @property
    def dim(self) -> int:
        return self.backend.dim

    @property
    def device(self) -> str:
        return self.backend.device

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """One forward pass over all ``images``: (N, dim) unit vectors."""
        return self.backend.embed(backends.pixels_of(images, self.resolution))


def pinned_weights(weights: Path | None, sha256: str | None) -> tuple[Path, str]:
    """The weights file (None: the bundled one) and its SHA-256, once checked against the pin."""
    path = weights or DEFAULT_WEIGHTS
    return path, _checked_digest(path, sha256)


def _checked_digest(path: Path, sha256: str | None) -> str:
    """The file's SHA-256, if it is the one expected of it; else WeightsError saying why."""
    expected = (sha256 or pinned.BUNDLED_WEIGHTS.get(path.name, "")).strip().lower()
    if not expected:
        raise WeightsError(
            f"weights {path} are not pinned: give their SHA-256 with --weights-sha256 "
            f"(DUPWATCH_WEIGHTS_SHA256), e.g. from `sha256sum {path}` or the training run's "
            "training.json, after checking where the file came from")
    try:
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise WeightsError(f"cannot read weights {path}: {exc.strerror}") from None
    if actual != expected:
        raise WeightsMismatch(f"weights {path} have SHA-256 {actual}, expected {expected}: "
                              "the file was changed, damaged or swapped; restore it, or pin the "
                              "weights you mean to run with --weights-sha256")
    return actual


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


def per_image(vectors: np.ndarray, views: list) -> list[np.ndarray]:
    """The rows of ``vectors`` (of all views, in order) split into each image's."""
    bounds = np.cumsum([0] + [len(v) for v in views])
    return [vectors[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class EmbeddingStage:
    """The cascade's costly last stage: an encoder descriptor per view (whole picture, content
    region), searched in a :class:`VectorIndex` by cosine distance; its matches are variants
    unless a cheaper stage recognises them. Batched: ``describe_batch`` is one forward pass over
    many images; ``prepare`` may run ahead on another thread and caches its pixels on the image."""
    name = "embedding"
    label = VerdictLabel.VARIANT
    needs_pixels = True
    batched = True
    verifies = False

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
        pixels = [self.prepare(image) for image in images]
        vectors = self.model.backend.embed(np.concatenate(pixels))
        if self._on_batch is not None:
            self._on_batch(len(images), time.perf_counter() - started)
        return per_image(vectors, pixels)

    def prepare(self, image: ImageInput) -> np.ndarray:
        """The image's views as the encoder takes them, (views, R, R, 3) uint8: made once, here
        or ahead on another thread (Cascade.describe_ahead)."""
        if self.name not in image.prepared:
            image.prepared[self.name] = backends.pixels_of(self.views([image])[0],
                                                           self.model.resolution)
        return image.prepared[self.name]

    @staticmethod
    def views(images: list[ImageInput]) -> list[list[Image.Image]]:
        """Each image's views: the whole picture, then its content region if it has one."""
        return [[image.pixels] + [v for v in [content_region(image.pixels)] if v is not None]
                for image in images]

    def new_index(self) -> VectorIndex:
        return VectorIndex(self.dim, self.index_options)

    def load_index(self, path: Path) -> VectorIndex:
        return VectorIndex.load(path, self.index_options)

    def score(self, distance: float) -> float:
        return self.calibration.score(distance)

    def recognises(self, distance: float) -> bool:
        # Its own matches are variants (its label); one that verification decided is labelled
        # from what verification found, which says more than a cosine does.
        return False

    def settles_alone(self, distance: float) -> bool:
        return False  # look-alike screenshots and pages score as high as copies


@stage("embedding")
def _build(context: StageContext) -> EmbeddingStage:
    if "embedding" not in context.calibrations:
        raise ConfigError("the shipped calibration has no embedding calibration; run "
                          "`dupwatch bench quality --write-calibration`")
    options = context.options.embedding
    try:
        model = EmbeddingModel.from_options(options)
    except (WeightsError, backends.BackendError) as error:
        raise ConfigError(str(error)) from None
    return EmbeddingStage(model, context.calibrations["embedding"], context.on_batch,
                          context.options.vector)
