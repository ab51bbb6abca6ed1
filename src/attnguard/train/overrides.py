"""Command-line overrides as a nested dict: ``--set KEY=VALUE`` items and the train flags.

Shared by ``attnguard train``, ``study`` and ``sweep`` (which passes train flags through), so it
sits below all of them: the sweep package reads it without importing the CLI module. It imports
no torch at load time (train.config does, through the registries), so `attnguard --help` stays fast.
"""

from __future__ import annotations

import re
from typing import List, Optional

from ..errors import ConfigError
from ..utils.numbers import is_fraction, parse_number

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_set(values: Optional[List[str]]) -> dict:
    """``--set KEY=VALUE`` items as a nested dict; values read as YAML, except that on/off stay
    strings, 1e-3 is a number and 8/255 a fraction (eps)."""
    import yaml

    from .config import set_path

    out: dict = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs=3), got {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw.strip()  # YAML 1.1 reads on/off/yes/no as booleans: train.amp=off means "off"
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        elif is_fraction(value):
            value = parse_number(value, key.strip())  # adversary.eps=8/255; 8/0 is a one-line error
        set_path(out, key.strip(), value)
    return out


def train_overrides(args) -> dict:
    """``--set`` items plus the train flags that were given (a flag wins over a --set of its key)."""
    from .config import set_path

    o = parse_set(args.set)
    for flag, key in [("dataset", "data.name"), ("data_root", "data.root"), ("download", "data.download"),
                      ("model", "model.name"), ("defense", "defense.preset"), ("epochs", "train.epochs"),
                      ("eps", "adversary.eps"), ("batch_size", "train.batch_size"), ("lr", "optim.lr"),
                      ("seed", "seed"), ("device", "train.device"), ("out", "out")]:
        value = getattr(args, flag)
        if value is not None:
            set_path(o, key, value)
    return o
