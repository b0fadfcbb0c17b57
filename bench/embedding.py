"""`dupwatch bench embedding`: the encoder's images/s per backend and batch size (CPU or CUDA)
and, with ``--profile``, where the time of a scan goes, step by step, per image.

The profile runs each step of the cascade over the same photos on its own, on this thread, in
the order a scan runs them: read the file, decode, the cheap stages (SHA-256 and both pHashes),
the verify stage's local features, building the embedding's views, preprocessing (resizing them
to the encoder's input), the forward pass, and the rest of the cascade with every signal ready
(index search, verification of candidates, decisions, indexing). Then the same photos through `dupwatch scan` end to end (start-up excluded), where
decoding runs ahead in the decode processes, so the steps overlap and their sum is more than
the scan's time per image.
"""
from __future__ import annotations

import os
import time
from typing import Callable

from dupwatch.bench.peer import sscd_int8_rate
from dupwatch.bench.report import machine, markdown_table, write_results
from dupwatch.detectors import Cascade
from dupwatch.imaging.image import ImageInput
from dupwatch.detectors.cascade import _applies, _signal
from dupwatch.wiring.cascade import build_cascade, scan_processor
from dupwatch.detectors.embedding import EmbeddingStage, per_image
from dupwatch.model.backends import pixels_of
from dupwatch.schemas import Rejected
from dupwatch.settings import Settings
from dupwatch.locations import samples_dir
from dupwatch.pipeline.scan import scan
from dupwatch.imaging.files import ImageFile, image_files

PROFILE_STEPS = ("read", "decode", "cheap stages", "local features", "views", "preprocess",
                 "forward", "search + decide + index")


def run_embedding_bench(settings: Settings, backends: list[str], batch_sizes: list[int],
                        count: int, profile: bool, peer: bool, photos: list[str],
                        out: str) -> int:
    files = image_files(photos or [str(samples_dir())]).files
    results: dict = {"benchmark": "embedding", "photos": photos or ["(bundled samples)"],
                     "files": len(files), "load_average_before": _load(), "backends": {}}
    rows = []
    if peer:
        results["peer"] = sscd_int8_rate(files, settings.embedding_threads)
        rows.append(("peer", f"{results['peer']['name']}: "
                             f"{results['peer']['images_per_s']:.1f} images/s"))
    for name in backends:
        chosen = settings.replace(embedding_backend=name, state_dir="")
        result = results["backends"][name] = _forward_rates(chosen, files, batch_sizes, count)
        rows += [(f"{name} batch {size}", f"forward {rates['forward_images_per_s']:.1f} images/s, "
                  f"stage with views {rates['stage_images_per_s']:.1f} images/s")
                 for size, rates in result["batches"].items()]
        if profile:
            result["profile_ms_per_image"] = _profile(chosen, files)
        if profile or peer:
            result["scan"] = scan_rate(chosen, files)
            rows.append((f"{name} scan", _scan_row(result["scan"], results.get("peer"))))
    results["load_average_after"] = _load()
    results["machine"] = machine()
    write_results(out, results, rows)
    if profile:
        print(profile_table(results))
    return 0


def _scan_row(scanned: dict, peer: dict | None) -> str:
    row = f"`dupwatch scan` {scanned['images_per_s']:.1f} images/s"
    if peer:
        row += f", {scanned['images_per_s'] / peer['images_per_s']:.2f}x the peer's"
    return row


def profile_table(results: dict) -> str:
    """Steps down, backends across, as in docs/benchmarks.md."""
    names = list(results["backends"])
    data = [results["backends"][name] for name in names]
    rows = [[step] + [f"{d['profile_ms_per_image'][step]:.2f}" for d in data]
            for step in PROFILE_STEPS]
    rows.append(["sum of the steps"] + [f"{sum(d['profile_ms_per_image'].values()):.2f}"
                                        for d in data])
    rows.append(["`scan` end to end, ms/image"] + [f"{1000 / d['scan']['images_per_s']:.2f}"
                                                 for d in data])
    rows.append(["`scan` images/s"] + [f"{d['scan']['images_per_s']:.1f}" for d in data])
    return markdown_table(["ms per image"] + names, rows)


def _forward_rates(settings: Settings, files: list[ImageFile], batch_sizes: list[int],
                   count: int) -> dict:
    cascade = build_cascade(settings.replace(stages=["embedding"]))
    stage: EmbeddingStage = cascade.stages[0]  # type: ignore[assignment]
    images = [cascade.image(files[i % len(files)].path.read_bytes()) for i in range(count)]
    pixels = [image.pixels for image in images]  # decoded outside the clock: this times the encoder
    batches = {}
    for size in batch_sizes:
        stage.describe_batch(images[:size])  # warm-up (allocator, kernels)
        for image in images:
            image.prepared.clear()  # the stage's rate includes making the views
        batches[str(size)] = {"forward_images_per_s": _rate(stage.model.embed, pixels, size),
                              "stage_images_per_s": _rate(stage.describe_batch, images, size)}
    return {"device": stage.model.device, "resolution": stage.model.resolution,
            "model_version": cascade.model_version, "images": count, "batches": batches}


def _profile(settings: Settings, files: list[ImageFile]) -> dict[str, float]:
    cascade = build_cascade(settings)
    stage = next(s for s in cascade.stages if isinstance(s, EmbeddingStage))
    spent = dict.fromkeys(PROFILE_STEPS, 0.0)
    size = max(1, settings.batch_size)
    for start in range(0, len(files), size):
        _profile_batch(cascade, stage, files[start:start + size], spent)
    return {step: round(seconds * 1000 / len(files), 3) for step, seconds in spent.items()}


def _profile_batch(cascade: Cascade, stage: EmbeddingStage, files: list[ImageFile],
                   spent: dict[str, float]) -> None:
    raw = _timed(spent, "read", lambda: [file.path.read_bytes() for file in files])
    images = [cascade.image(data) for data in raw]
    decoded = _timed(spent, "decode", lambda: [_decodes(image) for image in images])
    items = [(file, image) for file, image, ok in zip(files, images, decoded) if ok]
    images = [image for _, image in items]
    steps = (("cheap stages", [s for s in cascade.stages if not (s.batched or s.verifies)]),
             ("local features", [s for s in cascade.stages if s.verifies]))
    for step, chosen in steps:
        _timed(spent, step, lambda: [_signal(s, image) for s in chosen for image in images
                                     if _applies(s, image)])
    embedded = [image for image in images if _applies(stage, image)]
    views = _timed(spent, "views", lambda: stage.views(embedded))
    flat = [view for image_views in views for view in image_views]
    pixels = _timed(spent, "preprocess", lambda: pixels_of(flat, stage.model.resolution))
    vectors = _timed(spent, "forward", lambda: stage.model.backend.embed(pixels))
    for image, signal in zip(embedded, per_image(vectors, views)):
        image.signals[stage.name] = signal
        image.describe_ms[stage.name] = 0.0
    _timed(spent, "search + decide + index", lambda: cascade.check_batch(
        [("bench", file.image_id, image) for file, image in items]))


def _decodes(image: ImageInput) -> bool:
    try:
        image.pixels  # noqa: B018
        return True
    except Rejected:  # not an image: a scan dead-letters it, the profile leaves it out
        return False


def scan_rate(settings: Settings, files: list[ImageFile]) -> dict:
    """`dupwatch scan`'s images/s over ``files``, start-up (model, decode processes) excluded."""
    processor = scan_processor(settings)  # start-up (model, decode processes) off the clock
    started = time.perf_counter()
    outcomes = list(scan(processor, files, "bench", settings.batch_size))
    seconds = time.perf_counter() - started
    return {"images": len(outcomes), "seconds": round(seconds, 2),
            "images_per_s": round(len(outcomes) / seconds, 1), "batch_size": settings.batch_size}


def _timed(spent: dict[str, float], step: str, run: Callable):
    started = time.perf_counter()
    value = run()
    spent[step] += time.perf_counter() - started
    return value


def _rate(run: Callable, items: list, size: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(items), size):
        run(items[start:start + size])
    return round(len(items) / (time.perf_counter() - started), 1)


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]
