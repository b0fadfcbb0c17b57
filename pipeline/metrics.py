"""A worker's Prometheus metrics, served at ``/metrics`` on its web port.

Names follow Prometheus conventions (counters end in ``_total``, durations are ``_seconds``)
and every label has a small, bounded set of values: stages, verdict labels, dead-letter
reasons, partitions and tenants, never image ids. The worker (``streams/app.py``) feeds them
all but one: the embedding stage calls :func:`observe_embedding_batch` for each batch. Each
process has one set (the default registry), so metrics from code that runs outside a worker,
such as ``dupwatch scan``, are simply never served.
"""
from __future__ import annotations

from datetime import datetime
from typing import Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, disable_created_metrics,
    generate_latest,
)

from dupwatch.schemas import DeadLetter, Verdict

# Dashboards use rate() on the counters; the *_created series would double the series count.
disable_created_metrics()

_STAGE_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)
_LATENCY_BUCKETS = (.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

EVENTS_CONSUMED = Counter(
    "dupwatch_events_consumed", "Records taken from the input topic (valid or not).")
VERDICTS = Counter(
    "dupwatch_verdicts", "Verdicts published, by label and deciding stage ('none' for unique).",
    ["verdict", "stage"])
DEAD_LETTERS = Counter(
    "dupwatch_dead_letters", "Events sent to the dead-letter topic, by reason.", ["reason"])
STAGE_SECONDS = Histogram(
    "dupwatch_stage_duration_seconds",
    "Time one image spent in each step of the cascade: decode, each stage that ran, and "
    "'total' for the whole cascade.", ["stage"], buckets=_STAGE_BUCKETS)
END_TO_END_SECONDS = Histogram(
    "dupwatch_end_to_end_latency_seconds",
    "From an event's submitted_at to its verdict being acknowledged by the broker (events "
    "without submitted_at are not counted).", buckets=_LATENCY_BUCKETS)
EMBEDDING_BATCH_SIZE = Histogram(
    "dupwatch_embedding_batch_size", "Images per embedding batch.", buckets=_BATCH_BUCKETS)
EMBEDDING_BATCH_SECONDS = Histogram(
    "dupwatch_embedding_batch_duration_seconds", "Time to embed one batch.",
    buckets=_STAGE_BUCKETS + (10, 30))
INDEX_ENTRIES = Gauge(
    "dupwatch_index_entries", "Images in each stage's index, per tenant and index shard.",
    ["stage", "tenant", "shard"])
CONSUMER_LAG = Gauge(
    "dupwatch_consumer_lag",
    "Records in an assigned input partition that this worker has not processed yet.",
    ["topic", "partition"])
CONTROL_COMMANDS = Counter(
    "dupwatch_control_commands", "Control commands applied (remove, bank_add).", ["action"])
INDEX_STRUCTURE = Gauge(
    "dupwatch_index_structure_info",
    "The structure each tenant's vector index serves in each hosted shard (always 1): flat, or "
    "hnsw-sq8 / ivf-sq8 once trained (--vector-index, --vector-train-after).",
    ["shard", "tenant", "structure"])
LAST_SNAPSHOT = Gauge(
    "dupwatch_index_last_snapshot_timestamp_seconds",
    "When each hosted shard was last snapshotted into state_dir (Unix time).", ["shard"])
MODEL = Gauge("dupwatch_model_info", "The embedding model the worker has loaded (always 1).",
              ["version"])
LOOKUPS = Counter(
    "dupwatch_lookup_requests",
    "Requests to POST /v1/lookup, by HTTP status (200 answered; 4xx refused; 503 overloaded).",
    ["status"])
LOOKUP_SECONDS = Histogram(
    "dupwatch_lookup_duration_seconds",
    "From a lookup request's arrival to its answer (waiting, fetch, decode and cascade), "
    "answered lookups (status 200) only.", buckets=_STAGE_BUCKETS)
LOOKUPS_IN_FLIGHT = Gauge(
    "dupwatch_lookups_in_flight", "Lookups taken and not yet answered (at most lookup_queue).")

def observe_outcomes(outcomes: Iterable[Verdict | DeadLetter], now: float) -> None:
    """Count published verdicts and dead letters; ``now`` is when the broker acknowledged them."""
    for outcome in outcomes:
        if isinstance(outcome, DeadLetter):
            DEAD_LETTERS.labels(outcome.reason.value).inc()
        else:
            _observe_verdict(outcome, now)


def _observe_verdict(verdict: Verdict, now: float) -> None:
    VERDICTS.labels(verdict.verdict.value, verdict.stage or "none").inc()
    for stage, ms in verdict.timings_ms.items():
        STAGE_SECONDS.labels(stage).observe(ms / 1000)
    submitted = _epoch_seconds(verdict.submitted_at)
    if submitted is not None:
        # A publisher's clock may run ahead of ours; that is not negative latency.
        END_TO_END_SECONDS.observe(max(0.0, now - submitted))


def _epoch_seconds(timestamp: str | None) -> float | None:
    try:
        return datetime.fromisoformat(timestamp).timestamp() if timestamp else None
    except ValueError:  # the schema checks the format, but a metric is no reason to fail
        return None


def observe_embedding_batch(size: int, seconds: float) -> None:
    """One batch through the embedding model: how many images and how long it took."""
    EMBEDDING_BATCH_SIZE.observe(size)
    EMBEDDING_BATCH_SECONDS.observe(seconds)


def set_model_version(version: str) -> None:
    """The loaded embedding model, exported as ``dupwatch_model_info{version="..."} 1``."""
    MODEL.clear()
    MODEL.labels(version).set(1)


def set_index_sizes(by_shard: Mapping[str, Mapping[str, Mapping[str, int]]]) -> None:
    """Entries per stage and tenant (as ``LocalStore.size()`` gives them) of each index shard
    this worker holds; shards it no longer holds vanish."""
    INDEX_ENTRIES.clear()
    for shard, sizes in by_shard.items():
        for stage, tenants in sizes.items():
            for tenant, count in tenants.items():
                INDEX_ENTRIES.labels(stage, tenant, shard).set(count)


def set_index_structures(by_shard: Mapping[str, Mapping[str, str]],
                         snapshotted_at: Mapping[str, float]) -> None:
    """Each hosted shard's vector structures per tenant and its last snapshot's time."""
    INDEX_STRUCTURE.clear()
    for shard, structures in by_shard.items():
        for tenant, structure in structures.items():
            INDEX_STRUCTURE.labels(shard, tenant, structure).set(1)
    LAST_SNAPSHOT.clear()
    for shard, at in snapshotted_at.items():
        LAST_SNAPSHOT.labels(shard).set(at)


def count_control(action: str) -> None:
    CONTROL_COMMANDS.labels(action).inc()


def set_consumer_lag(topic: str, lag_by_partition: Mapping[int, int]) -> None:
    """Replace the lag series with the current assignment's, so revoked partitions vanish."""
    CONSUMER_LAG.clear()
    for partition, lag in lag_by_partition.items():
        CONSUMER_LAG.labels(topic, str(partition)).set(lag)


def count_consumed(records: int) -> None:
    EVENTS_CONSUMED.inc(records)


def exposition() -> tuple[bytes, str]:
    """The current values in Prometheus' text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def observe_lookup(status: int, seconds: float) -> None:
    """One request to POST /v1/lookup: its status and, if answered, how long it took."""
    LOOKUPS.labels(str(status)).inc()
    if status == 200:
        LOOKUP_SECONDS.observe(seconds)
