"""The `dupwatch` command line. Every setting is a flag here and a DUPWATCH_* variable."""
from __future__ import annotations

import argparse
import sys
from collections import Counter

from dupwatch import __version__
from dupwatch.settings import Settings

ALL_GROUPS = ["kafka", "topics", "detection", "limits", "worker"]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    settings = Settings.load(args=args)
    return int(args.handler(settings, args) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dupwatch",
        description="Streaming duplicate-image detection: image events in from Kafka, a verdict "
                    "(unique, exact_duplicate, near_duplicate, variant) out for each.",
        epilog="Start with `dupwatch demo`. Every --flag can also be set as a DUPWATCH_* "
               "environment variable (see `dupwatch COMMAND --help`).")
    parser.add_argument("--version", action="version", version=f"dupwatch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    _command(commands, "demo", _demo, ["detection", "limits"],
                    "Run everything locally on the bundled sample photos and print the verdicts.",
                    "Starts an embedded Kafka-compatible broker on a free loopback port and a "
                    "worker, publishes the bundled real photos and then their copies (exact, "
                    "re-encoded, resized, brightened, cropped), prints a table of verdicts as they "
                    "arrive, and shuts everything down. Exit status 0 when every verdict matches "
                    "samples/manifest.csv.")

    _command(commands, "worker", _worker, ALL_GROUPS,
             "Consume image events, run the cascade, publish verdicts (runs until stopped).",
             "Creates the input, verdict and dead-letter topics if needed, joins the consumer "
             "group and processes events until SIGTERM or Ctrl-C. Invalid events go to the "
             "dead-letter topic with a reason; the worker keeps running.")

    publish = _command(commands, "publish", _publish, ["kafka", "topics", "limits"],
                       "Send image files to the input topic as image events.",
                       "Each file becomes one event; a directory is walked in sorted order and "
                       "its files are named by their path inside it.")
    publish.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")
    publish.add_argument("--tenant", default="default",
                         help="tenant of the events (images only match their own tenant)")
    publish.add_argument("--as-uri", action="store_true",
                         help="send file:// URIs instead of the bytes (the worker must have the "
                              "files under its --uri-roots)")

    verdicts = _command(commands, "verdicts", _verdicts, ["kafka", "topics"],
                        "Follow the verdict topic and print verdicts as a table or JSON lines.",
                        "Reads every partition directly (no consumer group), so it never moves "
                        "the workers' offsets. Stops after --max records or --idle-timeout.")
    verdicts.add_argument("--format", choices=["table", "jsonl"], default="table")
    verdicts.add_argument("--from-beginning", action="store_true",
                          help="start at the oldest retained verdict instead of new ones only")
    verdicts.add_argument("--dead-letters", action="store_true",
                          help="also show the rejected events from the dead-letter topic")
    verdicts.add_argument("--max", type=int, default=None, metavar="N",
                          help="stop after N records")
    verdicts.add_argument("--idle-timeout", type=float, default=None, metavar="SECONDS",
                          help="stop after this long without a new record")

    scan = _command(commands, "scan", _scan, ["detection", "limits"],
                    "Run the cascade in-process over image files, no broker needed.",
                    "Files are checked in argument order (directories walked in sorted order), "
                    "each against the ones before it, exactly as a worker would. Prints one "
                    "verdict per line as JSON; unreadable images print a dead-letter record "
                    "and make the exit status 1.")
    scan.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")
    scan.add_argument("--tenant", default="default", help="tenant written into the verdicts")

    bench = commands.add_parser("bench", help="Measure speed (results as JSON and a table).",
                                description="Benchmarks. Results go to --out as JSON and to "
                                            "stdout as a table.")
    benches = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    throughput = _command(benches, "throughput", _bench_throughput, ["detection", "limits"],
                          "Images/s in-process vs end to end through the broker, and latency.",
                          "(a) decode + SHA-256 + pHash in-process, (b) publish -> worker -> "
                          "verdicts through an embedded broker, on the same images; reports "
                          "images/s for both and p50/p99 end-to-end latency.")
    throughput.add_argument("--images", default=None, metavar="DIR",
                            help="folder of photos (default: the bundled samples)")
    throughput.add_argument("--count", type=int, default=2000, metavar="N",
                            help="events per measurement (photos are reused with unique bytes)")
    throughput.add_argument("--out", default="bench-throughput.json", metavar="FILE",
                            help="where to write the JSON results")
    return parser


def _command(commands, name: str, handler, groups: list[str], summary: str,
             description: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary, description=f"{summary} {description}")
    parser.set_defaults(handler=handler)
    Settings.add_arguments(parser, groups)
    return parser


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.streams.demo import run_demo
    return run_demo(settings)


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.streams.app import run_worker
    run_worker(settings)
    return 0


def _publish(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.streams.kafka import ensure_topics
    from dupwatch.streams.publish import Publisher, file_events
    from dupwatch.streams.sources import image_files

    files = image_files(args.paths)
    ensure_topics(settings)
    publisher = Publisher(settings)
    for count, event in enumerate(file_events(files, args.tenant, args.as_uri), start=1):
        publisher.publish(event)
        _progress(count, len(files), "published")
    publisher.close()
    print(f"published {len(files)} images to {settings.input_topic}", file=sys.stderr)
    return 0


def _verdicts(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.streams.follow import TopicReader
    from dupwatch.streams.render import TablePrinter, print_jsonl

    topics = [settings.verdict_topic] + ([settings.dead_letter_topic] if args.dead_letters else [])
    table = TablePrinter(sys.stdout)
    with TopicReader(settings, topics, from_beginning=args.from_beginning) as reader:
        for record in reader.records(max_records=args.max, idle_timeout_s=args.idle_timeout):
            if args.format == "jsonl":
                print_jsonl(record.document, sys.stdout)
            else:
                table.row(record.document)
    return 0


def _scan(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.detectors import build_cascade
    from dupwatch.schemas import DeadLetter
    from dupwatch.streams.processor import InputRecord, Processor
    from dupwatch.streams.publish import file_events
    from dupwatch.streams.render import print_jsonl
    from dupwatch.streams.sources import image_files

    files = image_files(args.paths)
    processor = Processor(settings.replace(worker_name="scan"), build_cascade(settings))
    outcomes: Counter[str] = Counter()
    for count, event in enumerate(file_events(files, args.tenant), start=1):
        outcome = processor.handle(InputRecord(value=event.to_json(), key=event.key))
        outcomes["rejected" if isinstance(outcome, DeadLetter) else outcome.verdict.value] += 1
        print_jsonl(outcome.to_dict(), sys.stdout)
        _progress(count, len(files), "scanned")
    summary = ", ".join(f"{n} {label}" for label, n in sorted(outcomes.items()))
    print(f"scanned {len(files)} images: {summary or 'none'}", file=sys.stderr)
    return 1 if outcomes["rejected"] else 0


def _bench_throughput(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.throughput import run_throughput_bench
    return run_throughput_bench(settings, args.images, args.count, args.out)


def _progress(done: int, total: int, verb: str) -> None:
    """A one-line counter on a terminal; silent when stderr is a file or pipe."""
    if sys.stderr.isatty():
        end = "\n" if done == total else ""
        print(f"\r{verb} {done}/{total}", end=end, file=sys.stderr, flush=True)
