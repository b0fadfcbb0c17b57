"""`dupwatch bench embedding`: encoder images/s at several batch sizes (CPU or CUDA)."""
from __future__ import annotations

import time

from dupwatch.bench.report import machine, write_results
from dupwatch.detectors.cascade import build_cascade
from dupwatch.settings import Settings
from dupwatch.streams.samples import load_samples


def run_embedding_bench(settings: Settings, batch_sizes: list[int], count: int, out: str) -> int:
    cascade = build_cascade(settings.replace(state_dir="", stages=["embedding"]))
    stage = cascade.stages[0]
    photos = [s.file.path.read_bytes() for s in load_samples()]
    images = [cascade.image(photos[i % len(photos)]) for i in range(count)]
    for image in images:
        image.pixels  # noqa: B018  decode outside the clock: this times the encoder
    pixels = [image.pixels for image in images]
    rows, results = [], {}
    for size in batch_sizes:
        stage.describe_batch(images[:size])  # warm-up (allocator, kernels)
        forward = _rate(lambda batch: stage.model.embed(batch), pixels, size)
        staged = _rate(stage.describe_batch, images, size)
        results[str(size)] = {"forward_images_per_s": forward, "stage_images_per_s": staged}
        rows.append((f"batch {size}", f"forward {forward:.1f} images/s, stage with views "
                                      f"{staged:.1f} images/s"))
    write_results(out, {"benchmark": "embedding", "device": stage.model.device,
                        "resolution": stage.model.resolution, "images": count,
                        "model_version": cascade.model_version, "batches": results,
                        "machine": machine()}, rows)
    return 0


def _rate(run, items: list, size: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(items), size):
        run(items[start:start + size])
    return round(len(items) / (time.perf_counter() - started), 1)
