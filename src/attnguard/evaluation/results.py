"""Writing an evaluation: ``eval.json`` (the schema), ``eval.md`` (a table), and a rich table for the terminal.

Optional keys: ``n_per_attack`` (``{attack: n}``, the examples each attack ran on: the first n of
``n_examples``; absent in older files, where every attack ran on all of them), ``n_worst`` (the
examples ``worst_case`` covers) and ``worst_cases`` (see :func:`worst_cases`), ``autoattack_components``
(``{attack: {"n_examples", "robust": {component: accuracy}, "seconds": {component: s}}}``, the robust
accuracy after each of AutoAttack's components, cumulative) and those ``attnguard eval`` adds
(``per_example``, ``system``). Files written before a key existed still load and report.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple, Union

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
    _validate_counts(result)
    return result


def worst_cases(clean: Sequence[bool], attacks: Mapping[str, Sequence[bool]]) -> List[dict]:
    """The per-example worst cases of attacks run on different prefixes of the same examples.

    ``clean[i]`` / ``attacks[name][i]``: example ``i`` correct clean / clean and after the attack, an
    attack's list covering its first ``n_a`` examples. One entry per distinct ``n_a``, smallest first:
    ``{"n_examples": n, "attacks": [the attacks run on at least n], "accuracy"}``, an example counting
    only if it is correct clean and under every one of those attacks. The first entry is over every
    attack (on the examples all of them ran on); the later ones cover more examples with fewer attacks.
    Without attacks: the clean accuracy on all examples.
    """
    sizes = sorted({len(m) for m in attacks.values()}) or [len(clean)]
    out = []
    for n in sizes:
        names = [k for k, m in attacks.items() if len(m) >= n]
        robust = sum(1 for i in range(n) if clean[i] and all(attacks[k][i] for k in names))
        out.append({"n_examples": n, "attacks": names, "accuracy": robust / n})
    return out


def attack_n(result: dict, name: str) -> int:
    """The examples attack ``name`` ran on (``n_per_attack``, or a merged result's ``n``; else ``n_examples``)."""
    for key in ("n_per_attack", "n"):
        n = (result.get(key) or {}).get(name)
        if n is not None:
            return int(n)
    return int(result["n_examples"])


def _validate_counts(result: dict) -> None:
    n_all = result["n_examples"]
    counts = result.get("n_per_attack")
    if counts is not None:
        if not isinstance(counts, dict) or set(counts) - set(result["attacks"]):
            raise AttnGuardError("'n_per_attack' must map attacks of 'attacks' to their number of examples")
        for k, n in counts.items():
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= n_all:
                raise AttnGuardError(f"'n_per_attack' of '{k}' must be a whole number in [1, {n_all}], got {n!r}")
    n_worst = result.get("n_worst")
    if n_worst is not None and (not isinstance(n_worst, int) or isinstance(n_worst, bool) or not 1 <= n_worst <= n_all):
        raise AttnGuardError(f"'n_worst' must be a whole number in [1, {n_all}], got {n_worst!r}")
    for w in result.get("worst_cases") or []:
        if (not isinstance(w, dict) or set(w) != {"n_examples", "attacks", "accuracy"} or not _number(w["accuracy"])
                or not 0 <= w["accuracy"] <= 1 or set(w["attacks"]) - set(result["attacks"])):
            raise AttnGuardError(f"malformed 'worst_cases' entry {w!r}")


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
    secs = entry.get("seconds") or {}
    return [(f"after {c}", acc, secs.get(c)) for c, acc in entry["robust"].items()]


def worst_rows(result: dict) -> List[Tuple[str, float, int]]:
    """``[(label, accuracy, n)]``: the worst case over every attack, labelled with the examples it
    covers, then (when attacks ran on different numbers of examples) the worst case over the attacks
    that ran on more. Files without ``worst_cases`` give one row."""
    n_all = int(result["n_examples"])
    entries = result.get("worst_cases") or [{"n_examples": int(result.get("n_worst") or n_all),
                                             "attacks": list(result["attacks"]), "accuracy": result["worst_case"]}]
    if len(entries) == 1 and entries[0]["n_examples"] == n_all:
        return [("worst case (robust to every attack)", result["worst_case"], n_all)]
    rows = []
    for i, w in enumerate(entries):
        n = w["n_examples"]
        where = f"all {n}" if n == n_all else f"first {n}"
        over = "all attacks" if i == 0 else ", ".join(w["attacks"])
        rows.append((f"worst case ({where} examples, over {over})", w["accuracy"], n))
    return rows


def sanity_warnings(result: dict) -> List[str]:
    """One line per failed sanity check (status ``warn``), for under the table; none when all pass."""
    return [f"WARNING: sanity check failed: {s['check']} (this evaluation may overstate robustness; "
            f"details in the sanity lines)" for s in result.get("sanity") or [] if s["status"] == "warn"]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _header(result: dict) -> str:
    norm = result.get("norm", "linf")
    return (f"dataset: {result['dataset'] or '-'} · model: {result['model']} · eps: {result['eps']:.6g} ({norm}) "
            f"· examples: {result['n_examples']}")


def to_markdown(result: dict) -> str:
    validate_result(result)
    secs = result["seconds"]
    rows = ["| attack | accuracy (%) | n | seconds |", "|---|---:|---:|---:|",
            f"| clean | {_pct(result['clean'])} | {result['n_examples']} | |"]
    for name, acc in result["attacks"].items():
        n = attack_n(result, name)
        rows.append(f"| {name} | {_pct(acc)} | {n} | {secs.get(name, 0.0):.1f} |")
        n_parts = ((result.get(COMPONENTS_KEY) or {}).get(name) or {}).get("n_examples", n)
        for label, part, s in component_rows(result, name):
            rows.append(f"| {name}, {label} | {_pct(part)} | {n_parts} | {'' if s is None else f'{s:.1f}'} |")
    total = f"{sum(secs.values()):.1f}"
    for label, acc, n in worst_rows(result):
        head, _, tail = label.partition(" (")
        rows.append(f"| **{head}** ({tail} | **{_pct(acc)}** | {n} |" + (f" {total} |" if total else " |"))
        total = ""
    out = ["# Robustness evaluation", "", _header(result), "", *rows, ""]
    warnings = sanity_warnings(result)
    if warnings:
        for w in warnings:
            head, _, rest = w.partition(":")
            out += [f"> **{head}**:{rest}", ""]
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
    """A ``rich.table.Table`` of the evaluation: n in every row, sanity lines in its caption, and under
    it a warning line per failed sanity check (:func:`sanity_warnings`)."""
    from rich.markup import escape

    validate_result(result)
    # model (a run name: one long word) on a line of its own, and the table at least as wide as the
    # longest title line: rich folds a title that is wider than the table mid-word
    title = [f"model: {result['model']}", f"dataset: {result['dataset'] or '-'} · eps: {result['eps']:.6g} "
             f"({result.get('norm', 'linf')}) · examples: {result['n_examples']}"]
    table = _warned_table()(title=escape("\n".join(title)), title_justify="left", min_width=max(map(len, title)))
    table.add_column("attack")
    table.add_column("accuracy %", justify="right")
    table.add_column("n", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row("clean", _pct(result["clean"]), str(result["n_examples"]), "")
    for name, acc in result["attacks"].items():
        n = attack_n(result, name)
        table.add_row(escape(name), _pct(acc), str(n), f"{result['seconds'].get(name, 0.0):.1f}")
        n_parts = ((result.get(COMPONENTS_KEY) or {}).get(name) or {}).get("n_examples", n)
        for label, part, s in component_rows(result, name):
            table.add_row(f"[dim]  {escape(label)}[/dim]", f"[dim]{_pct(part)}[/dim]", f"[dim]{n_parts}[/dim]",
                          "" if s is None else f"[dim]{s:.1f}[/dim]")
    rows = worst_rows(result)
    total = f"{sum(result['seconds'].values()):.1f}"
    for i, (label, acc, n) in enumerate(rows):
        # one line, "worst case", when it covers every example; else the label says which examples
        text = "worst case" if len(rows) == 1 and n == result["n_examples"] else label
        table.add_row(f"[bold]{escape(text)}[/bold]", f"[bold]{_pct(acc)}[/bold]", str(n), total if i == 0 else "",
                      end_section=i == len(rows) - 1)
    if result["sanity"]:
        colour = {"pass": "green", "warn": "red", "skip": "yellow"}
        table.caption = "\n".join(f"[{colour[s['status']]}]{s['status']}[/] {escape(s['check'])}: {escape(s['detail'])}"
                                  for s in result["sanity"])
        table.caption_justify = "left"
        table.expand = True  # the caption wraps to the table's width; give it the console's
    table.warnings = sanity_warnings(result)
    return table


@lru_cache(maxsize=None)
def _warned_table():
    """A ``rich`` Table class that prints :func:`sanity_warnings` lines under the table (and its caption)."""
    from rich.table import Table
    from rich.text import Text

    class WarnedTable(Table):
        warnings: Sequence[str] = ()

        def __rich_console__(self, console, options):
            yield from super().__rich_console__(console, options)
            for line in self.warnings:
                yield Text(line, style="bold red")

    return WarnedTable
