"""docs/configuration.md is generated from Settings (cli/configuration_doc.py) and kept in step.

A setting added, renamed or re-described without regenerating the page fails here, with the
command that regenerates it."""
from __future__ import annotations

import argparse
import re

from dupwatch.cli.configuration_doc import PAGE, REGENERATE, render
from dupwatch.cli.main import _parser
from dupwatch.locations import docs_page
from dupwatch.settings import Settings

ROW = re.compile(r"^\| `(--[a-z0-9-]+)` \| `(DUPWATCH_[A-Z0-9_]+)` \| (`[^`]*`|\(empty\)) \| "
                 r"([^|]*) \|", flags=re.M)


def _page_rows() -> list[tuple[str, str, str, str]]:
    """(flag, env var, default, used by) of each row of the page as committed."""
    return [(flag, env, default.strip("`") if default != "(empty)" else "", used_by)
            for flag, env, default, used_by in ROW.findall(docs_page(PAGE).read_text())]


def test_the_configuration_page_is_what_the_generator_makes() -> None:
    assert docs_page(PAGE).read_text() == render(), \
        f"docs/{PAGE} is out of date with settings.py: run `{REGENERATE}`"


def test_the_configuration_page_lists_every_setting_with_its_default() -> None:
    rows = [(flag, env, default) for flag, env, default, _ in _page_rows()]
    assert rows == [(flag, env, default) for flag, env, default, _ in Settings.reference_rows()]


def test_used_by_names_exactly_the_commands_whose_help_shows_the_flag() -> None:
    commands = _commands(_parser())
    for flag, env, _, used_by in _page_rows():
        listed = set(re.findall(r"`([^`]+)`", used_by))
        showing = {name for name, parser in commands.items()  # the setting, not a namesake
                   if any(flag in action.option_strings and f"env {env}]" in (action.help or "")
                          for action in parser._actions)}
        assert listed == showing, (flag, listed ^ showing)


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its full name ("bank add")."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                found[full] = sub
                found.update(_commands(sub, full))
    return found
