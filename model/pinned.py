"""The encoder weights dupwatch ships, pinned by the code: a weights file is code (torch runs
what it describes), so the package, not a file beside the weights, says which bytes to trust.

Shipping new weights: put the file in artifacts/weights/, add its line below (``sha256sum FILE``),
its fp32 ONNX export beside it (``dupwatch model export --kinds fp32``) in BUNDLED_EXPORTS, and
point DEFAULT at it. Weights of your own load only with their SHA-256 given beside them
(``--weights FILE --weights-sha256 HEX``).
"""
from __future__ import annotations

from pathlib import Path

from dupwatch.locations import artifact

# File name in artifacts/weights/ -> its SHA-256.
BUNDLED_WEIGHTS = {
    "encoder-v3.pt": "685b9240779be779cf7202be6dd10b151752d7e4f4a6b689fa7b2ddb54f86110",
}
DEFAULT = "encoder-v3.pt"

# Weights SHA-256 -> the fp32 ONNX export `dupwatch model export` makes of them (file name in
# artifacts/weights/, its SHA-256). Shipped, so the default install runs the encoder on ONNX
# Runtime without PyTorch; tests/unit/test_embedding_backends.py exports the weights again and
# compares the bytes. Shipping new weights: add their export's line too.
BUNDLED_EXPORTS = {
    "685b9240779be779cf7202be6dd10b151752d7e4f4a6b689fa7b2ddb54f86110":
        ("encoder-v3.fp32.onnx", "c9cc060a4ccf30e2a6f272ffda6e28984465651ebe241073b769d3747347cb3c"),
}


def bundled_path(name: str = DEFAULT) -> Path:
    return artifact(f"weights/{name}")
