"""Settings from env and flags, and every setting names commands that exist: in-process.

The command line run as a user runs it is in tests/integration/test_cli.py."""
from __future__ import annotations

import argparse
import dataclasses

from dupwatch.settings import Settings
from dupwatch.cli.main import _parser


def test_flags_override_environment_which_overrides_defaults() -> None:
    env = {"DUPWATCH_PHASH_MAX_DISTANCE": "6", "DUPWATCH_URI_ROOTS": "/a,/b",
           "DUPWATCH_WEB_ENABLED": "yes", "DUPWATCH_TOP_K": "4"}
    args = argparse.Namespace(top_k="2", phash_max_distance=None)
    settings = Settings.load(env=env, args=args)
    assert (settings.phash_max_distance, settings.uri_roots, settings.web_enabled,
            settings.top_k) == (6, ["/a", "/b"], True, 2)
    assert Settings.load(env={}).phash_max_distance == Settings().phash_max_distance
    assert Settings.load(env=Settings(top_k=9).to_env()) == Settings(top_k=9, worker_name=Settings().worker_name)


def _subcommands(parser: argparse.ArgumentParser,
                 prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                found[full] = sub
                found.update(_subcommands(sub, full))
    return found


def test_every_setting_names_commands_that_exist() -> None:
    commands = set(_subcommands(_parser()))
    for f in dataclasses.fields(Settings):
        assert f.metadata["used_by"] <= commands, (f.name, f.metadata["used_by"] - commands)
