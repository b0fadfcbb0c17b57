"""Detection: the stages (SHA-256, pHash, embedding; registered by name), their calibration into
one score, and the cascade that runs them cheapest first against a store."""
from dupwatch.detectors.cascade import Cascade, CascadeResult, new_cascade
from dupwatch.detectors.phash import PHashStage
from dupwatch.detectors.protocol import Stage
from dupwatch.detectors.sha256 import Sha256Stage

__all__ = ["Cascade", "CascadeResult", "PHashStage", "Sha256Stage", "Stage", "new_cascade"]
