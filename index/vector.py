"""Float descriptors (L2-normalised embeddings) searched by inner product in FAISS.

A key may hold several vectors (views of one image: the whole picture, its content region);
a search with several query vectors returns each key once, at its best view-to-view match.
Distances are cosine distances, 1 - cosine similarity, so that lower is closer as in every index.

Three structures, chosen by :class:`VectorIndexOptions` (the ``vector_index`` setting);
``dupwatch bench index`` measures them; their figures (latency, recall, memory, add rates) have
one home, docs/benchmarks.md "Vector indexes":

- ``flat``: every vector in full (4 bytes a dimension), compared with every query: exact, and
  search time grows with the index.
- ``hnsw-sq8``: a graph of the vectors (FAISS ``HNSW32,SQ8``: 32 links a vector, vectors kept as
  int8 codes, one byte a dimension) walked from the top: fast at any size and the best
  recall, even where neighbourhoods are diffuse, but it cannot delete: a removed key's vectors
  stay in the graph, filtered out of every search (tombstones), their memory kept until the index
  is rebuilt; and bulk adds are slow.
- ``ivf-sq8``: an inverted file of int8 codes (FAISS ``IVF<lists>,SQ8``): a k-means partition
  into lists, and a search that scans only the ``nprobe`` lists nearest the query. The least
  memory and true deletion, but on diffuse data it misses more true neighbours, though it
  still finds near copies first.

int8 distances stay close to the exact cosine, so the calibrated scores still hold.

The compressed structures learn from the stream itself: they start flat and serve exact answers
until the index holds ``train_after`` vectors; the add that reaches that count trains on all
of them (int8 ranges; for ivf-sq8 also the k-means lists, with FAISS's fixed seed), moves them
into the compressed structure and serves from it from then on. The move is single-threaded for
hnsw-sq8, because parallel graph insertion depends on thread timing; a worker adds one image
at a time after that, so the same stream gives the same index. Training and moving happen once
per index. A flat snapshot loaded with a compressed kind configured trains as soon as it holds
enough vectors, so switching a deployment is a restart; an index that has trained stays
compressed whatever is configured later (its full vectors are gone).

FAISS ids encode the key's insertion order and the view number (order << VIEW_BITS | view),
so a key's vectors are one id range (removed with one range selector) and the id-to-key map is
a list indexed by order: about 8 bytes a key besides the key itself and its dictionary entry.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self, Sequence

import faiss
import numpy as np

from dupwatch.index.files import load_faiss, save_faiss
from dupwatch.index.protocol import Hit, last_of_each

_NAME = "vector"
KINDS = ("flat", "hnsw-sq8", "ivf-sq8")
VIEW_BITS = 4  # up to 16 vectors (views) per key
# k-means wants >= 39 training vectors per list; 50 keeps FAISS quiet and lists well placed.
VECTORS_PER_LIST = 50
HNSW_LINKS = 32  # FAISS's M: 64 links a vector on the graph's base layer (256 bytes)
# Candidates kept while linking a new vector. FAISS's default, 40, left 0.5 % of the vectors
# unreachable (copies of them at cosine 0.9 never found, any ef_search); 80 left none of 800,
# for a third more time per add (bench data, 100k vectors).
HNSW_BUILD_BREADTH = 80


@dataclass(frozen=True)
class VectorIndexOptions:
    """Which FAISS structure serves the vectors; see the module docstring."""
    kind: str = "flat"
    # compressed kinds: vectors served exactly before training; ivf-sq8 gets one list per
    # VECTORS_PER_LIST of them (200k: 4000 lists, 2,500 vectors a list at 10M).
    train_after: int = 200_000
    nprobe: int = 16  # ivf-sq8: lists scanned per search
    ef_search: int = 256  # hnsw-sq8: candidates kept while walking the graph, per search

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown vector index {self.kind!r}: choose from {', '.join(KINDS)}")
        if self.train_after < VECTORS_PER_LIST or self.nprobe < 1 or self.ef_search < 1:
            raise ValueError(f"train_after must be >= {VECTORS_PER_LIST}, nprobe and ef_search "
                             f">= 1; got {self.train_after}, {self.nprobe} and {self.ef_search}")

    @property
    def lists(self) -> int:
        return self.train_after // VECTORS_PER_LIST

    @property
    def search_breadth(self) -> int:
        """The compressed kind's speed-for-recall knob: nprobe or ef_search (0 for flat)."""
        return {"flat": 0, "hnsw-sq8": self.ef_search, "ivf-sq8": self.nprobe}[self.kind]


class VectorIndex:
    """The :class:`Index` of the embedding stage: ``dim``-float unit vectors, one or more per key
    (views), searched by cosine distance (1 - cosine similarity) in the FAISS structure its options
    name, flat until a compressed kind has trained (see the module docstring). A search returns
    each key once, at its best view. Vectors of the wrong shape raise ValueError."""
    def __init__(self, dim: int, options: VectorIndexOptions = VectorIndexOptions()) -> None:
        self.dim = dim
        self.options = options
        self.structure = "flat"  # what holds the vectors: flat until a compressed kind trains
        self._faiss: Any = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
        self._order_by_key: dict[str, int] = {}
        self._key_by_order: list[str | None] = []
        self._tombstones: list[int] = []  # hnsw-sq8: orders of keys removed from the graph
        self._search_params: Any = None

    @property
    def trained(self) -> bool:
        return self.structure != "flat"

    def configure(self, options: VectorIndexOptions) -> None:
        """Use new options: search breadth at once, kind and train_after only until trained."""
        self.options = options
        self._search_params = None
        if self.structure == "ivf-sq8":
            self._faiss.nprobe = options.nprobe
        self._train_if_due()

    def add(self, key: str, signal: np.ndarray) -> None:
        self.add_many([(key, signal)])

    def add_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        """Add several keys in few FAISS calls (a bulk load, a changelog replay), giving the
        index that adding them one by one gives (see :meth:`_run_end`)."""
        rows_by_key = {key: self._as_rows(signal)  # all checked first
                       for key, signal in last_of_each(items).items()}
        for key, vectors in rows_by_key.items():
            if len(vectors) > 1 << VIEW_BITS:
                raise ValueError(f"{key}: {len(vectors)} vectors, at most {1 << VIEW_BITS} a key")
        keys, start = list(rows_by_key), 0
        while start < len(keys):
            end = self._run_end(keys, rows_by_key, start)
            self._add_run({key: rows_by_key[key] for key in keys[start:end]})
            start = end

    def _run_end(self, keys: list[str], rows_by_key: dict[str, np.ndarray], start: int) -> int:
        """Where the run of keys from ``start`` that one FAISS call adds ends. A graph takes one
        key a call (its parallel insertion depends on thread timing); an index that will train
        ends a run where its vectors reach ``train_after`` (counted as if no key replaced
        another: a run may end early, never late), so it trains on the same vectors."""
        if self.structure == "hnsw-sq8":
            return start + 1
        if self.structure == "flat" and self.options.kind != "flat":
            total = self._faiss.ntotal
            for n in range(start, len(keys)):
                total += len(rows_by_key[keys[n]])
                if total >= self.options.train_after:
                    return n + 1
        return len(keys)

    def _add_run(self, rows_by_key: dict[str, np.ndarray]) -> None:
        first_order = len(self._key_by_order)
        for key in rows_by_key:
            self.remove(key)
            self._order_by_key[key] = len(self._key_by_order)
            self._key_by_order.append(key)
        rows = list(rows_by_key.values())
        views = np.array([len(vectors) for vectors in rows])
        self._faiss.add_with_ids(np.concatenate(rows), _ids(first_order, views))
        self._train_if_due()

    def search(self, signal: np.ndarray, k: int) -> list[Hit]:
        if not self._order_by_key or k <= 0:
            return []
        queries = self._as_rows(signal)
        # Each key may own several vectors: over-fetch so k distinct keys survive the merge.
        ntotal = self._faiss.ntotal
        fetch = min(ntotal, k * max(1, ntotal // len(self)) + k)
        similarities, ids = self._faiss.search(queries, fetch, params=self._params())
        best: dict[str, float] = {}
        for similarity, faiss_id in zip(similarities.ravel(), ids.ravel()):
            if faiss_id < 0:  # a compressed index found fewer than `fetch`
                continue
            key = self._key_by_order[faiss_id >> VIEW_BITS]
            best[key] = max(best.get(key, -1.0), float(similarity))
        hits = [Hit(round(max(0.0, 1.0 - s), 6), self._order_by_key[key], key)
                for key, s in best.items()]
        return sorted(hits)[:k]

    def remove(self, key: str) -> bool:
        order = self._order_by_key.pop(key, None)
        if order is None:
            return False
        self._key_by_order[order] = None
        if self.structure == "hnsw-sq8":
            self._tombstones.append(order)
            self._search_params = None
        else:
            first = order << VIEW_BITS
            self._faiss.remove_ids(faiss.IDSelectorRange(first, first + (1 << VIEW_BITS)))
        return True

    def save(self, path: Path) -> None:
        save_faiss(path, _NAME, faiss.write_index, self._faiss, {
            "dim": self.dim, "options": asdict(self.options), "structure": self.structure,
            "next_order": len(self._key_by_order), "keys": self._order_by_key,
            "tombstones": self._tombstones})

    @classmethod
    def load(cls, path: Path, options: VectorIndexOptions | None = None) -> Self:
        """Read a saved index; ``options`` (default: those it was saved with) apply from now on."""
        stored, meta = load_faiss(path, _NAME, faiss.read_index)
        if "next_id" in meta:  # saved before FAISS ids encoded the order
            meta = _renumber_ids(stored, meta)
        index = cls(meta["dim"], VectorIndexOptions(**meta["options"]))
        index._faiss, index.structure = stored, meta["structure"]
        index._order_by_key, index._tombstones = meta["keys"], meta["tombstones"]
        index._key_by_order = [None] * meta["next_order"]
        for key, order in index._order_by_key.items():
            index._key_by_order[order] = key
        index.configure(options or index.options)
        return index

    def _train_if_due(self) -> None:
        if (self.structure == "flat" and self.options.kind != "flat"
                and self._faiss.ntotal >= self.options.train_after):
            self._faiss = self._trained_on(self._faiss)
            self.structure = self.options.kind

    def _params(self) -> Any:
        """hnsw-sq8's search parameters: its breadth, and a filter for the tombstones."""
        if self.structure != "hnsw-sq8" or self._search_params is not None:
            return self._search_params
        params = {"efSearch": self.options.ef_search}
        if self._tombstones:
            orders = np.array(self._tombstones, dtype=np.int64)
            dead = ((orders[:, None] << VIEW_BITS) + np.arange(1 << VIEW_BITS)).ravel()
            params["sel"] = faiss.IDSelectorNot(faiss.IDSelectorBatch(dead))
        self._search_params = faiss.SearchParametersHNSW(**params)  # keeps `sel` alive
        return self._search_params

    def _trained_on(self, flat: Any) -> Any:
        vectors = flat.index.reconstruct_n(0, flat.ntotal)
        ids = faiss.vector_to_array(flat.id_map)
        # Every buffered vector trains it: no sampling, so the result depends on the stream only.
        compressed = self._compressed()
        threads = faiss.omp_get_max_threads()
        # ivf: every core, a one-off the stream waits for; hnsw: one, to stay deterministic
        faiss.omp_set_num_threads(1 if self.options.kind == "hnsw-sq8" else os.cpu_count() or 1)
        try:
            compressed.train(vectors)
            compressed.add_with_ids(vectors, ids)
        finally:
            faiss.omp_set_num_threads(threads)
        if self.options.kind == "ivf-sq8":
            compressed.nprobe = self.options.nprobe
        return compressed

    def _compressed(self) -> Any:
        if self.options.kind == "hnsw-sq8":
            graph = faiss.IndexHNSWSQ(self.dim, faiss.ScalarQuantizer.QT_8bit, HNSW_LINKS,
                                      faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = HNSW_BUILD_BREADTH
            codes = faiss.downcast_index(graph.storage).sq
            structure = faiss.IndexIDMap(graph)
        else:
            structure = faiss.index_factory(self.dim, f"IVF{self.options.lists},SQ8",
                                            faiss.METRIC_INNER_PRODUCT)
            # 10 k-means rounds, not 25: training 2.5x sooner, recall@10 within 0.002 (bench data)
            structure.cp.niter = 10
            codes = structure.sq
        # int8 ranges 10% wider than the training vectors' so later vectors are not clipped
        # (worst copy distance 0.028 -> 0.004 after a small training set).
        codes.rangestat_arg = 0.1
        return structure

    def _as_rows(self, signal: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(signal, dtype=np.float32)
        if rows.ndim == 1:
            rows = rows[None]  # not np.atleast_2d: a bulk add calls this once a key
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected {self.dim}-d vectors, got shape {rows.shape}")
        return rows

    def __len__(self) -> int:
        return len(self._order_by_key)


def _ids(first_order: int, views: np.ndarray) -> np.ndarray:
    """FAISS ids of consecutive keys from ``first_order`` on, with ``views[i]`` vectors each."""
    orders = np.repeat(np.arange(first_order, first_order + len(views), dtype=np.int64), views)
    starts = np.repeat(np.cumsum(views) - views, views)
    return (orders << VIEW_BITS) + np.arange(len(orders)) - starts


def _renumber_ids(stored: Any, meta: dict) -> dict:
    """Snapshots from before options existed: sequential ids per vector, {key: [order, ids]}."""
    new_ids = {old: (order << VIEW_BITS) + view
               for order, ids in meta["keys"].values() for view, old in enumerate(ids)}
    old_ids = faiss.vector_to_array(stored.id_map)
    faiss.copy_array_to_vector(np.array([new_ids[int(i)] for i in old_ids], dtype=np.int64),
                               stored.id_map)
    stored.construct_rev_map()
    return {"dim": meta["dim"], "options": asdict(VectorIndexOptions()), "structure": "flat",
            "next_order": meta["next_order"], "tombstones": [],
            "keys": {key: order for key, (order, _) in meta["keys"].items()}}
