"""Commands over image files and verdicts, no worker needed: `dupwatch scan`, `dupwatch report`."""
from __future__ import annotations

import argparse
import sys

from dupwatch.cli.base import Commands, add_paths_and_tenant, select_files
from dupwatch.settings import Settings


def register(commands: Commands) -> None:
    """Add scan and report, in the order `dupwatch --help` lists them."""
    _scan_command(commands)
    _report_command(commands)


def _scan_command(commands: Commands) -> None:
    scan = commands.add("scan", _scan,
                        "Run the cascade in-process over image files, no broker needed.",
                        "Each file is checked against the ones before it, exactly as a worker "
                        "would check events, in argument order (directories walked in sorted "
                        "order) or --order. Files are named and chosen as by `dupwatch publish`; "
                        "an empty or unreadable file prints a dead-letter record and makes the "
                        "exit status 1.")
    add_paths_and_tenant(scan, tenant_help="tenant written into the verdicts")
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


def _report_command(commands: Commands) -> None:
    report = commands.add("report", _report,
                          "Write an HTML page of the duplicate pairs for people to review.",
                          "Verdicts come from a JSON-lines file (what `dupwatch scan` or "
                          "`dupwatch verdicts --format jsonl` print) or, when no such file "
                          "exists, from the topic of that name, read from its beginning until "
                          "--idle-timeout passes without a new record. Each duplicate is shown "
                          "beside the image it matched with its verdict, stage and score, grouped "
                          "under the first image of its chain. Thumbnails come from --images and "
                          "are embedded, so the page is one file that needs no server. It filters "
                          "by verdict and stage and shows --page-size groups at a time.")
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


def _scan(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.pipeline.scan import in_order, run_scan
    from dupwatch.wiring.cascade import scan_processor

    files, _ = select_files(args.paths, empty_allowed=True)  # scan dead-letters them, by name
    if args.order != "given":
        files = in_order(files, args.order)
    output = args.format
    if output == "auto":
        output = "table" if sys.stdout.isatty() else "jsonl"
    return run_scan(lambda: scan_processor(settings), settings.batch_size, files, args.tenant,
                    output, args.keep)


def _report(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.reporting.report import write_report
    from dupwatch.wiring.kafka import kafka_options
    return write_report(kafka_options(settings), settings.max_image_pixels, args.verdicts,
                        args.images, args.out,
                        page_size=args.page_size, thumb_side=args.thumb_size,
                        idle_timeout_s=args.idle_timeout, max_records=args.max)
