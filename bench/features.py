"""`dupwatch bench features`: what the verify stage's feature index costs at N images.

For each size, in a process of its own (so its memory is its own): the features of real
pictures (the bundled samples, or --images) are added under N distinct keys, as a shard holds
them, then measured:
- RAM: growth of the process's resident memory per image while the index fills (what stays in
  RAM: each key's offset; the features themselves are in the index's file);
- disk: bytes per image in the index's file and in a snapshot of it;
- add rate: images/s added one at a time, as a shard applies its changelog;
- check p50 / p99: one candidate checked against a query (read from disk + verification), the
  page cache warm and, after dropping this process's pages of the file, cold.
"""
from __future__ import annotations

import random
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from dupwatch.bench.report import machine, markdown_table, percentiles_ms, rss_bytes, write_results
from dupwatch.detectors.verify import VerifyStage
from dupwatch.imaging import features
from dupwatch.imaging.files import image_files
from dupwatch.imaging.image import DecodeLimits, decode
from dupwatch.index import CandidateQuery, FeatureIndex
from dupwatch.locations import samples_dir
from dupwatch.reporting.progress import Progress, wanted

CHECKS = 300


def run_features_bench(sizes: list[int], images: list[str], out: str) -> int:
    signals = _signals(images or [str(samples_dir())])
    rows = []
    for size in sizes:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            rows.append(pool.submit(measure, size, signals).result())
    results = {"benchmark": "features", "machine": machine(), "signal_bytes_max": features.MAX_BYTES,
               "pictures": len(signals), "rows": rows}
    table = markdown_table(
        ["images", "RAM / image", "file / image", "snapshot / image", "adds/s",
         "check p50 / p99 warm (ms)", "check p50 / p99 cold (ms)"],
        [[f"{r['images']:,}", f"{r['ram_bytes_per_image']:.0f} B",
          f"{r['file_bytes_per_image']:.0f} B", f"{r['snapshot_bytes_per_image']:.0f} B",
          f"{r['adds_per_s']:,.0f}", f"{r['check_warm_ms']['p50']} / {r['check_warm_ms']['p99']}",
          f"{r['check_cold_ms']['p50']} / {r['check_cold_ms']['p99']}"] for r in rows])
    write_results(out, results, [("", line) for line in table.splitlines()])
    return 0


def _signals(folders: list[str]) -> list[bytes]:
    limits = DecodeLimits()
    return [features.extract(decode(found.path.read_bytes(), limits)).to_bytes()
            for found in image_files(folders).files]


def measure(size: int, signals: list[bytes]) -> dict:
    index = VerifyStage().new_index()
    before = rss_bytes()
    started = time.perf_counter()
    with Progress(size, f"{size:,} images", enabled=wanted()) as bar:
        for number in range(size):
            index.add(f"img-{number}", signals[number % len(signals)])
            if number % 10_000 == 9_999:
                bar.advance(10_000)
    adds_per_s = size / (time.perf_counter() - started)
    ram = (rss_bytes() - before) / size
    warm = _checks(index, signals, size)
    index.evict_cache()
    cold = _checks(index, signals, size)
    with tempfile.TemporaryDirectory(prefix="dupwatch-bench-features-") as folder:
        index.save(Path(folder))
        snapshot = sum(f.stat().st_size for f in Path(folder).iterdir())
    return {"images": size, "ram_bytes_per_image": round(ram, 1),
            "file_bytes_per_image": round(index.disk_bytes / size, 1),
            "snapshot_bytes_per_image": round(snapshot / size, 1), "adds_per_s": round(adds_per_s),
            "check_warm_ms": warm, "check_cold_ms": cold}


def _checks(index: FeatureIndex, signals: list[bytes], size: int) -> dict[str, float]:
    rng = random.Random(size)
    seconds = []
    for _ in range(CHECKS):
        key = rng.randrange(size)
        query = CandidateQuery(signals[key % len(signals)], (f"img-{key}",))
        started = time.perf_counter()
        index.search(query, 1)
        seconds.append(time.perf_counter() - started)
    return percentiles_ms(seconds)
