"""What a stage of the cascade is."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from dupwatch.detectors.image import ImageInput
from dupwatch.index import Index
from dupwatch.schemas import VerdictLabel


class Stage(Protocol):
    """A way to describe an image, an index to search with it, and a rule for a decisive match."""

    name: str
    label: VerdictLabel        # the verdict this stage gives when it is decisive
    needs_pixels: bool         # False: works on the raw bytes, so no decode is needed

    def describe(self, image: ImageInput) -> Any:
        """The image's signal for this stage (a digest, a hash, an embedding)."""

    def new_index(self) -> Index: ...

    def load_index(self, path: Path) -> Index: ...

    def score(self, distance: float) -> float:
        """Similarity in [0, 1] (1 is identical) for one of this stage's distances."""

    def is_decisive(self, distance: float) -> bool:
        """Whether a candidate this close is a duplicate according to this stage."""
