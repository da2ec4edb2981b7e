"""Errors caused by what the user typed or supplied; the CLI prints them without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake the user can fix; the CLI exits with ``exit_code`` and prints the message only."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration value or override that cannot be used."""


class TaskNotAvailable(UserError):
    """A command whose task is not part of this version."""

    exit_code = 1


class RunFailed(RuntimeError):
    """A run that stopped for a reason its message explains (e.g. the loss diverged); exit 1, no traceback."""

    exit_code = 1


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice most similar to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean X?' suffix, or an empty string."""
    match = closest(name, choices)
    return f" Did you mean '{match}'?" if match else ""
