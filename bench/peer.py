"""The best open descriptor as a speed peer: SSCD's network (``sscd_disc_mixup``: a ResNet-50
trunk, GeM pooling, a 512-d projection) at the 288 x 288 input of its DISC evaluation
(``--size 288 --preserve_aspect_ratio false``), quantised to int8 for ONNX Runtime the way
dupwatch's own int8 export is.

Nothing downloads here, so its weights are random: the arithmetic, and so the speed, are SSCD's;
the descriptors are not (SSCD's quality figures are in artifacts/MODEL_CARD.md). It only
describes: read, decode (with the same JPEG draft shortcut dupwatch's decoder takes), resize,
forward pass, the next batch decoded on a thread while one is embedded; no index, no search.
Building it needs PyTorch (the ``train`` extra); it is cached after the first run.
"""
from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from dupwatch.imaging.files import ImageFile
from dupwatch.model.backends import pixels_of

SIDE = 288
DIM = 512
BATCH = 16
CACHE = Path.home() / ".cache" / "dupwatch" / "peers" / "sscd-resnet50-288.int8.onnx"


def sscd_int8_rate(files: list[ImageFile], threads: int = 0) -> dict:
    """The peer's images/s over ``files`` (its session built off the clock)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(_built()), options, providers=["CPUExecutionProvider"])
    batches = [files[start:start + BATCH] for start in range(0, len(files), BATCH)]
    started = time.perf_counter()
    with ThreadPoolExecutor(1, thread_name_prefix="peer-decode") as decoder:
        ahead = decoder.submit(_pixels, batches[0])
        for number in range(len(batches)):
            pixels = ahead.result()
            if number + 1 < len(batches):
                ahead = decoder.submit(_pixels, batches[number + 1])
            session.run(None, {"pixels": _normalised(pixels)})
    seconds = time.perf_counter() - started
    return {"name": "SSCD ResNet-50 int8 (ONNX Runtime), 288 px, describe only",
            "images": len(files), "seconds": round(seconds, 2),
            "images_per_s": round(len(files) / seconds, 1), "batch_size": BATCH}


def _pixels(files: list[ImageFile]) -> np.ndarray:
    images = []
    for file in files:
        with Image.open(file.path) as image:
            image.draft("RGB", (SIDE, SIDE))
            images.append(image.convert("RGB"))
    return pixels_of(images, SIDE)


def _normalised(pixels: np.ndarray) -> np.ndarray:
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)
    scaled = pixels.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray((scaled - mean) / std)


def _built() -> Path:
    if not CACHE.exists():
        from dupwatch.model.backends.export import quantised, write_atomically

        CACHE.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(CACHE, quantised(_fp32_graph(), SIDE))
    return CACHE


def _fp32_graph() -> bytes:
    import torch
    import torchvision
    from torch import nn

    from dupwatch.model.encoder import GeM

    torch.manual_seed(0)
    trunk = torchvision.models.resnet50()
    trunk.fc = nn.Identity()
    trunk.avgpool = GeM()
    network = nn.Sequential(trunk, nn.Linear(2048, DIM)).eval()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "peer.onnx"
        torch.onnx.export(network, (torch.zeros(1, 3, SIDE, SIDE),), str(path),
                          input_names=["pixels"], output_names=["vectors"], opset_version=17,
                          dynamo=False, dynamic_axes={"pixels": {0: "n"}, "vectors": {0: "n"}})
        return path.read_bytes()
