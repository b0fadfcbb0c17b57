"""Errors that reach a user: library code raises them, only the CLI turns them into an exit
status and one line on stderr (cli/main.py). Each message says what happened, to what, and
what to do."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or a situation the user can fix; exit status 2."""
    exit_status = 2


class ConfigError(UserError):
    """Settings that cannot work together or with what is already there (topics, files)."""


class StateError(UserError):
    """Saved state (an index snapshot) that must not be served: damaged, partial or from an
    incompatible version; the message names the file."""


class WorkerFailed(BaseException):
    """A worker's background thread died: the process must end non-zero so that it is
    restarted (exit status 70, EX_SOFTWARE). A BaseException, like SystemExit, so that no
    handler of ordinary errors (one event's dead letter) swallows it."""
    exit_status = 70
