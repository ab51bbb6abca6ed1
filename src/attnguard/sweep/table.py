"""A sweep's results: ``sweep.md`` (the ``attnguard report --markdown`` table, one row per grid point),
``sweep.json`` (the numbers) and ``sweep.png`` (clean and robust accuracy against each swept key).

Each run is summarized by :func:`attnguard.report.aggregate.run_summary`, the code behind
``attnguard report --markdown``: its evaluations are merged, so the worst case is per example over
every attack of every evaluation file of the run. Only runs whose training is complete and that have
an evaluation count; the others are listed as missing.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import CheckpointError
from ..io import atomic_write_text, read_json
from ..rundir import TRAIN_INFO_FILE, RunDir
from .grid import Axis, Run

WORST = "worst case"


def _stats(values: Sequence[Optional[float]]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": []}
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.mean(vals), "std": std, "n": len(vals), "values": vals}


def _summary(path: Path) -> Optional[dict]:
    """``run_summary`` of a finished, evaluated run (plus its evaluation eps), else None."""
    from ..report.aggregate import run_summary

    info = read_json(path / TRAIN_INFO_FILE) if (path / TRAIN_INFO_FILE).is_file() else None
    if not info or not info.get("complete", True):
        return None
    try:
        s = run_summary(path)
        evals = RunDir(path).evals()
    except CheckpointError:  # not evaluated (yet), or an unreadable file: missing from the table
        return None
    s["eval_eps"] = evals[0][1].get("eps") if evals else None
    return s


def collect(out: Path, axes: Sequence[Axis], runs: Sequence[Run], metric: Optional[str] = None) -> dict:
    """The numbers of every grid point: mean, std and n over seeds of clean, each attack and the worst case."""
    points: Dict[tuple, dict] = {}
    summaries: List[dict] = []
    for run in runs:
        key = tuple(run.point[a.key] if not isinstance(run.point[a.key], list) else tuple(run.point[a.key])
                    for a in axes)
        p = points.setdefault(key, {"values": dict(run.point), "runs": [], "missing": [], "_s": []})
        s = _summary(out / run.name)
        if s is None:
            p["missing"].append(run.name)
            continue
        p["runs"].append(run.name)
        p["_s"].append(s)
        summaries.append(s)
    attacks = sorted({a for s in summaries for a in s["acc"] if a != "clean"})
    rows = []
    for p in points.values():
        members = p.pop("_s")
        p["n"] = len(members)
        p["clean"] = _stats([m["acc"].get("clean") for m in members])
        p["attacks"] = {a: _stats([m["acc"].get(a) for m in members]) for a in attacks}
        p["worst_case"] = _stats([m["worst_case"] for m in members])
        p["seeds"] = sorted(m["seed"] for m in members)
        rows.append(p)
    return {"keys": [a.key for a in axes], "metric": metric or WORST, "points": rows,
            "eps": sorted({s["eval_eps"] for s in summaries if s.get("eval_eps") is not None}),
            "n_examples": sorted({s["n"].get("clean") for s in summaries if s["n"].get("clean")}),
            # the examples behind the plotted robust number: a worst case or an attack@N covers fewer
            "metric_n_examples": sorted({n for s in summaries
                                         if (n := s["n_worst"] if (metric or WORST) == WORST else s["n"].get(metric))}),
            "evaluated": [s["run"] for s in summaries]}


def robust(point: dict, metric: str) -> dict:
    return point["worst_case"] if metric == WORST else point["attacks"].get(metric) or _stats([])


def write_outputs(out: Path, axes: Sequence[Axis], runs: Sequence[Run], *, metric: Optional[str] = None,
                  command: str = "") -> List[Path]:
    """Write sweep.md, sweep.json and (when some run is evaluated) sweep.png into ``out``; return their paths."""
    from ..report.aggregate import aggregate_markdown

    data = collect(out, axes, runs, metric)
    data["command"] = command
    keys = [a.key for a in axes]
    missing = [n for p in data["points"] for n in p["missing"]]
    lines = [f"# Sweep {out.name}", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    lines.append(f"{len(runs)} runs over {len(data['points'])} grid points; {len(data['evaluated'])} trained and "
                 f"evaluated, {len(missing)} missing.")
    lines.append("")
    if data["evaluated"]:
        # the rows follow the grid order because the runs are passed in that order
        lines.append(aggregate_markdown(data["evaluated"], group_by=keys))
    else:
        lines.append("No run of this sweep is trained and evaluated yet.\n")
    if missing:
        lines.append("Missing (not finished or not evaluated): " + ", ".join(missing) + "\n")
    written = [out / "sweep.md", out / "sweep.json"]
    atomic_write_text(written[0], "\n".join(lines))
    atomic_write_text(written[1], json.dumps(data, indent=1, default=str) + "\n")
    png = out / "sweep.png"
    if data["evaluated"]:
        plot(data, axes, png)
        written.append(png)
    return written


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def x_scale(values) -> tuple:
    """``("log", {})`` when positive values span two decades or more; symlog when 0 is among them."""
    if not _numeric(values):
        return "linear", {}
    nonzero = [abs(v) for v in values if v != 0]
    if len(nonzero) < 2 or any(v < 0 for v in values) or max(nonzero) / min(nonzero) < 100:
        return "linear", {}
    if len(nonzero) < len(values):
        return "symlog", {"linthresh": min(nonzero)}  # AAD Fig. 8 sweeps alpha over 0, 0.001, ..., 1
    return "log", {}


def _title_facts(data: dict) -> str:
    seeds = sorted({p["n"] for p in data["points"] if p["n"]})
    n_seeds = "/".join(map(str, seeds)) or "0"
    facts = [f"n = {n_seeds} seed{'s' if seeds != [1] else ''} per point"]
    if data["n_examples"]:
        text = f"{'/'.join(map(str, data['n_examples']))} test examples"
        robust_n = data.get("metric_n_examples") or []
        if robust_n and robust_n != data["n_examples"]:  # e.g. a worst case that includes autoattack@100
            text = f"clean on {text}, {data['metric']} on the first {'/'.join(map(str, robust_n))}"
        facts.append(text)
    if data["eps"]:
        facts.append("eps " + "/".join(f"{e:.4g}" for e in data["eps"]))
    return ", ".join(facts)


def plot(data: dict, axes: Sequence[Axis], out: Path) -> Path:
    """One panel per swept key: clean and robust accuracy (%) against its values, error bars = std over seeds.

    With several keys, each combination of the other keys' values is its own pair of lines.
    """
    from ..analysis._figures import class_color, new_figure, save_png, styled

    return styled(_plot)(data, axes, out, new_figure, save_png, class_color)


def _plot(data, axes, out, new_figure, save_png, class_color):
    metric = data["metric"]
    # a key given one value is a constant of the sweep, not an axis: no panel of one point, no line
    # labels repeating it; it is named in the titles instead
    varied = [a for a in axes if len(a.values) > 1] or list(axes)
    fixed = [a for a in axes if a not in varied]
    held = ", ".join(f"{a.key.split('.')[-1]}={a.texts[0]}" for a in fixed)
    cols = min(len(varied), 3)
    rows = math.ceil(len(varied) / cols)
    fig = new_figure(4.6 * cols, 3.6 * rows)
    for i, axis in enumerate(varied):
        ax = fig.add_subplot(rows, cols, i + 1)
        numeric = _numeric(axis.values)
        xs = list(axis.values) if numeric else list(range(len(axis.values)))
        others = [a for a in varied if a is not axis]
        series: Dict[tuple, Dict[int, dict]] = {}
        for p in data["points"]:
            label = tuple(f"{a.key.split('.')[-1]}={a.labels[_index(a, p['values'][a.key])]}" for a in others)
            series.setdefault(label, {})[_index(axis, p["values"][axis.key])] = p
        for j, (label, by_x) in enumerate(series.items()):
            order = sorted(by_x)
            x = [xs[k] for k in order]
            suffix = f" ({', '.join(label)})" if label else ""
            for what, style, marker in (("clean", "-", "o"), (metric, "--", "s")):
                st = [by_x[k]["clean"] if what == "clean" else robust(by_x[k], metric) for k in order]
                y = [100 * s["mean"] if s["mean"] is not None else math.nan for s in st]
                err = [100 * s["std"] if s["std"] is not None else 0.0 for s in st]
                color = class_color(2 * j + (what != "clean")) if label else ("#1f77b4" if what == "clean"
                                                                           else "#d62728")
                ax.errorbar(x, y, yerr=err, linestyle=style, marker=marker, color=color, capsize=3,
                            label=f"{what}{suffix}")
        scale, kw = x_scale(axis.values)
        if scale != "linear":
            ax.set_xscale(scale, **kw)
        if not numeric:
            ax.set_xticks(xs)
            ax.set_xticklabels(axis.texts, rotation=20 if len(axis.texts) > 4 else 0)
        else:
            ax.set_xticks(xs)
            ax.set_xticklabels(axis.texts)  # as the user wrote them (8/255, 1e-3)
        ax.set_xlabel(axis.key)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(f"clean and {metric} accuracy vs {axis.key.split('.')[-1]}" + (f" ({held})" if held else "")
                     + f"\n{_title_facts(data)}")
        ax.legend(fontsize=7)
    return save_png(fig, out, metadata={"Title": "attnguard sweep"})


def _index(axis: Axis, value) -> int:
    for i, v in enumerate(axis.values):
        if v == value or (isinstance(v, list) and list(value) == v):
            return i
    raise KeyError(value)
