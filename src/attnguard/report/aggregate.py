"""Tables of several runs: mean and standard deviation over seeds, one row per method.

Runs are grouped by (dataset, model, defense, eps). Each run contributes every ``eval*.json``
in its directory; their per-example outcomes (written by ``attnguard eval``) are merged so that
the worst case covers every attack of every file, on the examples they all evaluated.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import CheckpointError
from ..rundir import RunDir

ORDER = ["clean", "fgsm", "stepll", "pgd-7", "pgd-10", "pgd-20", "pgd-40", "pgd-100", "cw-10", "cw-20", "cw-30",
         "cw-40", "cw-100", "autoattack", "rays", "square", "a3-pgd-20"]


def merge_evals(evals: Sequence[dict]) -> dict:
    """One evaluation from several of the same model (``eval.json`` first, then e.g. ``eval-aa.json``).

    Each attack keeps its result on the most examples (``n`` says how many, per attack and for
    ``clean``); clean accuracy and ``n_examples`` come from the file made on the most examples (the first of
    those: ``eval.json`` when it is one), so an ``eval-autoattack-n500.json`` listed before a 1,000-example
    file does not shrink the clean column to 500. The worst case is per
    example over every attack of every file, on the first ``n_worst`` examples that they all covered;
    ``worst_cases`` adds the worst case over the attacks that covered more (see
    :func:`~attnguard.evaluation.results.worst_cases`). Without per-example outcomes in every file:
    the lowest of the files' own worst cases. Sanity checks and timings are concatenated.
    """
    from ..evaluation.results import attack_n, worst_cases

    first = max(evals, key=lambda e: e["n_examples"])  # max keeps the first of equals
    attacks: Dict[str, float] = {}
    n_of: Dict[str, int] = {"clean": first["n_examples"]}
    seconds: Dict[str, float] = {}
    sanity: List[dict] = []
    clean_masks: List[str] = []
    masks: Dict[str, List[str]] = {}
    components: Dict[str, dict] = {}  # AutoAttack's per-component breakdown travels with its attack's result
    for e in evals:
        for name, a in e["attacks"].items():
            if name not in attacks or attack_n(e, name) > n_of[name]:
                attacks[name], n_of[name] = a, attack_n(e, name)
                if name in (e.get("seconds") or {}):
                    seconds[name] = e["seconds"][name]
                breakdown = (e.get("autoattack_components") or {}).get(name)
                if breakdown is not None:
                    components[name] = breakdown
                else:
                    components.pop(name, None)
        sanity.extend(e.get("sanity") or [])
        per = e.get("per_example")
        if per:
            clean_masks.append(per["clean"])
            for name, m in per["attacks"].items():
                masks.setdefault(name, []).append(m)
    if clean_masks and all(e.get("per_example") for e in evals):
        entries = worst_cases(_all_of(clean_masks), {k: _all_of(v) for k, v in masks.items()})
        worst, n_worst = entries[0]["accuracy"], entries[0]["n_examples"]
    else:
        worst, n_worst = min((e["worst_case"], e.get("n_worst") or e["n_examples"]) for e in evals)
        entries = [{"n_examples": n_worst, "attacks": list(attacks), "accuracy": worst}]
    out = {**first, "attacks": attacks, "n": n_of, "n_per_attack": {k: n_of[k] for k in attacks},
           "worst_case": worst, "n_worst": n_worst, "worst_cases": entries,
           "seconds": seconds, "sanity": sanity, "system": next((e["system"] for e in evals if e.get("system")), None)}
    out.pop("autoattack_components", None)
    if components:
        out["autoattack_components"] = components
    return out


def same_model_evals(evals: Sequence[Tuple[Path, dict]]) -> Tuple[List[Tuple[Path, dict]], List[str]]:
    """The evaluation files of the same weights as the first (``eval.json``), and a note per file left out.

    A file of other weights (an earlier checkpoint's evaluation kept beside the final one, e.g.
    ``eval-best.json``) must not enter the row: its attacks and worst case would be another model's.
    Two files differ when both record ``weights`` (the state dict's fingerprint) and these differ, or,
    for files written before the fingerprint, when their per-example clean outcomes disagree on the
    examples both evaluated (the same weights in eval mode classify the same images the same way).
    """
    if not evals:
        return [], []
    _, first = evals[0]
    kept, notes = [evals[0]], []
    for path, e in evals[1:]:
        why = None
        if first.get("weights") and e.get("weights"):
            if first["weights"] != e["weights"]:
                why = f"other weights ({e.get('checkpoint') or '?'} {e['weights']}, not {first['weights']})"
        else:
            a, b = (first.get("per_example") or {}).get("clean"), (e.get("per_example") or {}).get("clean")
            if a and b:
                k = min(len(a), len(b))
                diff = sum(x != y for x, y in zip(a[:k], b[:k]))
                if diff:
                    why = f"another model: its clean outcomes differ on {diff} of the first {k} examples"
        if why:
            notes.append(f"{path.name} left out of {evals[0][0].name}'s row: {why}")
        else:
            kept.append((path, e))
    return kept, notes


def _all_of(bits: Sequence[str]) -> List[bool]:
    """Per example, True where every one of ``bits`` (strings of '0'/'1', possibly of different
    lengths: prefixes of the same examples) that covers it says '1'; as long as the longest."""
    return [all(b[i] == "1" for b in bits if len(b) > i) for i in range(max(len(b) for b in bits))]


def run_summary(run) -> dict:
    """Accuracies (fractions) of one run, its worst case over all its evaluations, time and machine."""
    run = RunDir.of(run)
    if run.config_text is None:
        raise CheckpointError(f"{run} is not a run directory (no config.yaml)")
    evals = run.evals()
    if not evals:
        raise CheckpointError(f"{run} has no eval.json; run `attnguard eval {run}` first")
    evals, left_out = same_model_evals(evals)
    merged = merge_evals([e for _, e in evals])
    acc = {"clean": merged["clean"], **merged["attacks"]}
    n_of, worst, n_worst, system = merged["n"], merged["worst_case"], merged["n_worst"], merged["system"]
    seconds = max((l.get("seconds", 0) for l in run.metrics()), default=None)
    train_info = run.train_info()
    seconds = train_info.get("seconds", seconds)
    return {"run": str(run), "dataset": run.get("data.name"), "model": run.get("model.name"),
            "defense": run.get("defense.preset"), "eps": run.get("adversary.eps"),
            "seed": run.get("seed"), "acc": acc, "n": n_of, "worst_case": worst, "n_worst": n_worst,
            "worst_cases": merged["worst_cases"],
            # AutoAttack's robust accuracy after each component, {attack: {"n_examples", "robust": {...}}}
            "components": merged.get("autoattack_components") or {},
            "train_seconds": seconds, "train_cpu_seconds": train_info.get("cpu_seconds"), "system": system,
            "train_system": train_info.get("system"), "left_out": [f"{run}: {n}" for n in left_out]}


def _ms(values: Sequence[float], scale: float = 100.0) -> str:
    vals = [v * scale for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.1f}"
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}"


def config_values(summary: dict, keys: Sequence[str]) -> tuple:
    """The values of dotted config ``keys`` in a summarized run's config.yaml (lists as tuples, hashable)."""
    run = RunDir(summary["run"])
    return tuple(tuple(v) if isinstance(v, list) else v for v in (run.get(k) for k in keys))


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _n_text(members: Sequence[dict], wide: bool) -> str:
    """The row's examples: clean's n, then each column (attack, worst case) that ran on another n."""
    def one(values) -> str:
        return "/".join(str(v) for v in sorted(set(values)))  # seeds that disagree show every value

    base = one(m["n"]["clean"] for m in members)
    names = [k for k in dict.fromkeys(k for m in members for k in m["n"]) if k != "clean"]
    odd = [(k, one(m["n"][k] for m in members if k in m["n"])) for k in names]
    odd.append(("worst case", one(m["n_worst"] for m in members)))
    if wide:
        odd.append(("second worst case", one(m["worst_cases"][-1]["n_examples"] for m in members)))
    odd = [f"{k} {v}" for k, v in odd if v != base]
    return base + (f" ({'; '.join(odd)})" if odd else "")


def _columns(summaries: Sequence[dict], names: Sequence[str]) -> List[tuple]:
    """``[(header, attack, component or None)]``: each attack, then the robust accuracy after each of its
    components (AutoAttack's breakdown) where some run recorded one, as eval.md shows it."""
    cols = []
    for name in names:
        cols.append((name, name, None))
        entries = [s.get("components", {}).get(name) or {} for s in summaries]
        parts = dict.fromkeys(c for e in entries for c in e.get("robust", {}))
        cols += [(f"{name}, after {c}", name, c) for c in parts]
    return cols


def _value(summary: dict, attack: str, component: Optional[str]) -> Optional[float]:
    if component is None:
        return summary["acc"].get(attack)
    return ((summary.get("components", {}).get(attack) or {}).get("robust") or {}).get(component)


def row_key(summary: dict) -> tuple:
    """A table row's runs share dataset, model, defense and eps (rounded: 8/255 read back from YAML)."""
    return summary["dataset"], summary["model"], summary["defense"], round(summary["eps"] or 0, 6)


def aggregate_markdown(runs: Sequence, *, group_by: Optional[Sequence[str]] = None) -> str:
    """A markdown table: one row per (dataset, model, defense, eps), mean ± std (sample) over seeds.

    ``group_by``: dotted config keys (``attnguard sweep`` passes the keys it varies) whose values
    make the rows and the first columns instead, in the order the runs first show them.
    """
    summaries = [run_summary(r) for r in runs]
    groups: Dict[tuple, List[dict]] = {}
    for s in summaries:
        key = config_values(s, group_by) if group_by else row_key(s)
        groups.setdefault(key, []).append(s)
    names = {n for s in summaries for n in s["acc"]}
    cols = _columns(summaries, [n for n in ORDER if n in names] + sorted(names - set(ORDER)))
    # where attacks ran on different numbers of examples, a second worst case: over the attacks that
    # ran on the most examples, on all of those
    wide = any(len(s["worst_cases"]) > 1 for s in summaries)
    # CPU seconds (train.json, all threads): on a shared machine the wall clock grows with the load,
    # the CPU time much less; shown when every run recorded it (older runs did not)
    cpu = all(s.get("train_cpu_seconds") is not None for s in summaries)
    head = ([*(group_by or ["dataset", "model", "defense", "eps"]), "seeds", "n (examples)"]
            + [c[0] for c in cols]
            + ["worst case"] + (["worst case (attacks run on the most examples)"] if wide else [])
            + ["train time (s, incl. validation)"] + (["train CPU (s)"] if cpu else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, members in groups.items():
        row = [_cell(v) for v in key] if group_by else [str(key[0]), str(key[1]), f"`{key[2]}`", f"{key[3]:.4g}"]
        row.append(str(len(members)))
        row.append(_n_text(members, wide))
        row += [_ms([_value(m, a, c) for m in members]) for _, a, c in cols]
        row.append(_ms([m["worst_case"] for m in members]))
        if wide:
            row.append(_ms([m["worst_cases"][-1]["accuracy"] for m in members]))
        row.append(_ms([m["train_seconds"] for m in members], scale=1.0))
        if cpu:
            row.append(_ms([m["train_cpu_seconds"] for m in members], scale=1.0))
        lines.append("| " + " | ".join(row) + " |")
    ns = sorted({f"{c}: {s['n'][c]}" for s in summaries for c in s["n"]})
    worst_n = " or ".join(str(n) for n in sorted({s["n_worst"] for s in summaries}))
    systems = sorted({json.dumps(s["system"], sort_keys=True) for s in summaries if s["system"]})
    notes = [f"Accuracy in % (mean ± sample std over seeds). Examples per column: {', '.join(ns)}; "
             f"the worst case is per example over every attack, on the first {worst_n} test examples"
             + ("; the second worst case is over the attacks run on the most examples, on all of those"
                if wide else "") + ". Column n: each row's examples (a column run on another number is named)."]
    from ..utils.machine import machine_line

    trained = sorted({json.dumps(s["train_system"], sort_keys=True) for s in summaries if s.get("train_system")})
    notes += [f"Trained on: {machine_line(json.loads(s))}" for s in trained]
    notes += [f"Evaluated on: {machine_line(json.loads(s))}" for s in systems]
    notes += [f"Not merged: {n}" for s in summaries for n in s.get("left_out", [])]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
