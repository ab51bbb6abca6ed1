"""Writing an evaluation: ``eval.json`` (the schema), ``eval.md`` (a table), and a rich table for the terminal.

Optional keys: ``autoattack_components`` (``{attack: {"n_examples", "robust": {component: accuracy},
"seconds": {component: s}}}``, the robust accuracy after each of AutoAttack's components, cumulative)
and those ``attnguard eval`` adds (``per_example``, ``system``). Files written before a key existed
still load and report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Tuple, Union

from ..errors import AttnGuardError
from ..io import atomic_write_text

KEYS = ("dataset", "model", "eps", "n_examples", "clean", "attacks", "worst_case", "seconds", "sanity")
COMPONENTS_KEY = "autoattack_components"
STATUSES = ("pass", "warn", "skip")


def validate_result(result: dict) -> dict:
    """Raise a one-line AttnGuardError unless ``result`` follows the evaluation schema."""
    if not isinstance(result, dict):
        raise AttnGuardError(f"an evaluation result is a dict, got {type(result).__name__}")
    missing = [k for k in KEYS if k not in result]
    if missing:
        raise AttnGuardError(f"evaluation result lacks {', '.join(missing)}")
    accs = {"clean": result["clean"], "worst_case": result["worst_case"], **dict(result["attacks"])}
    for k, v in accs.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise AttnGuardError(f"accuracy '{k}' must be a fraction in [0, 1], got {v!r}")
    if set(result["seconds"]) - set(result["attacks"]):
        raise AttnGuardError("evaluation 'seconds' names attacks that are not in 'attacks'")
    for line in result["sanity"]:
        if set(line) != {"check", "status", "detail"} or line["status"] not in STATUSES:
            raise AttnGuardError(f"malformed sanity line {line!r}")
    _validate_components(result)
    return result


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _validate_components(result: dict) -> None:
    comps = result.get(COMPONENTS_KEY)
    if comps is None:
        return
    if not isinstance(comps, dict):
        raise AttnGuardError(f"'{COMPONENTS_KEY}' must map attack names to breakdowns, got {type(comps).__name__}")
    for label, entry in comps.items():
        if label not in result["attacks"]:
            raise AttnGuardError(f"'{COMPONENTS_KEY}' names attack '{label}', which is not in 'attacks'")
        if not isinstance(entry, dict) or not isinstance(entry.get("robust"), dict) or not entry["robust"]:
            raise AttnGuardError(f"'{COMPONENTS_KEY}' of '{label}' needs 'robust': {{component: accuracy}}")
        n = entry.get("n_examples")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise AttnGuardError(f"'{COMPONENTS_KEY}' of '{label}' needs 'n_examples' >= 1, got {n!r}")
        for c, v in entry["robust"].items():
            if not _number(v) or not 0 <= v <= 1:
                raise AttnGuardError(f"accuracy of '{label}' after '{c}' must be a fraction in [0, 1], got {v!r}")
        secs = entry.get("seconds", {})
        if not isinstance(secs, dict) or any(not _number(v) or v < 0 for v in secs.values()):
            raise AttnGuardError(f"'{COMPONENTS_KEY}' of '{label}': 'seconds' must map components to seconds >= 0")


def component_rows(result: dict, name: str):
    """``[(label, accuracy, seconds or None)]``: the rows under attack ``name``, one per component."""
    entry = (result.get(COMPONENTS_KEY) or {}).get(name)
    if not entry:
        return []
    n = entry["n_examples"]
    on = f" (on {n} examples)" if n != result["n_examples"] else ""
    secs = entry.get("seconds") or {}
    return [(f"after {c}{on}", acc, secs.get(c)) for c, acc in entry["robust"].items()]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _header(result: dict) -> str:
    norm = result.get("norm", "linf")
    return (f"dataset: {result['dataset'] or '-'} · model: {result['model']} · eps: {result['eps']:.6g} ({norm}) "
            f"· examples: {result['n_examples']}")


def to_markdown(result: dict) -> str:
    validate_result(result)
    secs = result["seconds"]
    rows = ["| attack | accuracy (%) | seconds |", "|---|---:|---:|", f"| clean | {_pct(result['clean'])} | |"]
    for name, acc in result["attacks"].items():
        rows.append(f"| {name} | {_pct(acc)} | {secs.get(name, 0.0):.1f} |")
        for label, part, s in component_rows(result, name):
            rows.append(f"| {name}, {label} | {_pct(part)} | {'' if s is None else f'{s:.1f}'} |")
    total = sum(secs.values())
    rows.append(f"| **worst case** (robust to every attack) | **{_pct(result['worst_case'])}** | {total:.1f} |")
    out = ["# Robustness evaluation", "", _header(result), "", *rows, ""]
    if result["sanity"]:
        out += ["## Sanity checks (Carlini et al. 2019)", ""]
        out += [f"- **{s['status']}** {s['check']}: {s['detail']}" for s in result["sanity"]]
        out.append("")
    return "\n".join(out)


def _paths(out: Union[str, os.PathLike]) -> Tuple[Path, Path]:
    out = Path(out)
    if out.suffix.lower() in (".json", ".md"):
        return out.with_suffix(".json"), out.with_suffix(".md")
    if out.exists() and not out.is_dir():
        raise AttnGuardError(f"output {out} is a file; give a directory or a .json path")
    return out / "eval.json", out / "eval.md"


def write_eval(result: dict, out: Union[str, os.PathLike]) -> Tuple[Path, Path]:
    """Write ``eval.json`` and ``eval.md`` into directory ``out`` (or at ``out``'s stem if it ends in .json).

    Both writes are atomic. Returns the two paths.
    """
    validate_result(result)
    json_path, md_path = _paths(out)
    atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
    atomic_write_text(md_path, to_markdown(result))
    return json_path, md_path


def format_table(result: dict):
    """A ``rich.table.Table`` of the evaluation (sanity lines in its caption)."""
    from rich.markup import escape
    from rich.table import Table

    validate_result(result)
    # model (a run name: one long word) on a line of its own, and the table at least as wide as the
    # longest title line: rich folds a title that is wider than the table mid-word
    title = [f"model: {result['model']}", f"dataset: {result['dataset'] or '-'} · eps: {result['eps']:.6g} "
             f"({result.get('norm', 'linf')}) · examples: {result['n_examples']}"]
    table = Table(title=escape("\n".join(title)), title_justify="left", min_width=max(map(len, title)))
    table.add_column("attack")
    table.add_column("accuracy %", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row("clean", _pct(result["clean"]), "")
    for name, acc in result["attacks"].items():
        table.add_row(escape(name), _pct(acc), f"{result['seconds'].get(name, 0.0):.1f}")
        for label, part, s in component_rows(result, name):
            table.add_row(f"[dim]  {escape(label)}[/dim]", f"[dim]{_pct(part)}[/dim]",
                          "" if s is None else f"[dim]{s:.1f}[/dim]")
    table.add_row("[bold]worst case[/bold]", f"[bold]{_pct(result['worst_case'])}[/bold]",
                  f"{sum(result['seconds'].values()):.1f}", end_section=True)
    if result["sanity"]:
        colour = {"pass": "green", "warn": "red", "skip": "yellow"}
        table.caption = "\n".join(f"[{colour[s['status']]}]{s['status']}[/] {escape(s['check'])}: {escape(s['detail'])}"
                                  for s in result["sanity"])
        table.caption_justify = "left"
        table.expand = True  # the caption wraps to the table's width; give it the console's
    return table
