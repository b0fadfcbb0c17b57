"""What every command group builds on: the help layout, a level of subcommands whose commands
take the settings they read as flags, and the image files that PATH arguments name.

Its own module, not main.py, because main imports every group and each group imports this
(no cycle inside cli/)."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from dupwatch.imaging.files import ImageFile, image_files
from dupwatch.settings import Settings

# What a command runs once its arguments are parsed and its settings loaded: the exit status.
Handler = Callable[[Settings, argparse.Namespace], int]

SKIPPED_NAMED = 20  # skipped files named one by one; beyond, a count


class HelpFormatter(argparse.HelpFormatter):
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


class Commands:
    """One level of subcommands: `dupwatch COMMAND`, or a group's (`dupwatch bench NAME`).

    Each command added runs its handler (``args.run``) and gets a flag for every setting that
    names it in ``used_by`` (by its full name, e.g. "bench soak"), so its help lists only its
    own options."""

    def __init__(self, subparsers: argparse._SubParsersAction, prefix: str = "") -> None:
        self._subparsers = subparsers
        self._prefix = prefix

    def add(self, name: str, run: Handler, summary: str,
            description: str) -> argparse.ArgumentParser:
        """A command, described in --help by its summary and then the description."""
        parser = self._subparsers.add_parser(name, help=summary, formatter_class=HelpFormatter,
                                             description=f"{summary} {description}")
        parser.set_defaults(run=run)
        Settings.add_arguments(parser, self._full(name))
        return parser

    def group(self, name: str, summary: str, description: str, metavar: str) -> Commands:
        """A command made of subcommands (`dupwatch bench`), one of which must be named."""
        parser = self._subparsers.add_parser(name, help=summary, formatter_class=HelpFormatter,
                                             description=description)
        subparsers = parser.add_subparsers(dest=f"{name}_command", metavar=metavar,
                                           required=True)
        return Commands(subparsers, self._full(name))

    def _full(self, name: str) -> str:
        return f"{self._prefix} {name}".strip()


def add_paths_and_tenant(parser: argparse.ArgumentParser, tenant_help: str,
                         required: bool = False) -> None:
    """PATH... and --tenant, as every command that reads image files takes them."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")
    parser.add_argument("--tenant", required=required, default=None if required else "default",
                        help=tenant_help)


def select_files(paths: list[str],
                 empty_allowed: bool = False) -> tuple[list[ImageFile], list[ImageFile]]:
    """The image files PATH names, their skipped neighbours reported on stderr; without
    ``empty_allowed``, empty files are left out and reported too: (files, empty ones)."""
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
