"""`dupwatch demo`: embedded broker + worker, the bundled samples in, a verdict table out."""
from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

from dupwatch.settings import Settings
from dupwatch.messaging.broker import EmbeddedBroker, free_port
from dupwatch.wiring.kafka import ensure_topics, kafka_publisher, topic_reader
from dupwatch.messaging.publish import file_events
from dupwatch.reporting.render import TablePrinter
from dupwatch.imaging.samples import Sample, in_upload_order, load_samples
from dupwatch.streams.worker_process import WorkerProcess

WAVE_TIMEOUT_S = 120.0


def run_demo(settings: Settings) -> int:
    samples = load_samples()
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    # Kept after the demo (it is small): what the worker did is worth a look when a verdict
    # differs from the expected one.
    handle, log_path = tempfile.mkstemp(prefix="dupwatch-demo-worker-", suffix=".log")
    os.close(handle)
    with EmbeddedBroker() as broker:
        settings = settings.replace(bootstrap_servers=broker.bootstrap_servers,
                                    group_id="dupwatch-demo", rebalance_timeout_s=6.0,
                                    session_timeout_s=6.0, web_port=free_port())
        say(f"embedded broker on {broker.bootstrap_servers}; starting a worker "
            f"(log: {log_path}, metrics: http://127.0.0.1:{settings.web_port}/metrics)")
        ensure_topics(settings)
        with WorkerProcess(settings, Path(log_path)), \
                topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic]) as reader:
            table = TablePrinter(sys.stdout)
            publisher = kafka_publisher(settings)
            received: dict[str, dict] = {}
            for number, wave in enumerate(in_upload_order(samples), start=1):
                say(f"wave {number}: publishing {len(wave)} images")
                for event in file_events([s.file for s in wave], tenant="demo"):
                    publisher.publish(event)
                publisher.flush()
                for record in reader.records(max_records=len(wave), idle_timeout_s=WAVE_TIMEOUT_S):
                    table.row(record.document)
                    received[record.document.get("image_id") or "?"] = record.document
            publisher.close()
        return _summarise(samples, received, say, log_path)


def _summarise(samples: list[Sample], received: dict[str, dict], say, log_path: str) -> int:
    labels = Counter(doc.get("verdict", "rejected") for doc in received.values())
    wrong = [s.file.image_id for s in samples
             if received.get(s.file.image_id, {}).get("verdict") != s.expected_verdict]
    say(f"\n{len(received)}/{len(samples)} verdicts: "
        + ", ".join(f"{n} {label}" for label, n in sorted(labels.items())))
    if wrong:
        say(f"differs from samples/manifest.csv: {', '.join(wrong)} (worker log: {log_path})")
        return 1
    say("every verdict matches the expected one in samples/manifest.csv")
    return 0
