"""The grid of a sweep: ``--grid KEY=V1,V2`` and ``--seeds`` parsed, expanded and named.

A grid point is one value per swept key; a run is a grid point and a seed. Its run directory is
named from the values (``defense.aad.alpha=0.01,seed=1``), so a second invocation of the same
sweep finds the same directories. Nothing here imports torch: parsing and naming are checked
before anything is trained.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError

# keys the sweep sets itself: the seed comes from --seeds, the directory from the grid point
RESERVED = ("seed", "out")
MAX_NAME = 200  # below the usual 255-byte file-name limit, with room for a hash suffix


@dataclass(frozen=True)
class Axis:
    """One swept key: its canonical dotted spelling, the values, and their text in run names."""

    key: str
    values: Tuple[Any, ...]
    labels: Tuple[str, ...]
    texts: Tuple[str, ...]  # as the user wrote them: ``--set KEY=TEXT`` reads each back as its value


@dataclass
class Run:
    """One run of the sweep: a grid point (``{key: value}``) and a seed, trained into ``name``."""

    point: Dict[str, Any]
    seed: int
    name: str
    overrides: Dict[str, Any] = field(default_factory=dict)  # the grid point as a nested --set dict
    set_args: List[str] = field(default_factory=list)  # the same as ``--set KEY=VALUE`` arguments


def split_values(text: str) -> List[str]:
    """Split at commas outside brackets, so ``eval.attacks=[fgsm,pgd-20],[fgsm]`` is two lists."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def canonical_key(key: str) -> str:
    """The dotted key as config.yaml spells it: the old flat aliases (``defense.aad_alpha``) become sections."""
    from ..defenses.config import FLAT_ALIASES

    head, _, last = key.rpartition(".")
    if head == "defense" and last in FLAT_ALIASES:
        part, sub = FLAT_ALIASES[last]
        return f"defense.{part}.{sub}"
    return key


def parse_value(key: str, raw: str):
    """A value read exactly as ``--set KEY=VALUE`` reads it (YAML, with the CLI's number fixes)."""
    from ..train.overrides import parse_set

    node = parse_set([f"{key}={raw}"])
    for part in key.split("."):
        node = node[part]
    return node


def value_label(value) -> str:
    """The text of a value in a run name and a table cell: short, stable, without path separators."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (list, tuple)):
        text = "+".join(value_label(v) for v in value)
    elif value is None:
        text = "null"
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("_") or "_"


def parse_grid(specs: Optional[Sequence[str]]) -> List[Axis]:
    """``["KEY=V1,V2", ...]`` -> one :class:`Axis` per key. Raises :class:`ConfigError` on bad input."""
    if not specs:
        raise ConfigError("give at least one --grid KEY=V1,V2,... (e.g. --grid defense.aad.alpha=0,0.01,0.1)")
    axes: List[Axis] = []
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", key):
            raise ConfigError(f"--grid expects KEY=V1,V2,... (e.g. defense.aad.alpha=0,0.01), got {spec!r}")
        key = canonical_key(key)
        if key in RESERVED:
            raise ConfigError(f"--grid {key}: the sweep sets {key} itself (use --seeds for seeds, --out for the "
                              "folder)")
        if any(a.key == key for a in axes):
            raise ConfigError(f"--grid {key} is given twice; list all its values in one --grid")
        texts = split_values(raw)
        if not raw.strip() or any(t == "" for t in texts):
            raise ConfigError(f"--grid {key}: empty value in {raw!r}; expected {key}=V1,V2,...")
        values = tuple(parse_value(key, t) for t in texts)
        # a fraction keeps its spelling in names (adversary.eps=8_255, not 0.03137254901960784)
        labels = tuple(value_label(t if "/" in t and isinstance(v, float) else v) for t, v in zip(texts, values))
        for i, v in enumerate(values):  # 1 and 1.0 are the same run; so are two values with one name
            if v in values[:i] or labels[i] in labels[:i]:
                raise ConfigError(f"--grid {key}: the value {texts[i]} is listed twice")
        axes.append(Axis(key, values, labels, tuple(texts)))
    return axes


def parse_seeds(text: Optional[str]) -> List[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; empty, negative, repeated or non-integer seeds raise ConfigError."""
    items = [t.strip() for t in (text or "").split(",")]
    if not text or any(not t for t in items):
        raise ConfigError(f"--seeds expects a comma-separated list of whole numbers (e.g. 0,1,2), got {text!r}")
    seeds = []
    for t in items:
        if not re.fullmatch(r"\d+", t):
            raise ConfigError(f"--seeds: {t!r} is not a whole number >= 0")
        if int(t) in seeds:
            raise ConfigError(f"--seeds: seed {t} is listed twice")
        seeds.append(int(t))
    return seeds


def _nested(key: str, value) -> dict:
    out: dict = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def run_name(point: Dict[str, str], seed: int) -> str:
    """``key=label,...,seed=S``; over-long names are cut and made unique with a hash of the full name."""
    name = ",".join([f"{k}={v}" for k, v in point.items()] + [f"seed={seed}"])
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME - 11]}-{digest}"
    return name


def expand(axes: Sequence[Axis], seeds: Sequence[int]) -> List[Run]:
    """The cross product of the grid and the seeds, in grid order (the last key varies fastest), seeds innermost."""
    runs: List[Run] = []
    for combo in itertools.product(*[range(len(a.values)) for a in axes]):
        point = {a.key: a.values[i] for a, i in zip(axes, combo)}
        labels = {a.key: a.labels[i] for a, i in zip(axes, combo)}
        overrides: dict = {}
        for a, i in zip(axes, combo):
            _merge_into(overrides, _nested(a.key, a.values[i]))
        set_args = [f"{a.key}={a.texts[i]}" for a, i in zip(axes, combo)]
        for seed in seeds:
            runs.append(Run(point, seed, run_name(labels, seed), overrides, set_args))
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # only a hash-cut long name could collide; keep the cause visible
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"two runs of the grid would share the directory {dup}; shorten the values")
    return runs


def _merge_into(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge_into(dst[k], v)
        else:
            dst[k] = v
