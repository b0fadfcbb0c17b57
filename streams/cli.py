"""The `dupwatch` command line. Every setting is a flag here and a DUPWATCH_* variable."""
from __future__ import annotations

import argparse
import sys
from collections import Counter

from dupwatch import __version__
from dupwatch.settings import Settings

ALL_GROUPS = ["kafka", "topics", "detection", "limits", "worker", "sharding"]


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
             "dead-letter topic with a reason; the worker keeps running. It serves Prometheus "
             "metrics at /metrics and health probes at /healthz (alive) and /readyz (consuming) "
             "on --web-port.")

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

    remove = _command(commands, "remove", _remove, ["kafka", "topics", "sharding"],
                      "Take images down: they leave every stage's index, so later copies no "
                      "longer match them.",
                      "Publishes a remove command to the control topic; a worker applies it "
                      "between batches (with a sharded index: as tombstones in the changelog, "
                      "on whichever shard holds each image). Images that were never indexed "
                      "are ignored.")
    remove.add_argument("image_ids", nargs="+", metavar="IMAGE_ID", help="ids of the images")
    remove.add_argument("--tenant", required=True, help="tenant the images belong to")

    bank = commands.add_parser("bank", help="Manage moderation banks: curated images that "
                                            "match-only tenants are checked against.",
                               description="A bank is a tenant's set of curated images (e.g. "
                                           "removed content). Name the tenant in "
                                           "--match-only-tenants so its uploads are checked "
                                           "against the bank but never indexed themselves.")
    bank_commands = bank.add_subparsers(dest="bank_command", metavar="ACTION", required=True)
    bank_add = _command(bank_commands, "add", _bank_add, ["kafka", "topics", "sharding", "limits"],
                        "Load image files into a tenant's bank.",
                        "Each file becomes one bank_add command on the control topic; a worker "
                        "indexes it under every stage, with no verdict. A directory is walked in "
                        "sorted order and its files are named by their path inside it. Take an "
                        "image out of the bank with `dupwatch remove`.")
    bank_add.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")
    bank_add.add_argument("--tenant", required=True, help="the bank's tenant")

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

    report = _command(commands, "report", _report, ["kafka"],
                      "Write an HTML page of the duplicate pairs for people to review.",
                      "Verdicts come from a JSON-lines file (what `dupwatch scan` or `dupwatch "
                      "verdicts --format jsonl` print) or, when no such file exists, from the "
                      "topic of that name, read from its beginning until --idle-timeout passes "
                      "without a new record. Each duplicate is shown beside the image it matched "
                      "with its verdict, stage and score, grouped under the first image of its "
                      "chain. Thumbnails come from --images and are embedded, so the page is one "
                      "file that needs no server. It filters by verdict and stage and shows "
                      "--page-size groups at a time.")
    report.add_argument("--verdicts", required=True, metavar="FILE_OR_TOPIC",
                        help="JSON-lines file of verdicts, or the name of a verdict topic")
    report.add_argument("--images", nargs="+", default=[], metavar="PATH",
                        help="the files or directories the images were scanned or published "
                             "from, given the same way (ids must match)")
    report.add_argument("--out", default="report.html", metavar="FILE",
                        help="where to write the page")
    report.add_argument("--page-size", type=int, default=25, metavar="N",
                        help="duplicate groups per page")
    report.add_argument("--thumb-size", type=int, default=160, metavar="PX",
                        help="longest side of the embedded thumbnails, in pixels")
    report.add_argument("--idle-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="reading a topic: stop after this long without a new verdict")
    report.add_argument("--max", type=int, default=None, metavar="N",
                        help="reading a topic: stop after N records")

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
    workers = _command(benches, "workers", _bench_workers, ["detection", "limits", "sharding"],
                       "End-to-end images/s with 1, 2, 3... workers sharing a sharded index.",
                       "For each count: an embedded broker and that many worker processes with "
                       "--shards shards between them (default: the largest count), all ready "
                       "before the clock starts; events published as fast as possible, timed "
                       "to the last verdict. Reports images/s and latency per count.")
    workers.add_argument("--counts", default="1,2,3", metavar="N,N",
                         help="worker counts to measure")
    workers.add_argument("--events", type=int, default=1000, metavar="N",
                         help="events per measurement (bundled photos, unique bytes each)")
    workers.add_argument("--out", default="bench-workers.json", metavar="FILE",
                         help="where to write the JSON results")
    quality = _command(benches, "quality", _bench_quality, ["detection", "limits"],
                       "Detection quality per transform on held-out real photos.",
                       "Builds references, transformed copies (18 families: crops, rotations, "
                       "flips, colour, overlays, screenshots, ...), negative queries and "
                       "distractors from held-out photos with fixed seeds; reports micro-AP, "
                       "recall at precision 0.99 and recall per family for pHash, the embedding "
                       "and the calibrated cascade.")
    quality.add_argument("--photos", required=True, metavar="DIR",
                         help="photo folder, e.g. one made by shared/gather_training_photos.sh; "
                              "only its held-out photos are used (see --all)")
    quality.add_argument("--all", action="store_true",
                         help="use every photo in --photos (a folder reserved for evaluation)")
    quality.add_argument("--write-calibration", action="store_true",
                         help="also refit the stages' score calibration (model/calibration.json)")
    quality.add_argument("--out", default="bench-quality.json", metavar="FILE",
                         help="where to write the JSON results")
    embedding = _command(benches, "embedding", _bench_embedding, ["detection"],
                         "Embedding speed: images/s at several batch sizes.",
                         "Times the encoder's forward pass (and the stage, with its extra "
                         "content-region views) on the bundled photos, CPU or CUDA.")
    embedding.add_argument("--batch-sizes", default="1,16,32,64", metavar="N,N",
                           help="batch sizes to time")
    embedding.add_argument("--images", type=int, default=256, metavar="N",
                           help="images per measurement")
    embedding.add_argument("--out", default="bench-embedding.json", metavar="FILE",
                           help="where to write the JSON results")
    index = _command(benches, "index", _bench_index, ["detection"],
                     "Vector index options: memory, add rate, search latency and recall.",
                     "For each size and option (--vector-train-after, --vector-ef-search and "
                     "--vector-nprobe apply to the compressed ones): builds the index over synthetic embedding-like vectors in a "
                     "process of its own and reports memory per vector (RSS growth and snapshot "
                     "size), bulk and single add rates, training time, one-query search p50/p99 "
                     "(DUPWATCH_SEARCH_THREADS threads, default 1) and recall@10 against exact "
                     "search. Writes FILE and a markdown table beside it (FILE with .md). 10M "
                     "vectors need about 5 GB (ivf-sq8), 8 GB (hnsw-sq8) or 13 GB (flat) of "
                     "memory.")
    index.add_argument("--sizes", default="100000,1000000", metavar="N,N",
                       help="index sizes in vectors")
    index.add_argument("--options", default="flat,hnsw-sq8,ivf-sq8", metavar="NAME,NAME",
                       help="index options to measure (flat, hnsw-sq8, ivf-sq8)")
    index.add_argument("--breadths", default="", metavar="N,N",
                       help="search breadths to measure on each compressed index, one row each: "
                            "ef_search for hnsw-sq8, nprobe for ivf-sq8 (default: the configured "
                            "--vector-ef-search / --vector-nprobe)")
    index.add_argument("--vectors-per-cluster", type=int, default=1000, metavar="N",
                       help="size of the synthetic data's clusters: fewer makes neighbourhoods "
                            "more diffuse (1M at 100 is harder than 10M at 1000)")
    index.add_argument("--queries", type=int, default=1000, metavar="N",
                       help="search queries per measurement (80%% noisy copies, 20%% fresh)")
    index.add_argument("--merge", action="store_true",
                       help="keep FILE's rows for the sizes and options not measured now "
                            "(to run sizes separately)")
    index.add_argument("--out", default="bench-index.json", metavar="FILE",
                       help="where to write the JSON results")
    soak = _command(benches, "soak", _bench_soak, ["kafka", "detection", "limits"],
                    "Sustained traffic into one worker: loss, lag, memory and latency over time.",
                    "Publishes a steady mix for --minutes (50% new pictures cut from the "
                    "photos, 20% exact copies, 20% edited copies, 10% bad input) to one "
                    "worker process and samples every 5 s: published vs verdicts and dead "
                    "letters received, outstanding events, the worker's consumer lag, index "
                    "size and RSS, the broker's RSS and the latency. Reports missing events, "
                    "p50/p99 latency and RSS growth after --warmup-minutes. Uses an embedded "
                    "broker unless --bootstrap-servers is given on the command line. Exit "
                    "status 1 when an event got no verdict or dead letter.")
    soak.add_argument("--minutes", type=float, default=30.0, metavar="N",
                      help="how long to publish (then it waits for the last verdicts)")
    soak.add_argument("--rate", type=float, default=None, metavar="R",
                      help="events/s to publish; default: 70%% of this mix's capacity, measured "
                           "first by letting the worker drain 2000 events of it (most need the "
                           "embedding, so it is well below `bench throughput`'s figures)")
    soak.add_argument("--warmup-minutes", type=float, default=2.0, metavar="N",
                      help="first minutes not counted in RSS growth (at most half the run)")
    soak.add_argument("--images", default=None, metavar="DIR",
                      help="photos to cut new pictures from (default: the bundled originals "
                           "and unrelated photos)")
    soak.add_argument("--out", default="bench-soak.json", metavar="FILE",
                      help="where to write the JSON results (summary and time series)")

    hostile = _command(benches, "hostile", _bench_hostile, ["detection", "limits", "worker"],
                       "What hostile input of one tenant costs the others: scan bombs among good "
                       "events, slow-loris sources ahead of good events, and `dupwatch scan` of "
                       "bombs among photos.",
                       "Each scenario runs an embedded broker and one worker process with the "
                       "given settings (bombs: also with --max-jpeg-scans 0, so the decode "
                       "processes are stopped at --decode-timeout-ms) and reports how many good "
                       "events got verdicts and how late.")
    hostile.add_argument("--scenarios", default="bombs,slow,scan", metavar="NAME,NAME",
                         help="scenarios to run (bombs, slow, scan)")
    hostile.add_argument("--out", default="bench-hostile.json", metavar="FILE",
                         help="where to write the JSON results")

    train = _command(commands, "train", _train, [],
                     "Train the siamese encoder on a folder of real photos.",
                     "Metric learning (InfoNCE over pairs of augmented views, in-batch "
                     "negatives) from the ImageNet Lite0 initialisation, or fine-tuning an earlier "
                     "encoder (--init FILE). Seeded; checkpoints "
                     "every 100 steps into --out and resumes from there; uses CUDA when "
                     "present. Writes encoder.pt and training.json (with its SHA-256, for "
                     "--weights-sha256).")
    train.add_argument("--photos", required=True, metavar="DIR",
                       help="photo folder (its held-out split is never loaded)")
    train.add_argument("--out", required=True, metavar="DIR", help="checkpoint and weights folder")
    train.add_argument("--steps", type=int, default=900)
    train.add_argument("--batch", type=int, default=48, help="photos per step (two views each)")
    train.add_argument("--resolution", type=int, default=160)
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--init", default="imagenet-lite0", metavar="imagenet-lite0|scratch|FILE",
                       help="start from the ImageNet Lite0 backbone, from random weights, or "
                            "fine-tune an earlier encoder, e.g. runs/v1/encoder.pt")
    train.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate")
    train.add_argument("--warmup-steps", type=int, default=50)
    train.add_argument("--koleo", type=float, default=0.0, metavar="WEIGHT",
                       help="weight of SSCD's entropy (KoLeo) regulariser, which spreads unrelated "
                            "images apart; 0 turns it off")
    train.add_argument("--focus", default="", metavar="FAMILY,FAMILY",
                       help="edit families to over-sample, e.g. rotate90,crop,combo "
                            "(to continue a run on what it finds hardest: raise --steps)")
    train.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
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
    from dupwatch.streams.progress import Progress, wanted
    from dupwatch.streams.publish import Publisher, file_events
    from dupwatch.streams.sources import image_files

    files = image_files(args.paths)
    ensure_topics(settings)
    publisher = Publisher(settings)
    with Progress(len(files), "published", enabled=wanted()) as bar:
        for event in file_events(files, args.tenant, args.as_uri):
            publisher.publish(event)
            bar.advance()
    publisher.close()
    print(f"published {len(files)} images to {settings.input_topic}", file=sys.stderr)
    return 0


def _remove(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.schemas import ControlCommand

    _send_commands(settings, [ControlCommand("remove", args.tenant, args.image_ids)])
    print(f"asked the workers to remove {len(args.image_ids)} images of tenant {args.tenant} "
          f"(via {settings.control_topic})", file=sys.stderr)
    return 0


def _bank_add(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.schemas import ControlCommand
    from dupwatch.streams.sources import image_files

    files = image_files(args.paths)
    _send_commands(settings, (ControlCommand("bank_add", args.tenant, [f.image_id], f.path.read_bytes())
                              for f in files), total=len(files))
    print(f"sent {len(files)} images to the bank of tenant {args.tenant} "
          f"(via {settings.control_topic})", file=sys.stderr)
    return 0


def _send_commands(settings: Settings, commands, total: int = 1) -> None:
    from dupwatch.streams.kafka import ensure_topics
    from dupwatch.streams.progress import Progress, wanted
    from dupwatch.streams.publish import Publisher

    ensure_topics(settings)
    publisher = Publisher(settings, topic=settings.control_topic)
    with Progress(total, "sent", enabled=wanted() and total > 1) as bar:
        for command in commands:
            publisher.publish_raw(command.to_json(), key=command.tenant.encode())
            bar.advance()
    publisher.close()


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
    from dupwatch.streams.progress import Progress, wanted
    from dupwatch.streams.publish import file_events
    from dupwatch.streams.render import print_jsonl
    from dupwatch.streams.sources import image_files

    files = image_files(args.paths)
    processor = Processor(settings.replace(worker_name="scan"), build_cascade(settings))
    outcomes: Counter[str] = Counter()
    with Progress(len(files), "scanned", enabled=wanted(json_stdout=True)) as bar:
        for event in file_events(files, args.tenant):
            outcome = processor.handle(InputRecord(value=event.to_json(), key=event.key))
            outcomes["rejected" if isinstance(outcome, DeadLetter) else outcome.verdict.value] += 1
            print_jsonl(outcome.to_dict(), sys.stdout)
            bar.advance()
    summary = ", ".join(f"{n} {label}" for label, n in sorted(outcomes.items()))
    print(f"scanned {len(files)} images: {summary or 'none'}", file=sys.stderr)
    return 1 if outcomes["rejected"] else 0


def _report(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.streams.report import write_report
    return write_report(settings, args.verdicts, args.images, args.out,
                        page_size=args.page_size, thumb_side=args.thumb_size,
                        idle_timeout_s=args.idle_timeout, max_records=args.max)


def _bench_quality(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.quality import run_quality_bench
    return run_quality_bench(settings, args.photos, args.all, args.out, args.write_calibration)


def _bench_embedding(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.embedding import run_embedding_bench
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    return run_embedding_bench(settings, sizes, args.images, args.out)


def _bench_index(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.index import run_index_bench
    return run_index_bench(settings, [int(size) for size in args.sizes.split(",")],
                           args.options.split(","),
                           [int(breadth) for breadth in args.breadths.split(",") if breadth],
                           args.vectors_per_cluster, args.queries, args.out, args.merge)


def _train(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.model.train import TrainConfig, train
    config = TrainConfig(photos=args.photos, out=args.out, steps=args.steps, batch=args.batch,
                         resolution=args.resolution, seed=args.seed, init=args.init,
                         lr=args.lr, warmup_steps=args.warmup_steps, koleo=args.koleo,
                         focus=tuple(f for f in args.focus.split(",") if f))
    weights = train(config, resume=not args.no_resume,
                    log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"weights written to {weights}", file=sys.stderr)
    return 0


def _bench_workers(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.workers import run_workers_bench
    return run_workers_bench(settings, [int(n) for n in args.counts.split(",")], args.events,
                             args.out)


def _bench_hostile(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.hostile import run_hostile_bench
    return run_hostile_bench(settings, args.scenarios.split(","), args.out)


def _bench_throughput(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.throughput import run_throughput_bench
    return run_throughput_bench(settings, args.images, args.count, args.out)


def _bench_soak(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.soak import run_soak_bench
    return run_soak_bench(settings, args.minutes, args.rate, args.warmup_minutes, args.images,
                          own_broker=args.bootstrap_servers is None, out=args.out)
