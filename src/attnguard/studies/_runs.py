"""What the studies that set several runs side by side share: opening them on one dataset, and their labels."""

from __future__ import annotations

from pathlib import Path
from typing import List

from ..errors import ConfigError
from ..rundir import CHECKPOINT_DIR, RunDir
from ..utils.lists import split_list


def runs_on_one_dataset(ctx) -> List[RunDir]:
    """The study's runs, opened; runs on different datasets are a one-line :class:`ConfigError`
    (the panels compare the models on the same test examples)."""
    runs = [RunDir(r) for r in ctx.runs]
    datasets = {r.dataset for r in runs}
    if len(datasets) > 1:
        listed = ", ".join(f"{run_name(r)}: {r.dataset}" for r in runs)
        raise ConfigError(f"study '{ctx.name}' compares models on the same test examples; the runs are on "
                          f"different datasets ({listed})")
    return runs


def run_name(run: RunDir) -> str:
    """The run's name in legends and labels: the directory name, or for a checkpoint file inside a run
    directory (``RUN/checkpoints/last.pt``) ``RUN/last``, so that runs given by their checkpoint (to pick
    ``last`` over ``best``) stay distinguishable instead of all reading ``last``."""
    target = Path(run.target)
    if target.is_file() and target.parent.name == CHECKPOINT_DIR and target.parent.parent.name:
        return f"{target.parent.parent.name}/{target.stem}"
    return run.name


def run_label(run: RunDir) -> str:
    """``name (defense)``, the defense as the run's config names it (``defense.preset``); the name alone if equal."""
    preset, name = run.get("defense.preset"), run_name(run)
    return f"{name} ({preset})" if preset and preset != name else name


def items_option(ctx, key: str) -> List[str]:
    """A list option as strings: a list, one comma-separated string, or one number (``--set`` reads ``3`` as 3)."""
    value = ctx.options[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [int(value) if float(value).is_integer() else value]
    # split_list keeps a path that holds commas (a sweep's run directory) as one item
    items = split_list(value) if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
    items = [str(v).strip() for v in items if str(v).strip()]
    if not items:
        raise ConfigError(f"study '{ctx.name}': option {key} must name at least one item, got {value!r}")
    return items
