"""ONNX files made from the pinned weights, for the onnx backends: the shipped fp32 export of each
bundled weights file, and `dupwatch model export`'s.

The fp32 export of the bundled weights ships in artifacts/weights/ (15 MB), pinned by its SHA-256
in model/pinned.py like the weights, so the default install runs the encoder on ONNX Runtime
without PyTorch. The export is deterministic (the same weights and versions give the same bytes;
a test exports again and compares with the shipped file). Other exports are made by `dupwatch
model export`: the int8 one (from the shipped fp32 graph: ONNX Runtime and ``onnx`` suffice) and
those of weights of your own (PyTorch: the ``train`` extra). Each such file is named by the SHA-256 of the
weights it came from, so new weights (encoder v3) never meet an export of the old ones, and a
manifest beside it records the SHA-256 of the ONNX bytes, checked at every load. An ONNX graph
is data that ONNX Runtime interprets (unlike a pickled .pt, loading one runs no Python), so a
damaged or swapped file can give wrong numbers, which the check refuses, but cannot run code.

The int8 file is quantised statically (QDQ, per-channel int8 weights, uint8 activations whose
ranges are calibrated on the bundled sample photos): fixed inputs, hence the same ranges each time.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dupwatch.locations import artifact, samples_dir
from dupwatch.model.backends import BackendError, pixels_of
from dupwatch.model.pinned import BUNDLED_EXPORTS

# Backend name -> the export it runs.
KINDS = {"onnx": "fp32", "onnx-int8": "int8"}
CALIBRATION_RESOLUTION = 160
OPSET = 17


def default_dir() -> Path:
    return Path.home() / ".cache" / "dupwatch" / "exports"


@dataclass(frozen=True)
class ExportFile:
    """One ONNX export (``kind`` fp32 or int8) of the weights with SHA-256 ``weights_sha256``, in
    ``folder``, with a manifest beside it. :meth:`read_checked` hands out its bytes only if they
    are the ones the manifest records for those weights, else raises BackendError."""
    folder: Path
    weights_sha256: str
    kind: str

    @property
    def path(self) -> Path:
        return self.folder / f"encoder-{self.weights_sha256[:16]}.{self.kind}.onnx"

    @property
    def manifest(self) -> Path:
        return self.path.with_suffix(".json")

    def read_checked(self) -> bytes:
        """The ONNX bytes, if they are the ones exported from these weights; else BackendError."""
        again = f"run `dupwatch model export --export-dir {self.folder}` to make it again"
        try:
            record = json.loads(self.manifest.read_text())
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise BackendError(f"no {self.kind} ONNX export of weights {self.weights_sha256[:16]} "
                               f"in {self.folder}: run `dupwatch model export --export-dir "
                               f"{self.folder}` (same --weights) first") from None
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot read the export {self.manifest}: {exc}; {again}") from None
        if record.get("weights_sha256") != self.weights_sha256:
            raise BackendError(f"{self.manifest} is of weights {record.get('weights_sha256')}, "
                               f"not {self.weights_sha256}; {again}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != record.get("onnx_sha256"):
            raise BackendError(f"export {self.path} has SHA-256 {actual}, its manifest says "
                               f"{record.get('onnx_sha256')}: the file was changed or damaged; "
                               f"{again}")
        return data


@dataclass(frozen=True)
class ShippedExport:
    """The fp32 export shipped for bundled weights: ``path`` in artifacts/weights/, whose bytes
    must have the SHA-256 ``sha256`` that model/pinned.py records."""
    path: Path
    sha256: str

    def read_checked(self) -> bytes:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise BackendError(f"cannot read the shipped export {self.path}: {exc.strerror}; "
                               "reinstall dupwatch") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.sha256:
            raise BackendError(f"shipped export {self.path} has SHA-256 {actual}, expected "
                               f"{self.sha256}: the file was changed or damaged; reinstall "
                               "dupwatch")
        return data


def shipped_export(weights_sha256: str) -> ShippedExport | None:
    """The fp32 export shipped for these weights, if they are bundled ones."""
    shipped = BUNDLED_EXPORTS.get(weights_sha256)
    return ShippedExport(artifact(f"weights/{shipped[0]}"), shipped[1]) if shipped else None


def find_export(folder: Path, weights_sha256: str, kind: str) -> ShippedExport | ExportFile:
    """Where the ``kind`` export of these weights is: shipped (fp32 of bundled weights), else the
    one `dupwatch model export` writes into ``folder``."""
    shipped = shipped_export(weights_sha256) if kind == "fp32" else None
    return shipped or ExportFile(folder, weights_sha256, kind)


def export(weights: Path, weights_sha256: str, folder: Path,
           kinds: tuple[str, ...] = ("fp32", "int8")) -> list[ExportFile]:
    """Write the ONNX exports of pinned ``weights`` into ``folder`` (atomically, with their
    manifests); returns them. The fp32 graph is the shipped one for bundled weights (PyTorch
    makes it otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    shipped = shipped_export(weights_sha256)
    fp32 = shipped.read_checked() if shipped else torch_export(weights)
    made = []
    for kind in kinds:
        data = fp32 if kind == "fp32" else quantised(fp32)
        target = ExportFile(folder, weights_sha256, kind)
        write_atomically(target.path, data)
        write_atomically(target.manifest, json.dumps(_record(kind, weights_sha256, data), indent=2).encode())
        made.append(target)
    return made


def torch_export(weights: Path) -> bytes:
    """The fp32 ONNX graph of the weights, made by PyTorch's exporter (the ``train`` extra)."""
    import torch

    from dupwatch.model.encoder import Encoder, load_exported

    encoder = Encoder()
    load_exported(encoder, weights)
    probe = torch.zeros(2, 3, CALIBRATION_RESOLUTION, CALIBRATION_RESOLUTION)
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        # The TorchScript exporter: deterministic, no extra packages (the dynamo one needs
        # onnxscript), and it handles this plain convolutional graph fully.
        warnings.simplefilter("ignore", DeprecationWarning)
        path = Path(scratch) / "encoder.onnx"
        torch.onnx.export(encoder.eval(), (probe,), str(path), input_names=["pixels"],
                          output_names=["vectors"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"pixels": {0: "n", 2: "h", 3: "w"}, "vectors": {0: "n"}})
        return path.read_bytes()


def quantised(fp32: bytes, resolution: int = CALIBRATION_RESOLUTION) -> bytes:
    """The fp32 graph (input ``pixels``) quantised to int8, activation ranges calibrated on the
    bundled sample photos at ``resolution``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pixels = _calibration_pixels(resolution)
    batches = iter([{"pixels": as_input(pixels[start:start + 8])}
                    for start in range(0, len(pixels), 8)])

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict | None:
            return next(batches, None)

    with tempfile.TemporaryDirectory() as scratch:
        source, prepared, target = (Path(scratch) / name for name in ("f.onnx", "p.onnx", "q.onnx"))
        source.write_bytes(fp32)
        quant_pre_process(str(source), str(prepared))
        quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        return target.read_bytes()


def _calibration_pixels(resolution: int) -> np.ndarray:
    """The bundled sample photos (originals, unrelated photos and their copies), in name order."""
    from PIL import Image

    root = samples_dir()
    images = [Image.open(path).convert("RGB") for path in sorted(root.glob("*/*.jpg"))]
    return pixels_of(images, resolution)


def as_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> the float NCHW in [0, 1] the exported graph takes."""
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def _record(kind: str, weights_sha256: str, data: bytes) -> dict:
    return {"kind": kind, "weights_sha256": weights_sha256,
            "onnx_sha256": hashlib.sha256(data).hexdigest(),
            "exported_with": {name: _version_of(name) for name in ("torch", "onnx", "onnxruntime")}}


def _version_of(package: str) -> str | None:
    """The installed version, None where it is not installed (int8 from the shipped graph
    needs no PyTorch)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def write_atomically(path: Path, data: bytes) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=f".{path.name}.") as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)
