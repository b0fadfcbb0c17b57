"""Commands that make the model's artifacts: `dupwatch model export`, `dupwatch train`."""
from __future__ import annotations

import argparse
import sys

from dupwatch.cli.base import Commands
from dupwatch.settings import Settings


def register(commands: Commands) -> None:
    """Add model and train, in the order `dupwatch --help` lists them."""
    _model_command(commands)
    _train_command(commands)


def _model_command(commands: Commands) -> None:
    model = commands.group("model", "Make the encoder's ONNX exports for the onnx backends.",
                           "Model artefacts made from the pinned weights.", metavar="ACTION")
    export = model.add("export", _model_export,
                       "Write the ONNX exports (fp32 and int8) of the encoder weights.",
                       "Exports the pinned weights (--weights, or the bundled ones) to ONNX, "
                       "quantises a copy to int8 (calibrated on the bundled sample photos) and "
                       "writes both into --export-dir, named by the weights' SHA-256, each with "
                       "a manifest of its own SHA-256 that --embedding-backend onnx|onnx-int8 "
                       "checks at load. Deterministic: the same weights and versions give the "
                       "same bytes. Takes 20-60 s on 2 cores.")
    export.add_argument("--kinds", default="fp32,int8", metavar="KIND,KIND",
                        help="exports to write (fp32 for --embedding-backend onnx, int8 for "
                             "onnx-int8)")


def _train_command(commands: Commands) -> None:
    train = commands.add("train", _train,
                         "Train the siamese encoder on gathered images (photos, screenshots, ...).",
                         "Metric learning (InfoNCE over lookup-shaped pairs: a reference view and "
                         "an edited copy; negatives from the batch, built around mined "
                         "look-alikes) from the ImageNet Lite0 initialisation, or fine-tuning an "
                         "earlier encoder (--init FILE). Seeded; checkpoints every 100 steps into "
                         "--out and resumes from there; uses CUDA when present. Writes encoder.pt "
                         "and training.json (with its SHA-256, for --weights-sha256).")
    train.add_argument("--photos", required=True, metavar="DIR", action="append",
                       help="a gathered image folder with its manifest.csv; repeat for more "
                            "(held-out sources and photos are never loaded)")
    train.add_argument("--out", required=True, metavar="DIR", help="checkpoint and weights folder")
    train.add_argument("--steps", type=int, default=900, help="optimiser steps in all")
    train.add_argument("--batch", type=int, default=48, help="images per step (two views each)")
    train.add_argument("--resolution", type=int, default=160, help="input side in pixels")
    train.add_argument("--seed", type=int, default=1, help="seeds batches and edits")
    train.add_argument("--init", default="imagenet-lite0", metavar="imagenet-lite0|scratch|FILE",
                       help="start from the ImageNet Lite0 backbone, from random weights, or "
                            "fine-tune an earlier encoder, e.g. runs/v1/encoder.pt")
    train.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate")
    train.add_argument("--warmup-steps", type=int, default=50,
                       help="steps of linear warm-up before the cosine decay")
    train.add_argument("--koleo", type=float, default=0.0, metavar="WEIGHT",
                       help="weight of SSCD's entropy (KoLeo) regulariser, which spreads "
                            "unrelated images apart; 0 turns it off")
    train.add_argument("--focus", default="", metavar="FAMILY,FAMILY",
                       help="edit families to over-sample, e.g. rotate90,crop,combo "
                            "(to continue a run on what it finds hardest: raise --steps)")
    train.add_argument("--mine-every", type=int, default=250, metavar="STEPS",
                       help="steps between hard-negative minings (batches built around "
                            "look-alike images under the current encoder); 0 draws batches at "
                            "random")
    train.add_argument("--no-resume", action="store_true",
                       help="start over even if a checkpoint exists")


def _model_export(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from dupwatch.detectors.embedding import WeightsError, pinned_weights
    from dupwatch.model.backends.export import KINDS, default_dir, export

    kinds = tuple(kind for kind in args.kinds.split(",") if kind)
    unknown = sorted(set(kinds) - set(KINDS.values()))
    if unknown or not kinds:
        print(f"dupwatch: --kinds {args.kinds!r}: choose from {', '.join(KINDS.values())}",
              file=sys.stderr)
        return 2
    try:
        weights, digest = pinned_weights(Path(settings.weights) if settings.weights else None,
                                         settings.weights_sha256 or None)
    except WeightsError as error:
        print(f"dupwatch: {error}", file=sys.stderr)
        return 2
    for made in export(weights, digest, settings.export_path() or default_dir(), kinds):
        print(f"{made.kind}: {made.path}")
    return 0


def _train(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.model.train import TrainConfig, train

    config = TrainConfig(photos=tuple(args.photos), out=args.out, steps=args.steps,
                         batch=args.batch, resolution=args.resolution, seed=args.seed,
                         init=args.init, lr=args.lr, warmup_steps=args.warmup_steps,
                         koleo=args.koleo, mine_every=args.mine_every,
                         focus=tuple(f for f in args.focus.split(",") if f))
    weights = train(config, resume=not args.no_resume,
                    log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"weights written to {weights}", file=sys.stderr)
    return 0
