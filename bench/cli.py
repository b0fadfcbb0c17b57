"""`dupwatch bench NAME`: each benchmark's subcommand, its options and its handler.

The benchmark modules are imported only by the handlers: they load FAISS, PyTorch, PIL and the
Kafka clients (`bench index` alone takes seconds), which `dupwatch --help` must not wait for.
Options the benchmarks share come from one helper each: --out (every one's: bench-NAME.json),
the N,N lists of counts and sizes (a bad one is an argparse error, before anything starts) and
the traffic of the benches that publish a mix for minutes (--minutes, --rate, --images)."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Protocol

from dupwatch.settings import Settings

Handler = Callable[[Settings, argparse.Namespace], int]


class Commands(Protocol):
    """A level of subcommands, as the command line (cli/base.py) makes them: bench cannot
    import it, being below cli."""

    def add(self, name: str, run: Handler, summary: str,
            description: str) -> argparse.ArgumentParser: ...

    def group(self, name: str, summary: str, description: str, metavar: str) -> Commands: ...


def register(commands: Commands) -> None:
    """Add `dupwatch bench` and a subcommand for each benchmark, in the order help lists them."""
    benches = commands.group("bench", "Measure speed (results as JSON and a table).",
                             "Benchmarks. Results go to --out as JSON and to stdout as a table.",
                             metavar="BENCHMARK")
    for add in (_throughput_command, _workers_command, _recovery_command, _quality_command,
                _embedding_command, _index_command, _features_command, _soak_command,
                _chaos_command, _lookup_command, _hostile_command):
        add(benches)


def _add_out(parser: argparse.ArgumentParser, bench: str,
             what: str = "the JSON results") -> None:
    parser.add_argument("--out", default=f"bench-{bench}.json", metavar="FILE",
                        help=f"where to write {what}")


def _numbers(text: str) -> list[int]:
    """An N,N option's value (an empty one: none)."""
    try:
        return [int(n) for n in text.split(",") if n]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected whole numbers separated by commas, "
                                         "e.g. 1,2,3") from None


def _add_numbers(parser: argparse.ArgumentParser, flag: str, default: str, help: str) -> None:
    parser.add_argument(flag, type=_numbers, default=default, metavar="N,N", help=help)


def _add_traffic(parser: argparse.ArgumentParser, minutes: float, rate_help: str) -> None:
    """The options of the benches that publish `bench soak`'s mix for minutes."""
    parser.add_argument("--minutes", type=float, default=minutes, metavar="N",
                        help="how long to publish (then it waits for the last verdicts and "
                             "dead letters)")
    parser.add_argument("--rate", type=float, default=None, metavar="R", help=rate_help)
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="photos to cut new pictures from (default: the bundled originals "
                             "and unrelated photos)")


def _throughput_command(benches: Commands) -> None:
    throughput = benches.add("throughput", _throughput,
                             "Images/s in-process vs end to end through the broker, and latency.",
                             "(a) decode + SHA-256 + pHash in-process, (b) publish -> worker -> "
                             "verdicts through an embedded broker, on the same images; reports "
                             "images/s for both and p50/p99 end-to-end latency.")
    throughput.add_argument("--images", default=None, metavar="DIR",
                            help="folder of photos (default: the bundled samples)")
    throughput.add_argument("--count", type=int, default=2000, metavar="N",
                            help="events per measurement (photos are reused with unique bytes)")
    _add_out(throughput, "throughput")


def _throughput(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.throughput import run_throughput_bench
    return run_throughput_bench(settings, args.images, args.count, args.out)


def _workers_command(benches: Commands) -> None:
    workers = benches.add("workers", _workers,
                          "End-to-end images/s with 1, 2, 3... workers sharing a sharded index.",
                          "For each count: an embedded broker and that many worker processes "
                          "with --shards shards between them (default: the largest count), all "
                          "ready before the clock starts; events published as fast as possible, "
                          "timed to the last verdict. Reports images/s and latency per count.")
    _add_numbers(workers, "--counts", "1,2,3", "worker counts to measure")
    workers.add_argument("--events", type=int, default=1000, metavar="N",
                         help="events per measurement (bundled photos, unique bytes each)")
    _add_out(workers, "workers")


def _workers(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.workers import run_workers_bench
    return run_workers_bench(settings, args.counts, args.events, args.out)


def _features_command(benches: Commands) -> None:
    features = benches.add("features", _features,
                           "RAM, disk and check time of the verify stage's feature index at N "
                           "images.",
                           "For each size, in a process of its own: the local features of real "
                           "pictures added under that many keys, as a shard holds them; RAM and "
                           "disk per image, add rate, and the time to check one candidate with "
                           "the page cache warm and cold.")
    _add_numbers(features, "--sizes", "100000", "images to hold")
    features.add_argument("--images", action="append", default=[], metavar="DIR",
                          help="pictures whose features fill the index (default: the bundled "
                               "samples; repeat for more folders)")
    _add_out(features, "features")


def _features(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.features import run_features_bench
    return run_features_bench(args.sizes, args.images, args.out)


def _recovery_command(benches: Commands) -> None:
    recovery = benches.add("recovery", _recovery,
                           "Seconds for a shard of N images to recover: snapshot + changelog "
                           "tail.",
                           "In-process, with a shard's store, codec and batched apply, on "
                           "entries shaped as the default cascade writes them (~10 KB, local "
                           "features included): replays N changelog records (a shard without a "
                           "snapshot; the first 20,000 also one at a time from JSON, as before "
                           "batching), writes the shard's snapshot in the background while "
                           "looking up stored images (the fork's pause, lookup latency), loads "
                           "it, then applies --tail more records. Then --broker-records "
                           "records through the bundled broker, rebuilt by a real shard server "
                           "(fetching included). Needs about 25 GB of disk in TMPDIR and 6 GB "
                           "of RAM at 1,000,000.")
    _add_numbers(recovery, "--sizes", "100000", "images (changelog records) per shard to measure")
    recovery.add_argument("--tail", type=int, default=10_000, metavar="N",
                          help="records applied after the snapshot is loaded")
    recovery.add_argument("--broker-records", type=int, default=100_000, metavar="N",
                          help="records of the rebuild through the bundled broker (0: skip it)")
    _add_out(recovery, "recovery")


def _recovery(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.recovery import run_recovery_bench
    return run_recovery_bench(settings, args.sizes, args.tail, args.broker_records, args.out)


def _quality_command(benches: Commands) -> None:
    quality = benches.add("quality", _quality,
                          "Detection quality on images from sources training never saw.",
                          "Fits the worker's score calibration on one group of held-out source "
                          "packages and measures on another (and on photos held out within the "
                          "training packages): references, edited copies (19 families: crops, "
                          "rotations, overlays, screenshots, ...), look-alike and edited "
                          "negatives, with fixed seeds. Reports micro-AP, recall at precision "
                          "0.99 per family and kind, and precision at the worker's min_score for "
                          "pHash, PDQ, the embedding and the cascade; then streams the held-out "
                          "images through the cascade and counts false matches among distinct "
                          "look-alikes.")
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
    _add_out(quality, "quality")


def _quality(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.quality import run_quality_bench
    return run_quality_bench(settings, args.photos, args.all, args.out, args.write_calibration)


def _embedding_command(benches: Commands) -> None:
    embedding = benches.add("embedding", _embedding,
                            "Embedding speed per backend and batch size; --profile: where a "
                            "scan's time goes, per image.",
                            "Times the encoder's forward pass (and the stage, with its extra "
                            "content-region views) on --photos, CPU or CUDA, for each of "
                            "--backends. --profile adds, per backend, the milliseconds per image "
                            "of each step of the cascade run on its own (read, decode, cheap "
                            "stages, local features, views, preprocess, forward, search + "
                            "decide + index) and "
                            "`dupwatch scan`'s images/s end to end (start-up excluded) over the "
                            "same photos, as JSON and a markdown table; --peer times SSCD int8 "
                            "and `dupwatch scan` side by side. onnx-int8 needs `dupwatch model "
                            "export` first.")
    embedding.add_argument("--backends", default=None, metavar="NAME,NAME",
                           help="backends to measure side by side: torch, onnx, onnx-int8 "
                                "(default: --embedding-backend)")
    _add_numbers(embedding, "--batch-sizes", "1,16,32,64", "batch sizes to time")
    embedding.add_argument("--images", type=int, default=256, metavar="N",
                           help="images per forward-pass measurement (the photos reused)")
    embedding.add_argument("--profile", action="store_true",
                           help="profile each step per image, and time `dupwatch scan`")
    embedding.add_argument("--peer", action="store_true",
                           help="also time the best open descriptor over the same photos (SSCD's "
                                "ResNet-50, int8, 288 px; built once, needs the train extra) and "
                                "`dupwatch scan` beside it")
    embedding.add_argument("--photos", action="append", default=[], metavar="DIR",
                           help="photos to use; repeat for more (default: the bundled samples)")
    _add_out(embedding, "embedding")


def _embedding(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.embedding import run_embedding_bench
    from dupwatch.model.backends import NAMES

    backends = (args.backends or settings.embedding_backend).split(",")
    if set(backends) - set(NAMES):
        print(f"dupwatch: --backends {args.backends!r}: choose from {', '.join(NAMES)}",
              file=sys.stderr)
        return 2
    return run_embedding_bench(settings, backends, args.batch_sizes, args.images, args.profile,
                               args.peer, args.photos, args.out)


def _index_command(benches: Commands) -> None:
    index = benches.add("index", _index,
                        "Vector index options: memory, add rate, search latency and recall.",
                        "For each size and option (--vector-train-after, --vector-ef-search and "
                        "--vector-nprobe apply to the compressed ones): builds the index over "
                        "synthetic embedding-like vectors in a process of its own and reports "
                        "memory per vector (RSS growth and snapshot size), bulk and single add "
                        "rates, training time, one-query search p50/p99 (DUPWATCH_SEARCH_THREADS "
                        "threads, default 1) and recall@10 against exact search. Writes FILE and "
                        "a markdown table beside it (FILE with .md). The memory 10M vectors need: "
                        "docs/benchmarks.md.")
    _add_numbers(index, "--sizes", "100000,1000000", "index sizes in vectors")
    index.add_argument("--options", default="flat,hnsw-sq8,ivf-sq8", metavar="NAME,NAME",
                       help="index options to measure (flat, hnsw-sq8, ivf-sq8)")
    _add_numbers(index, "--breadths", "",
                 "search breadths to measure on each compressed index, one row each: ef_search "
                 "for hnsw-sq8, nprobe for ivf-sq8 (default: the configured --vector-ef-search / "
                 "--vector-nprobe)")
    index.add_argument("--vectors-per-cluster", type=int, default=1000, metavar="N",
                       help="size of the synthetic data's clusters: fewer makes neighbourhoods "
                            "more diffuse (1M at 100 is harder than 10M at 1000)")
    index.add_argument("--queries", type=int, default=1000, metavar="N",
                       help="search queries per measurement (80%% noisy copies, 20%% fresh)")
    index.add_argument("--merge", action="store_true",
                       help="keep FILE's rows for the sizes and options not measured now "
                            "(to run sizes separately)")
    _add_out(index, "index")


def _index(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.index import run_index_bench
    return run_index_bench(settings, args.sizes, args.options.split(","), args.breadths,
                           args.vectors_per_cluster, args.queries, args.out, args.merge)


def _soak_command(benches: Commands) -> None:
    soak = benches.add("soak", _soak,
                       "Sustained traffic into one worker: loss, lag, memory and latency over "
                       "time.",
                       "Publishes a steady mix for --minutes (50% new pictures cut from the "
                       "photos, 20% exact copies, 20% edited copies, 10% bad input) to one "
                       "worker process and samples every 5 s: published vs verdicts and dead "
                       "letters received, outstanding events, the worker's consumer lag, index "
                       "size and RSS, the broker's RSS and the latency. Reports missing events, "
                       "p50/p99 latency and RSS growth after --warmup-minutes. Uses an embedded "
                       "broker unless --bootstrap-servers is given on the command line. Exit "
                       "status 1 when an event got no verdict or dead letter.")
    _add_traffic(soak, 30.0, "events/s to publish; default: 70%% of this mix's capacity, "
                             "measured first by letting the worker drain 2000 events of it (most "
                             "need the embedding, so it is well below `bench throughput`'s "
                             "figures)")
    soak.add_argument("--warmup-minutes", type=float, default=2.0, metavar="N",
                      help="first minutes not counted in RSS growth (at most half the run)")
    _add_out(soak, "soak", "the JSON results (summary and time series)")


def _soak(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.soak import run_soak_bench
    from dupwatch.wiring.kafka import require_broker

    # Only the flag, not DUPWATCH_BOOTSTRAP_SERVERS, means "soak that broker" (see its help).
    own_broker = args.bootstrap_servers is None
    if not own_broker:
        require_broker(settings)
    return run_soak_bench(settings, args.minutes, args.rate, args.warmup_minutes, args.images,
                          own_broker=own_broker, out=args.out)


def _chaos_command(benches: Commands) -> None:
    chaos = benches.add("chaos", _chaos,
                        "Three workers under traffic while workers are killed and the broker "
                        "frozen: lost, inconsistent and missed events, latency, lag, memory.",
                        "Starts an embedded broker and three worker processes sharing a sharded "
                        "index (each with its own state folder), measures their capacity on "
                        "`bench soak`'s mix, then publishes that mix at half of it for "
                        "--minutes, over two tenants, with a third sending scan bombs. "
                        "Meanwhile, one fault at a time: a random worker is killed (SIGKILL) "
                        "every --kill-every seconds and started again at once, and the broker "
                        "is frozen (SIGSTOP, then SIGCONT) --stalls times for --stall-seconds. "
                        "A fault's window lasts until every worker is ready again and the "
                        "events published until then are answered. Reports, per window and "
                        "outside the windows: events lost (no verdict or dead letter), "
                        "re-delivered events answered differently, exact copies that missed an "
                        "original already answered, p99 latency, consumer lag; and each "
                        "process's RSS over time. Exit status 1 when anything was lost, "
                        "inconsistent or missed, or a worker exited unexpectedly (its logs are "
                        "then kept in FILE.logs/). Definitions: the module's docstring "
                        "(bench/chaos.py); results: docs/benchmarks.md.")
    _add_traffic(chaos, 10.0, "events/s to publish, skipping the capacity probe; default: "
                              "half the three workers' capacity, measured first by letting them "
                              "drain 2000 events of the mix")
    chaos.add_argument("--kill-every", type=float, default=45.0, metavar="S",
                       help="seconds between worker kills, +-25%% (seeded); 0: no kills")
    chaos.add_argument("--stalls", type=int, default=2, metavar="N",
                       help="broker freezes, spread evenly over the run")
    chaos.add_argument("--stall-seconds", type=float, default=15.0, metavar="S",
                       help="how long each broker freeze lasts")
    chaos.add_argument("--logs", default=None, metavar="DIR",
                       help="keep every worker's log in DIR (default: kept in FILE.logs/ only "
                            "when the run fails)")
    _add_out(chaos, "chaos", "the JSON results (lost, inconsistent, missed_copies, windows, "
                             "series)")


def _chaos(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.chaos import Schedule, run_chaos_bench
    schedule = Schedule(args.minutes * 60, args.kill_every, args.stalls, args.stall_seconds)
    return run_chaos_bench(settings, schedule, args.rate, args.images, args.out, args.logs)


def _lookup_command(benches: Commands) -> None:
    lookup = benches.add("lookup", _lookup,
                         "Synchronous lookups (POST /v1/lookup) per second and their latency, "
                         "alone and beside a stream at half its capacity.",
                         "An embedded broker and one worker process whose stream indexes 200 new "
                         "pictures; then, at each --concurrency, clients send lookups one after "
                         "another for --seconds: re-encoded copies the pHash settles, and new "
                         "pictures that need the embedding. Then the worker's capacity on `bench "
                         "soak`'s mix is measured and the mix flows at half of it, alone and "
                         "beside each kind of lookup at concurrency 8: the stream's verdict rate "
                         "kept and the lookups' p99 against alone. Records the load average at "
                         "each step.")
    _add_numbers(lookup, "--concurrency", "1,8,32", "concurrent clients, one measurement each")
    lookup.add_argument("--seconds", type=float, default=10.0, metavar="S",
                        help="length of each measurement")
    _add_out(lookup, "lookup")


def _lookup(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.lookup import run_lookup_bench
    return run_lookup_bench(settings, args.concurrency, args.seconds, args.out)


def _hostile_command(benches: Commands) -> None:
    hostile = benches.add("hostile", _hostile,
                          "What hostile input of one tenant costs the others: scan bombs among "
                          "good events, slow-loris sources ahead of good events, and `dupwatch "
                          "scan` of bombs among photos.",
                          "Each scenario runs an embedded broker and one worker process with the "
                          "given settings (bombs: also with --max-jpeg-scans 0, so the decode "
                          "processes are stopped at --decode-timeout-ms) and reports how many "
                          "good events got verdicts and how late.")
    hostile.add_argument("--scenarios", default="bombs,slow,scan", metavar="NAME,NAME",
                         help="scenarios to run (bombs, slow, scan)")
    _add_out(hostile, "hostile")


def _hostile(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.bench.hostile import run_hostile_bench
    return run_hostile_bench(settings, args.scenarios.split(","), args.out)
