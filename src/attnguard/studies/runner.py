"""The one runner every study goes through.

It checks the run count and the options, runs the study, then writes ``<name>.json``: the numbers
plus what made them (study, runs, options, date), so that a figure can always be traced to its command.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..errors import ConfigError
from .registry import STUDIES, STUDIES_DIR, StudyContext


def _options(name: str, given: Dict[str, Any], defaults: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "none"
        raise ConfigError(f"study '{name}' has no option {', '.join(unknown)} (its options: {valid})")
    return {**defaults, **given}


def run_study(name: str, runs: Sequence[str], out: Optional[str] = None,
              options: Optional[Dict[str, Any]] = None, device: str = "auto", force: bool = False) -> StudyContext:
    """Run study ``name`` on ``runs``; returns its context (``ctx.png``, ``ctx.json`` written).

    An existing ``<name>.json`` in the output folder is refused unless ``force``: a study never
    silently replaces an earlier result.
    """
    from . import catalog  # noqa: F401  (registers the studies; here, not at import, as they load plotting)

    entry = STUDIES.entry(name)
    runs = [str(r) for r in runs]
    lo, hi = entry.meta.get("min_runs", 1), entry.meta.get("max_runs")
    if len(runs) < lo or (hi is not None and len(runs) > hi):
        want = f"{lo}" if hi == lo else f"{lo} to {hi}" if hi else f"at least {lo}"
        raise ConfigError(f"study '{name}' takes {want} run(s), got {len(runs)}")
    opts = _options(name, dict(options or {}), dict(entry.meta.get("options", {})))
    out_dir = Path(out) if out else Path(runs[0]) / STUDIES_DIR
    ctx = StudyContext(name=name, runs=runs, out_dir=out_dir, options=opts, device=device)
    if ctx.json.exists() and not force:
        raise ConfigError(f"{ctx.json} exists; pass --force to replace it, or --out another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    numbers = entry.builder(ctx)
    record = {"study": name, "paper": entry.meta.get("paper", ""), "runs": runs, "options": opts,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "png": ctx.png.name, "numbers": numbers}
    from ..io import atomic_write_text

    atomic_write_text(ctx.json, json.dumps(record, indent=2, default=str))
    return ctx
