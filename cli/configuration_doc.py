"""docs/configuration.md, generated from :class:`~dupwatch.settings.Settings`.

Every setting's flag, environment variable, default, help and the commands that read it, by
group, in the order settings.py declares them. A unit test fails when the page differs from
what this makes, so the page cannot drift from the code. After changing a setting::

    python -m dupwatch.cli.configuration_doc --write
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from dupwatch.locations import docs_page
from dupwatch.settings import GROUP_TITLES, Settings

PAGE = "configuration.md"
REGENERATE = "python -m dupwatch.cli.configuration_doc --write"

_INTRO = f"""\
<!-- Generated from settings.py by `{REGENERATE}`; edit settings.py, not this page: a test fails when they differ. -->
# Configuration

Every setting is a flag on the commands that read it and a `DUPWATCH_*` environment variable:
flags win over the environment, which wins over the defaults. `dupwatch COMMAND --help` lists
the flags that command reads, with their defaults. Passwords and tokens are never logged:
give them through the environment or a file ([operations: security](operations.md#security)).
"""


def render() -> str:
    """The whole page, as docs/configuration.md must hold it."""
    fields = dataclasses.fields(Settings)
    rows = dict(zip((f.name for f in fields), Settings.reference_rows()))
    sections = [_INTRO]
    for group, title in GROUP_TITLES.items():
        members = [f for f in fields if f.metadata["group"] == group]
        if not members:
            continue
        lines = [f"## {title[0].upper()}{title[1:]}", "",
                 "| flag | environment variable | default | used by | meaning |",
                 "|---|---|---|---|---|"]
        for f in members:
            flag, env, default, help_text = rows[f.name]
            shown = f"`{default}`" if default else "(empty)"
            used_by = ", ".join(f"`{command}`" for command in sorted(f.metadata["used_by"]))
            lines.append(f"| `{flag}` | `{env}` | {_cell(shown)} | {used_by} | {_cell(help_text)} |")
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dupwatch.cli.configuration_doc",
                                     description=__doc__.split("\n", 1)[0])
    parser.add_argument("--write", action="store_true",
                        help=f"write docs/{PAGE} (default: print it to stdout)")
    if parser.parse_args(argv).write:
        docs_page(PAGE).write_text(render())
    else:
        sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
