"""Numbers as users write them: ``0.3``, ``1e-3`` or a fraction such as ``8/255``.

Threat-model radii are conventionally quoted as fractions of the pixel range (``8/255``), so every
place that reads an eps (flags, ``--set``, YAML configs, a run's config.yaml) reads it through
:func:`parse_number`. Torch-free: the CLI's parser uses it before anything heavy is imported.
"""

from __future__ import annotations

import argparse
import math
import re

from ..errors import ConfigError

# A plain number over a plain number; used to decide that a --set value or a YAML string means a
# number (anything else, e.g. a path with a slash in it, stays a string).
FRACTION = re.compile(r"^\s*[0-9.eE+-]+\s*/\s*[0-9.eE+-]+\s*$")


def is_fraction(text) -> bool:
    """True when ``text`` is a string of the form ``A/B`` with A and B numbers (``8/255``, ``1e-3/2``)."""
    return isinstance(text, str) and FRACTION.match(text) is not None


def parse_number(value, name: str = "value") -> float:
    """``value`` (a number, or a string ``0.3``, ``1e-3``, ``8/255``) as a finite float.

    Raises :class:`ConfigError` (one line, naming ``name``) for anything else: ``8/0``, ``8/x``,
    ``nan``, booleans.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number such as 0.3 or 8/255, got {value!r}")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        top, sep, bottom = value.strip().partition("/")
        try:
            num, den = float(top), (float(bottom) if sep else 1.0)
        except ValueError:
            raise ConfigError(f"{name} must be a number such as 0.3 or 8/255, got {value!r}") from None
        if den == 0:
            raise ConfigError(f"{name} must be a number such as 0.3 or 8/255, got {value!r} (a zero denominator)")
        out = num / den  # correctly rounded: '8/255' gives the float Python's 8 / 255 gives
    else:
        raise ConfigError(f"{name} must be a number such as 0.3 or 8/255, got {value!r}")
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return out


def number_arg(text: str) -> float:
    """An argparse ``type=``: a number or fraction; a bad one is argparse's one-line usage error (exit 2)."""
    try:
        return parse_number(text, "the value")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
