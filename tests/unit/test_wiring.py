"""Settings reach every part: the wiring module's options and the stage registry."""
from __future__ import annotations

import pytest

from dupwatch.wiring.cascade import build_cascade, cascade_options
from dupwatch.detectors.registry import StageContext, build_stage, stage
from dupwatch.errors import ConfigError
from dupwatch.index import Entry, LocalStore, Lookup
from dupwatch.index.vector import KINDS
from dupwatch.settings import Settings
from dupwatch.wiring.worker import shard_options

TRAIN_AFTER = 50  # the smallest train_after there is: the samples hold more vectors than this


@pytest.fixture(scope="module")
def sample_embeddings(samples) -> list[Entry]:
    """Every sample photo's embedding (one forward pass for all: the tests below differ only
    in the options their cascade's index was built with)."""
    cascade = build_cascade(Settings().replace(stages=["embedding"]))
    images = [cascade.image(s.file.path.read_bytes()) for s in samples]
    vectors = cascade.stages[0].describe_batch(images)  # type: ignore[attr-defined]
    return [Entry("t", f"{n}", {"embedding": v}, {}, n) for n, v in enumerate(vectors)]


@pytest.mark.parametrize("kind", KINDS)
def test_the_cascade_serves_the_configured_vector_index_after_train_after_vectors(
        kind: str, sample_embeddings: list[Entry]) -> None:
    settings = Settings().replace(stages=["embedding"], vector_index=kind,
                                  vector_train_after=TRAIN_AFTER, vector_ef_search=64,
                                  vector_nprobe=3)
    store = build_cascade(settings).store
    assert isinstance(store, LocalStore)
    for entry in sample_embeddings:
        store.add([entry])
        index = store.indexes["embedding"].for_tenant("t")
        vectors = index._faiss.ntotal
        assert index.structure == ("flat" if vectors < TRAIN_AFTER else kind), vectors
    assert vectors >= TRAIN_AFTER
    assert index.options.search_breadth == {"flat": 0, "hnsw-sq8": 64, "ivf-sq8": 3}[kind]
    # and it still finds what it holds
    entry = sample_embeddings[-1]
    assert store.lookup([Lookup("t", "query", entry.signals)], 1)[0].hits["embedding"][0].key \
        == entry.image_id


def test_bad_vector_settings_are_a_config_error_naming_the_flags() -> None:
    with pytest.raises(ConfigError, match="--vector-index"):
        cascade_options(Settings().replace(vector_index="hnsw"))


def test_a_worker_store_needs_shards() -> None:
    with pytest.raises(ConfigError, match="--shards"):
        shard_options(Settings().replace(shards=0))
    assert shard_options(Settings()).shards > 0


def test_an_unknown_stage_is_a_config_error_listing_the_known_ones() -> None:
    context = StageContext(cascade_options(Settings()), {})
    with pytest.raises(ConfigError, match="sha256"):
        build_stage("sha512", context)


def test_a_stage_name_registered_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        stage("sha256")(lambda context: None)  # type: ignore[arg-type,return-value]


def test_every_registered_stage_declares_whether_it_is_batched() -> None:
    options = cascade_options(Settings())
    cascade = build_cascade(Settings())
    assert {s.name: s.batched for s in cascade.stages} == {
        "sha256": False, "phash": False, "phash_reoriented": False, "embedding": True,
        "verify": False}
    assert all(callable(getattr(s, "describe_batch", None)) for s in cascade.stages if s.batched)
    assert options.cascade.stages == tuple(s.name for s in cascade.stages)
