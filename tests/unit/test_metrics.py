"""The metrics' names and hooks and the readiness rules, in-process.

A real worker's /metrics, /healthz and /readyz are scraped in tests/integration/test_metrics.py."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dupwatch.pipeline import metrics
from dupwatch.streams.health import readiness


def test_metric_names_follow_prometheus_conventions() -> None:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain; version=")
    families = list(text_string_to_metric_families(body.decode()))
    ours = [f for f in families if f.name.startswith("dupwatch_")]
    assert len(ours) >= 10
    for family in ours:
        assert family.documentation, family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        if "duration" in family.name or "latency" in family.name:
            assert family.name.endswith("_seconds"), family.name


def test_the_detection_side_hooks_show_up_in_the_exposition() -> None:
    metrics.observe_embedding_batch(size=12, seconds=0.25)
    metrics.set_model_version("efficientnet-lite0@test")
    metrics.set_model_version("efficientnet-lite0@test2")
    text = metrics.exposition()[0].decode()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("dupwatch_embedding_batch_size_count", frozenset())] >= 1
    assert samples[("dupwatch_embedding_batch_size_bucket", frozenset({"le": "16.0"}.items()))] >= 1
    assert samples[("dupwatch_embedding_batch_duration_seconds_sum", frozenset())] >= 0.25
    versions = [dict(labels)["version"] for name, labels in samples
                if name == "dupwatch_model_info"]
    assert versions == ["efficientnet-lite0@test2"]  # one model at a time


@dataclass
class _Group:
    rebalancing: bool
    rebalancing_count: int


@pytest.mark.parametrize("group, ready", [
    (_Group(rebalancing=False, rebalancing_count=0), False),   # not joined yet
    (_Group(rebalancing=True, rebalancing_count=1), False),    # first join in progress
    (_Group(rebalancing=True, rebalancing_count=3), False),    # a later rebalance
    (_Group(rebalancing=False, rebalancing_count=3), True),
])
def test_readiness_waits_for_the_consumer_group(group: _Group, ready: bool) -> None:
    assert all(readiness(group).values()) is ready


@dataclass
class _Shards:
    assigned: bool
    ready: bool


@pytest.mark.parametrize("shards, ready", [
    (_Shards(assigned=False, ready=True), False),   # not in the shard group yet (hosts nothing)
    (_Shards(assigned=True, ready=False), False),   # a shard still rebuilding
    (_Shards(assigned=True, ready=True), True),
])
def test_readiness_waits_for_the_shard_group(shards: _Shards, ready: bool) -> None:
    joined = _Group(rebalancing=False, rebalancing_count=1)
    assert all(readiness(joined, shards).values()) is ready
