"""A real worker's /metrics, /healthz and /readyz, scraped while it processes real photos."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dupwatch.settings import Settings
from dupwatch.wiring.kafka import ensure_topics, kafka_publisher, topic_reader
from dupwatch.messaging.publish import file_events
from dupwatch.imaging.samples import in_upload_order

WAIT_S = 90.0  # how long to wait for a worker to join its group or settle, not a speed goal
Samples = dict[tuple[str, frozenset], float]


@dataclass(frozen=True)
class Response:
    status: int
    body: str
    content_type: str


def get(port: int, path: str) -> Response:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return Response(reply.status, reply.read().decode(), reply.headers["Content-Type"])
    except urllib.error.HTTPError as error:
        return Response(error.code, error.read().decode(), error.headers["Content-Type"])


def wait_for(check, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except OSError:  # the web server is not listening yet
            pass
        time.sleep(0.25)
    pytest.fail(f"gave up after {WAIT_S}s waiting for {what}")


def scrape(port: int) -> Samples:
    text = get(port, "/metrics").body
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_a_worker_counts_what_it_processes(stream_settings: Settings, worker_factory,
                                           samples) -> None:
    ensure_topics(stream_settings)
    worker = worker_factory(stream_settings)
    port = worker.settings.web_port
    wait_for(lambda: get(port, "/healthz").status == 200, "/healthz to answer")
    ready = wait_for(lambda: (r := get(port, "/readyz")).status == 200 and r, "/readyz 200")
    assert all(json.loads(ready.body)["checks"].values())
    before = scrape(port)

    first, second = in_upload_order(samples)
    events = list(file_events([s.file for s in first + second], "shop"))
    with topic_reader(stream_settings, [stream_settings.verdict_topic]) as reader:
        publisher = kafka_publisher(stream_settings)
        for event in events:
            publisher.publish(event)
        publisher.publish_raw(b"this is not json", key=b"bad")
        publisher.close()
        records = reader.records(max_records=len(events), idle_timeout_s=WAIT_S)
        verdicts = [record.document for record in records]
    assert len(verdicts) == len(events)
    # Counters move once the batch's sends are acknowledged, just after the verdicts arrive.
    after = wait_for(lambda: (s := scrape(port)) and delta(s, before, "dupwatch_dead_letters_total",
                                                           reason="schema_invalid") == 1 and s,
                     "the dead letter to be counted")

    assert delta(after, before, "dupwatch_events_consumed_total") == len(events) + 1
    expected = Counter((v["verdict"], v["stage"] or "none") for v in verdicts)
    assert {"unique", "exact_duplicate", "near_duplicate"} <= {label for label, _ in expected}
    for (label, stage), count in expected.items():
        assert delta(after, before, "dupwatch_verdicts_total", verdict=label, stage=stage) == count
    steps = {step for v in verdicts for step in v["timings_ms"]}
    assert {"sha256", "phash", "decode", "total"} <= steps
    for stage in steps:
        ran = sum(stage in v["timings_ms"] for v in verdicts)
        assert delta(after, before, "dupwatch_stage_duration_seconds_count", stage=stage) == ran > 0
    assert delta(after, before, "dupwatch_end_to_end_latency_seconds_count") == len(verdicts)
    assert delta(after, before, "dupwatch_end_to_end_latency_seconds_sum") > 0

    # The gauges are refreshed every few seconds: each assigned partition's lag settles at
    # zero, and every image is in the index of each stage it ran.
    indexed = {stage: sum(stage in v["timings_ms"] for v in verdicts)
               for stage in ("sha256", "phash")}

    def settled() -> Samples | None:
        now = scrape(port)
        series = [(name, dict(labels), value) for (name, labels), value in now.items()]
        lags = {labels["partition"]: value for name, labels, value in series
                if name == "dupwatch_consumer_lag"}
        entries: dict[str, float] = {}  # summed over the shards
        for name, labels, value in series:
            if name == "dupwatch_index_entries" and labels["tenant"] == "shop":
                entries[labels["stage"]] = entries.get(labels["stage"], 0) + value
        done = set(lags) == {"0", "1"} and not any(lags.values()) and \
            all(entries.get(stage) == count for stage, count in indexed.items())
        return now if done else None
    gauges = wait_for(settled, "zero lag on partitions 0 and 1 and every image indexed")

    models = {v.get("model_version") for v in verdicts} - {None}
    assert {dict(labels)["version"] for name, labels in gauges
            if name == "dupwatch_model_info"} == models

    image_ids = {event.image_id for event in events}
    label_values = {value for _, labels in gauges for _, value in labels}
    assert not image_ids & label_values, "an image id became a label value"
