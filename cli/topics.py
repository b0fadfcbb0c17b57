"""Commands that write to or read from the topics: `dupwatch publish`, `remove`, `bank add`,
`verdicts`."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Iterable

from dupwatch.cli.base import Commands, add_paths_and_tenant, select_files
from dupwatch.settings import Settings

if TYPE_CHECKING:  # loading the schemas (jsonschema) would slow every --help
    from dupwatch.schemas import ControlCommand


def register(commands: Commands) -> None:
    """Add publish, remove, bank and verdicts, in the order `dupwatch --help` lists them."""
    _publish_command(commands)
    _remove_command(commands)
    _bank_command(commands)
    _verdicts_command(commands)


def _publish_command(commands: Commands) -> None:
    publish = commands.add("publish", _publish,
                           "Send image files to the input topic as image events.",
                           "Each file becomes one event, its id the file's path relative to the "
                           "deepest folder holding every PATH (one directory: the path inside "
                           "it). Directories are walked in sorted order; files in them without an "
                           "image suffix are skipped and named on stderr. Empty files are not "
                           "sent: they are named, and the exit status is 1.")
    add_paths_and_tenant(publish, tenant_help="tenant of the events (images only match their own "
                                              "tenant)")
    publish.add_argument("--as-uri", action="store_true",
                         help="send file:// URIs instead of the bytes (the worker must have the "
                              "files under its --uri-roots)")


def _remove_command(commands: Commands) -> None:
    remove = commands.add("remove", _remove,
                          "Take images down: they leave every stage's index, so later copies no "
                          "longer match them.",
                          "Publishes a remove command to the control topic; a worker applies it "
                          "between batches (with a sharded index: as tombstones in the "
                          "changelog, on whichever shard holds each image). Images that were "
                          "never indexed are ignored.")
    remove.add_argument("image_ids", nargs="+", metavar="IMAGE_ID", help="ids of the images")
    remove.add_argument("--tenant", required=True, help="tenant the images belong to")


def _bank_command(commands: Commands) -> None:
    bank = commands.group("bank", "Manage moderation banks: curated images that match-only "
                                  "tenants are checked against.",
                          "A bank is a tenant's set of curated images (e.g. removed content). "
                          "Name the tenant in --match-only-tenants so its uploads are checked "
                          "against the bank but never indexed themselves.", metavar="ACTION")
    bank_add = bank.add("add", _bank_add, "Load image files into a tenant's bank.",
                        "Each file becomes one bank_add command on the control topic; a worker "
                        "indexes it under every stage, with no verdict. Files are chosen and "
                        "named as by `dupwatch publish`. Take an image out of the bank with "
                        "`dupwatch remove`.")
    add_paths_and_tenant(bank_add, tenant_help="the bank's tenant", required=True)


def _verdicts_command(commands: Commands) -> None:
    verdicts = commands.add("verdicts", _verdicts,
                            "Follow the verdict topic and print verdicts as a table or JSON "
                            "lines.",
                            "Prints the verdicts written after it starts (--from-beginning: "
                            "every retained one first). Reads every partition directly (no "
                            "consumer group), so it never moves the workers' offsets. Runs until "
                            "Ctrl-C, --max records or --idle-timeout.")
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


def _publish(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.wiring.kafka import ensure_topics, kafka_publisher, require_broker
    from dupwatch.messaging.publish import file_events
    from dupwatch.reporting.progress import Progress, wanted

    files, empty = select_files(args.paths)
    require_broker(settings)
    ensure_topics(settings, only={settings.input_topic})
    publisher = kafka_publisher(settings)
    with Progress(len(files), "published", enabled=wanted()) as bar:
        for event in file_events(files, args.tenant, args.as_uri):
            publisher.publish(event)
            bar.advance()
    publisher.close()
    print(f"published {len(files)} images to {settings.input_topic} on "
          f"{settings.bootstrap_servers}", file=sys.stderr)
    return 1 if empty else 0


def _remove(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.schemas import ControlCommand

    _send_commands(settings, [ControlCommand("remove", args.tenant, args.image_ids)])
    print(f"asked the workers to remove {len(args.image_ids)} images of tenant {args.tenant} "
          f"(via {settings.control_topic})", file=sys.stderr)
    return 0


def _bank_add(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.schemas import ControlCommand

    files, empty = select_files(args.paths)
    _send_commands(settings, (ControlCommand("bank_add", args.tenant, [f.image_id],
                                             f.path.read_bytes()) for f in files),
                   total=len(files))
    print(f"sent {len(files)} images to the bank of tenant {args.tenant} "
          f"(via {settings.control_topic})", file=sys.stderr)
    return 1 if empty else 0


def _send_commands(settings: Settings, commands: Iterable[ControlCommand], total: int = 1) -> None:
    """Publish control commands, keyed by tenant (one tenant's commands keep their order)."""
    from dupwatch.wiring.kafka import ensure_topics, kafka_publisher, require_broker
    from dupwatch.reporting.progress import Progress, wanted

    require_broker(settings)
    ensure_topics(settings, only={settings.control_topic})
    publisher = kafka_publisher(settings, topic=settings.control_topic)
    with Progress(total, "sent", enabled=wanted() and total > 1) as bar:
        for command in commands:
            publisher.publish_raw(command.to_json(), key=command.tenant.encode())
            bar.advance()
    publisher.close()


def _verdicts(settings: Settings, args: argparse.Namespace) -> int:
    from dupwatch.wiring.kafka import require_broker, topic_reader
    from dupwatch.reporting.render import TablePrinter, print_jsonl

    require_broker(settings)
    topics = [settings.verdict_topic] + ([settings.dead_letter_topic] if args.dead_letters else [])
    table = TablePrinter(sys.stdout)
    with topic_reader(settings, topics, from_beginning=args.from_beginning) as reader:
        print(f"following {' and '.join(topics)} on {settings.bootstrap_servers}: "
              f"{'every retained record, then ' if args.from_beginning else ''}new records "
              "as they arrive", file=sys.stderr, flush=True)
        for record in reader.records(max_records=args.max, idle_timeout_s=args.idle_timeout):
            if args.format == "jsonl":
                print_jsonl(record.document, sys.stdout)
            else:
                table.row(record.document)
    return 0
