"""Writing an evaluation: ``eval.json`` (the schema), ``eval.md`` (a table), and a rich table for the terminal."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Tuple, Union

from ..errors import AttnGuardError
from ..io import atomic_write_text

KEYS = ("dataset", "model", "eps", "n_examples", "clean", "attacks", "worst_case", "seconds", "sanity")
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
    return result


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
    table = Table(title=escape(_header(result)), title_justify="left")
    table.add_column("attack")
    table.add_column("accuracy %", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row("clean", _pct(result["clean"]), "")
    for name, acc in result["attacks"].items():
        table.add_row(escape(name), _pct(acc), f"{result['seconds'].get(name, 0.0):.1f}")
    table.add_row("[bold]worst case[/bold]", f"[bold]{_pct(result['worst_case'])}[/bold]",
                  f"{sum(result['seconds'].values()):.1f}", end_section=True)
    if result["sanity"]:
        colour = {"pass": "green", "warn": "red", "skip": "yellow"}
        table.caption = "\n".join(f"[{colour[s['status']]}]{s['status']}[/] {escape(s['check'])}: {escape(s['detail'])}"
                                  for s in result["sanity"])
        table.caption_justify = "left"
        table.expand = True  # the caption wraps to the table's width; give it the console's
    return table
