"""User-facing errors.

Anything a user can cause with a bad name, value, file or flag raises a subclass of
:class:`AttnGuardError`. The CLI prints its message on one line and exits with code 2;
no traceback is shown. Library callers can catch it (it is also a ``ValueError``).
"""

from __future__ import annotations

import difflib
from typing import Iterable


class AttnGuardError(ValueError):
    """Base class of every error caused by user input."""


def plural(noun: str) -> str:
    return noun[:-1] + "ies" if noun.endswith("y") and noun[-2:-1] not in "aeiou" else noun + "s"


class UnknownNameError(AttnGuardError, KeyError):
    """A name that is not in a registry. The message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        valid = sorted(valid)
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        super().__init__(f"unknown {kind} '{name}'.{hint} Valid {plural(kind)}: {', '.join(valid)}")
        self.kind, self.name, self.valid = kind, name, valid

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return self.args[0]


class ConfigError(AttnGuardError):
    """A config file or flag value that is malformed, out of range or unknown."""


class CheckpointError(AttnGuardError):
    """A checkpoint or run directory that is missing, truncated, foreign or unsafe."""


class DataError(AttnGuardError):
    """A dataset that is missing or malformed, or input tensors of the wrong shape/range."""


def check_range(name: str, value, low=None, high=None, *, integer: bool = False):
    """Return ``value`` if it lies in [low, high], else raise :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if integer and int(value) != value:
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if value != value:  # NaN
        raise ConfigError(f"{name} must be a number, got NaN")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return int(value) if integer else value
