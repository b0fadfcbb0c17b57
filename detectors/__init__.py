"""Detection: one shared decode, the stages (SHA-256, pHash), and the cascade that runs them."""
from dupwatch.detectors.cascade import Cascade, CascadeResult, build_cascade
from dupwatch.detectors.image import DecodeLimits, ImageInput
from dupwatch.detectors.phash import PHashStage
from dupwatch.detectors.protocol import Stage
from dupwatch.detectors.sha256 import Sha256Stage

__all__ = ["Cascade", "CascadeResult", "DecodeLimits", "ImageInput", "PHashStage", "Sha256Stage",
           "Stage", "build_cascade"]
