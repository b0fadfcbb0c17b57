"""ONNX Runtime on an export of the pinned weights (model/backends/export.py): fp32, or int8."""
from __future__ import annotations

import numpy as np

from dupwatch.model.backends import BackendError, BackendOptions, register


class OnnxBackend:
    """The ``onnx`` and ``onnx-int8`` backends: ONNX Runtime on the checked export of the pinned
    weights (fp32: shipped for the bundled weights; int8 and other weights' exports: ``dupwatch
    model export``), on CUDA when asked or available. Raises BackendError when the export is
    missing or damaged, or CUDA is asked of a CPU-only onnxruntime."""
    def __init__(self, name: str, options: BackendOptions) -> None:
        import onnxruntime as ort

        from dupwatch.model.backends.export import KINDS, default_dir, find_export

        self.name = name
        # fp32 gives the trained module's descriptors up to rounding; int8 ones are others.
        self.version_suffix = "" if KINDS[name] == "fp32" else f"+{name}"
        available = ort.get_available_providers()
        wants_cuda = options.device == "cuda" or (options.device == "auto"
                                                  and "CUDAExecutionProvider" in available)
        if wants_cuda and "CUDAExecutionProvider" not in available:
            raise BackendError(f"backend {name} on cuda needs onnxruntime-gpu; this onnxruntime "
                               f"has only {', '.join(available)}")
        self.device = "cuda" if wants_cuda else "cpu"
        kind = KINDS[name]
        export = find_export(options.export_dir or default_dir(), options.weights_sha256, kind)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.threads
        # No busy-waiting between operators: the cores are shared with the decode processes.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CUDAExecutionProvider"] if wants_cuda else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(export.read_checked(), session_options,
                                            providers=providers)
        self.dim = int(self.session.get_outputs()[0].shape[1])

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        from dupwatch.model.backends.export import as_input

        return self.session.run(None, {"pixels": as_input(pixels)})[0]


register("onnx")(lambda options: OnnxBackend("onnx", options))
register("onnx-int8")(lambda options: OnnxBackend("onnx-int8", options))
