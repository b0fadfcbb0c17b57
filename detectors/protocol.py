"""What a stage of the cascade is."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from dupwatch.imaging.image import ImageInput
from dupwatch.index import Index
from dupwatch.schemas import VerdictLabel


class Stage(Protocol):
    """A way to describe an image, an index to search with it, and a rule for a decisive match."""

    name: str
    label: VerdictLabel        # the verdict this stage gives when it is decisive
    needs_pixels: bool         # False: works on the raw bytes, so no decode is needed
    # True: describes a whole batch in one call (describe_batch, see BatchedStage), and so
    # starts a new lookup round when lookups are round trips (its cost is worth an early stop)
    batched: bool
    # True: checks the candidates the earlier stages found (its lookup is a CandidateQuery of
    # their image ids) instead of searching its index; it starts a new lookup round too
    verifies: bool

    def describe(self, image: ImageInput) -> Any:
        """The image's signal for this stage (a digest, a hash, an embedding)."""

    def new_index(self) -> Index: ...

    def load_index(self, path: Path) -> Index: ...

    def score(self, distance: float) -> float:
        """Calibrated score in [0, 1]: the measured precision of a match at this distance."""

    def recognises(self, distance: float) -> bool:
        """Whether a match this close is this stage's kind of copy (decides the label)."""

    def settles_alone(self, distance: float) -> bool:
        """Whether a match this close may decide without verification, when a verifying stage
        follows (detectors/verify.py): only where the stage cannot be fooled."""


class VerifyingStage(Stage, Protocol):
    """A stage with ``verifies = True``: its hits carry evidence, which names the kind of copy."""

    def label_for(self, evidence: dict[str, Any]) -> VerdictLabel:
        """The label of a match this stage decided, from what it found."""

    def lets_stand(self, evidence: dict[str, Any]) -> bool:
        """Whether an earlier stage's decisive match may stand with this evidence against it
        (it found nothing either way), rather than needing this stage's confirmation."""


class BatchedStage(Stage, Protocol):
    """A stage with ``batched = True``: one call for many images (a model's forward pass)."""

    def describe_batch(self, images: list[ImageInput]) -> list[Any]:
        """Each image's signal, in order."""
