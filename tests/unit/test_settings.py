"""Settings from env and flags, in-process. Which commands read each setting is checked with
the configuration page (test_configuration_doc.py); the command line run as a user runs it is
in tests/integration/test_cli.py."""
from __future__ import annotations

import argparse

from dupwatch.settings import Settings


def test_flags_override_environment_which_overrides_defaults() -> None:
    env = {"DUPWATCH_PHASH_MAX_DISTANCE": "6", "DUPWATCH_URI_ROOTS": "/a,/b",
           "DUPWATCH_WEB_ENABLED": "yes", "DUPWATCH_TOP_K": "4"}
    args = argparse.Namespace(top_k="2", phash_max_distance=None)
    settings = Settings.load(env=env, args=args)
    assert (settings.phash_max_distance, settings.uri_roots, settings.web_enabled,
            settings.top_k) == (6, ["/a", "/b"], True, 2)
    assert Settings.load(env={}).phash_max_distance == Settings().phash_max_distance
    assert Settings.load(env=Settings(top_k=9).to_env()) == Settings(top_k=9, worker_name=Settings().worker_name)

