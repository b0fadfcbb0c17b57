"""`dupwatch bench index`: memory, add rate, search latency and recall of each vector index.

Data: synthetic unit vectors of the encoder's dimension, shaped like its output rather than
uniform on the sphere. Uniform random 256-d vectors are all nearly orthogonal, with no
neighbourhoods: the worst case for an inverted file, and unlike any embedding. Instead:

- the variance along principal axis i falls as (i + 18.5)^-2.15, in a random rotation, around
  a common mean direction of norm 0.18: both fitted to the encoder's embeddings of 787 real
  photos (their top 8 / 32 / 128 axes hold 35 / 71 / 95 % of the variance; so do these);
- a mixture of clusters, one per 1,000 vectors (--vectors-per-cluster), sharing half of their
  variance, so images have neighbourhoods of related images. A 787-vector sample has pairwise
  cosines -0.20 / 0.04 / 0.27 at the 5th / 50th / 95th percentiles; the real photos have
  -0.19 / 0.02 / 0.29. More clusters in the same space make neighbourhoods more diffuse and
  an inverted file's job harder: 1M vectors at 100 a cluster are harder for one than 10M at
  1,000 (ivf-sq8 recall@10 0.61 against 0.70), and build in a tenth of the time.

Queries: 80 % are copies of indexed vectors with noise (cosine 0.80-0.98 to their source, like
the edited copies the cascade must find), 20 % fresh draws from the mixture (new uploads).

Each size and option is built and measured in a process of its own, so its memory is its own:
- memory: growth of the process's resident memory (RSS) while the index is built, per vector
  (the FAISS structure and the key map, everything the worker would hold), and the size of
  its snapshot on disk per vector;
- add rate: vectors/s of bulk adds (100k keys a call, every core), training excluded;
  training: the one add that reached train_after (int8 ranges, k-means for ivf-sq8, then
  moving the buffered vectors over: single-threaded for hnsw-sq8, see index/vector.py);
- single add / remove: ms per key added or removed one at a time, as the worker does;
- search p50 / p99: one query at a time with DUPWATCH_SEARCH_THREADS FAISS threads (default 1),
  as the worker searches;
- recall@10: share of the exact 10 nearest (brute force over every vector, computed while
  building) that the index returns; copy@1: copies whose source is the first hit.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path

import faiss
import numpy as np

from dupwatch.bench.report import machine, markdown_table, percentiles_ms, rss_bytes, write_results
from dupwatch.errors import UserError
from dupwatch.index.vector import VectorIndex, VectorIndexOptions
from dupwatch.model.encoder import DESCRIPTOR_DIM
from dupwatch.settings import Settings
from dupwatch.reporting.progress import Progress, wanted
from dupwatch.wiring.cascade import vector_options

BLOCK = 1_000  # vectors drawn from one seeded generator, so any vector can be drawn again alone
INDEXED, QUERIES, EXTRA = range(3)  # independent streams: indexed, fresh queries, single adds
CHUNK = 100_000  # vectors per bulk add
SHARED_VARIANCE = 0.5  # share of a vector's variance that its cluster explains
COPY_SHARE = 0.8
K = 10
SINGLE_ADDS = 1_000
REMOVES = 20
HEADERS = ["vectors", "index", "RSS B/vector", "snapshot B/vector", "bulk add /s", "training s",
           "single add ms", "remove ms", "search p50 ms", "search p99 ms", "recall@10", "copy@1"]


def run_index_bench(settings: Settings, sizes: list[int], kinds: list[str], breadths: list[int],
                    per_cluster: int, queries: int, out: str, merge: bool) -> int:
    if not Path("/proc/self/statm").exists():
        raise UserError("bench index reads memory from /proc/self/statm and glibc: "
                         "run it on Linux")
    configured = vector_options(settings)
    options = [replace(configured, kind=kind) for kind in kinds]  # bad names fail here, at once
    rows = _earlier_rows(out) if merge else {}
    spawn = get_context("spawn")
    for size in sizes:
        for chosen in options:
            print(f"{size:,} vectors, {chosen.kind}", file=sys.stderr, flush=True)
            with ProcessPoolExecutor(1, mp_context=spawn) as child:
                measured = child.submit(measure, size, per_cluster, chosen, breadths, queries,
                                        settings.search_threads).result()
            rows.update({_row_key(row): row for row in measured})
    ordered = [rows[key] for key in sorted(rows)]
    results = {"benchmark": "index", "dim": DESCRIPTOR_DIM, "k": K,
               "search_threads": settings.search_threads, "results": ordered, "machine": machine()}
    table = markdown_table(HEADERS, [_cells(row) for row in ordered])
    Path(out).with_suffix(".md").write_text(table + "\n")
    print(table)
    write_results(out, results, [(f"{row['vectors']:,} {_name(row)}", _summary(row))
                                 for row in ordered])
    return 0


def measure(size: int, per_cluster: int, options: VectorIndexOptions, breadths: list[int],
            query_count: int, search_threads: int) -> list[dict]:
    """Build one index over ``size`` synthetic vectors and measure it (in a child process):
    one row per search breadth (nprobe or ef_search; default: the configured one)."""
    data = SyntheticEmbeddings(size, DESCRIPTOR_DIM, per_cluster)
    queries, sources = data.queries(query_count)
    exact = ExactNeighbours(queries)
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # bulk adds: every core, as a rebuild would
    before = rss_bytes()
    index = VectorIndex(DESCRIPTOR_DIM, options)
    adding, training = _build(index, data, exact)
    gc.collect()
    built = {"vectors": size, "vectors_per_cluster": per_cluster, "queries": query_count,
             "index": options.kind, "structure": index.structure,
             "rss_bytes_per_vector": round((rss_bytes() - before) / size),
             "snapshot_bytes_per_vector": round(_snapshot_bytes(index) / size),
             # None when every vector came in the add that trained
             "bulk_add_per_s": round(adding["vectors"] / adding["seconds"]) if adding["vectors"]
             else None,
             "training_s": round(training, 1) if index.trained else None}
    faiss.omp_set_num_threads(search_threads)
    rows = []
    for breadth in (breadths if index.trained else []) or [options.search_breadth]:
        index.configure(_with_breadth(options, breadth))
        rows.append(built | {"options": asdict(index.options) | {"lists": options.lists},
                             "search_breadth": breadth} | _search(index, queries, sources, exact))
    changes = _single_adds_and_removes(index, data)  # last: the extra keys are not in the truth
    return [row | changes for row in rows]


class SyntheticEmbeddings:
    """Vectors 0..size-1 of a clustered, anisotropic mixture (see the module docstring)."""

    def __init__(self, size: int, dim: int, per_cluster: int = 1000, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        spectrum = (np.arange(1, dim + 1) + 18.5) ** -2.15
        rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        self._mix = (np.sqrt(spectrum / spectrum.sum())[:, None] * rotation).astype(np.float32)
        self._mean = 0.18 * _unit(rng.standard_normal((1, dim))).astype(np.float32)
        clusters = rng.standard_normal((max(1, size // per_cluster), dim), dtype=np.float32)
        self._centres = np.sqrt(SHARED_VARIANCE) * clusters @ self._mix
        self.size, self.dim, self.seed = size, dim, seed

    def rows(self, start: int, stop: int, stream: int = INDEXED) -> np.ndarray:
        """Vectors start..stop-1 of a stream (only the INDEXED one is ever indexed)."""
        blocks = range(start // BLOCK, -(-stop // BLOCK))
        rows = self._vectors(*zip(*(self._draws(number, stream) for number in blocks)))
        return rows[start % BLOCK:start % BLOCK + stop - start]

    def queries(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(queries, source of each copy or -1 for a fresh draw)."""
        rng = np.random.default_rng((self.seed, QUERIES, self.size))
        sources = np.sort(rng.choice(self.size, int(count * COPY_SHARE), replace=False))
        blocks = sources // BLOCK  # sorted: each block is drawn once, in order
        originals = np.concatenate([self.rows(number * BLOCK, (number + 1) * BLOCK)[
            sources[blocks == number] % BLOCK] for number in np.unique(blocks)])
        # noise of norm s on a unit vector: cosine 1 / sqrt(1 + s^2), 0.98 down to 0.80
        scale = rng.uniform(0.2, 0.75, (len(sources), 1))
        noise = scale * _unit(rng.standard_normal(originals.shape))
        fresh = self.rows(0, count - len(sources), QUERIES)
        queries = np.concatenate([_unit(originals + noise), fresh]).astype(np.float32)
        return queries, np.concatenate([sources, np.full(len(fresh), -1)])

    def _draws(self, number: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        """The random numbers behind one block: cluster of each vector, and its noise."""
        rng = np.random.default_rng((self.seed, stream, number))
        return (rng.integers(0, len(self._centres), BLOCK),
                rng.standard_normal((BLOCK, self.dim), dtype=np.float32))

    def _vectors(self, clusters: tuple[np.ndarray, ...], noise: tuple[np.ndarray, ...]
                 ) -> np.ndarray:
        shaped = np.concatenate(noise) @ (np.sqrt(1 - SHARED_VARIANCE) * self._mix)
        return _unit(self._mean + self._centres[np.concatenate(clusters)] + shaped)


class ExactNeighbours:
    """The true K nearest of each query, folded in chunk by chunk (never all vectors at once)."""

    def __init__(self, queries: np.ndarray) -> None:
        self.queries = queries
        self.similarities = np.full((len(queries), K), -np.inf, dtype=np.float32)
        self.ids = np.full((len(queries), K), -1, dtype=np.int64)

    def fold(self, rows: np.ndarray, first_id: int) -> None:
        flat = faiss.IndexFlatIP(rows.shape[1])
        flat.add(rows)
        similarities, ids = flat.search(self.queries, K)
        both = np.concatenate([self.similarities, similarities], axis=1)
        both_ids = np.concatenate([self.ids, ids + first_id], axis=1)
        best = np.argsort(-both, axis=1, kind="stable")[:, :K]
        self.similarities = np.take_along_axis(both, best, axis=1)
        self.ids = np.take_along_axis(both_ids, best, axis=1)


def _build(index: VectorIndex, data: SyntheticEmbeddings, exact: ExactNeighbours
           ) -> tuple[dict[str, float], float]:
    """Bulk-add every vector; the chunk that reaches train_after ends there, so it is timed
    alone."""
    bounds = sorted(set(range(0, data.size, CHUNK)) | {data.size}
                    | ({index.options.train_after} if index.options.kind != "flat" else set()))
    adding, training = {"vectors": 0, "seconds": 0.0}, 0.0
    label = f"{index.options.kind} {data.size:,}: indexed"
    with Progress(data.size, label, enabled=wanted()) as bar:
        for start, stop in zip(bounds, bounds[1:]):
            if start >= data.size:
                break
            rows = data.rows(start, stop)
            exact.fold(rows, start)
            was_trained = index.trained
            started = time.perf_counter()
            index.add_many((str(start + n), row) for n, row in enumerate(rows))
            seconds = time.perf_counter() - started
            if index.trained and not was_trained:
                training = seconds
            else:
                adding["vectors"] += len(rows)
                adding["seconds"] += seconds
            bar.advance(len(rows))
    return adding, training


def _search(index: VectorIndex, queries: np.ndarray, sources: np.ndarray,
            exact: ExactNeighbours) -> dict:
    for query in queries[:20]:
        index.search(query, K)  # warm-up: caches, lazily built FAISS tables
    seconds, found = [], []
    for query in queries:
        started = time.perf_counter()
        hits = index.search(query, K)
        seconds.append(time.perf_counter() - started)
        found.append([int(hit.key) for hit in hits])
    recall = np.mean([len(set(got) & set(true.tolist())) / K
                      for got, true in zip(found, exact.ids)])
    copies = [got[:1] == [source] for got, source in zip(found, sources) if source >= 0]
    latency = percentiles_ms(seconds)
    return {"search_ms": latency, "search_p50_ms": latency["p50"], "search_p99_ms": latency["p99"],
            "recall_at_10": round(float(recall), 4), "copy_at_1": round(float(np.mean(copies)), 4)}


def _single_adds_and_removes(index: VectorIndex, data: SyntheticEmbeddings) -> dict:
    extra = data.rows(0, SINGLE_ADDS, EXTRA)
    started = time.perf_counter()
    for n, row in enumerate(extra):
        index.add(f"extra-{n}", row)
    adding = time.perf_counter() - started
    started = time.perf_counter()
    for n in range(REMOVES):
        index.remove(f"extra-{n}")
    removing = time.perf_counter() - started
    return {"single_add_ms": round(1000 * adding / len(extra), 3),
            "remove_ms": round(1000 * removing / REMOVES, 3)}


def _snapshot_bytes(index: VectorIndex) -> int:
    with tempfile.TemporaryDirectory(prefix="dupwatch-bench-index-") as folder:
        index.save(Path(folder))
        return sum(f.stat().st_size for f in Path(folder).iterdir())


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _earlier_rows(out: str) -> dict[tuple[int, str], dict]:
    path = Path(out)
    if not path.is_file():
        return {}
    return {_row_key(row): row for row in json.loads(path.read_text())["results"]}


def _with_breadth(options: VectorIndexOptions, breadth: int) -> VectorIndexOptions:
    return replace(options, **{"hnsw-sq8": {"ef_search": breadth},
                               "ivf-sq8": {"nprobe": breadth}}.get(options.kind, {}))


def _row_key(row: dict) -> tuple[int, int, str, int]:
    return row["vectors"], -row["vectors_per_cluster"], row["index"], row["search_breadth"]


def _name(row: dict) -> str:
    options = row["options"]
    if row["structure"] == "flat" and row["index"] != "flat":
        return f"{row['index']} (still flat: < {options['train_after']:,})"
    return {"flat": "flat", "hnsw-sq8": f"hnsw-sq8 (ef_search {options['ef_search']})",
            "ivf-sq8": f"ivf-sq8 ({options['lists']} lists, nprobe {options['nprobe']})"
            }[row["index"]]


def _cells(row: dict) -> list[str]:
    training = "-" if row["training_s"] is None else f"{row['training_s']}"
    bulk = "-" if row["bulk_add_per_s"] is None else f"{row['bulk_add_per_s']:,}"
    size = f"{row['vectors']:,}" + ("" if row["vectors_per_cluster"] == 1000
                                     else f" ({row['vectors_per_cluster']:,} a cluster)")
    return [size, _name(row), f"{row['rss_bytes_per_vector']:,}",
            f"{row['snapshot_bytes_per_vector']:,}", bulk, training,
            f"{row['single_add_ms']}", f"{row['remove_ms']}", f"{row['search_p50_ms']}",
            f"{row['search_p99_ms']}", f"{row['recall_at_10']:.3f}", f"{row['copy_at_1']:.3f}"]


def _summary(row: dict) -> str:
    return (f"search p99 {row['search_p99_ms']} ms, recall@10 {row['recall_at_10']:.3f}, "
            f"{row['rss_bytes_per_vector']} B/vector")

