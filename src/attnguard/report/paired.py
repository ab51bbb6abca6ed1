"""Paired-by-seed differences between two defense presets: VARIANT minus BASE, seed by seed.

Two runs with the same ``seed`` in config.yaml share the weight initialisation, the data order and the
adversary's random starts, and are evaluated on the same first n test examples; their difference
therefore carries less of the between-seed spread than the difference of the two means in the
mean ± std table (:func:`~attnguard.report.aggregate.aggregate_markdown`). This module prints those
per-seed differences with their mean, sample std, range and sign counts; whether they reproduce a
paper's claim is left to the reader (no verdict words are written).

Runs are loaded and merged with :func:`~attnguard.report.aggregate.run_summary` (every ``eval*.json``
of a run; the worst case per example over all attacks, Carlini et al. 2019, "On Evaluating
Adversarial Robustness", Sec. 5) and grouped as the mean ± std table groups its rows, by
(dataset, model, defense, eps); a pair compares the groups of its two presets that share dataset,
model and eps. A difference is only formed on equal footing: the same number of examples (and, for
a worst case, the same attacks); otherwise that seed's metric is listed as not paired, with why.
"""

from __future__ import annotations

import statistics
from typing import Dict, List, Sequence, Tuple

from ..errors import ConfigError
from .aggregate import ORDER, row_key, run_summary

WORST = "worst case"
# aggregate's second worst-case column (only when attacks ran on different numbers of examples)
WORST_WIDE = "worst case (attacks run on the most examples)"
# accuracies of one n are multiples of 1/n, so two that differ do so by >= 100/n points: this only
# absorbs float rounding when deciding ahead / behind / tied
TIE_POINTS = 1e-9


def parse_pair(text: str) -> Tuple[str, str]:
    """``"madry:madry+aad"`` -> ``("madry", "madry+aad")``; presets may hold ``+`` and ``-``, not ``:``."""
    base, sep, variant = (part.strip() for part in str(text).partition(":"))
    if not sep or not base or not variant or ":" in variant:
        raise ConfigError(f"--paired {text!r}: expected BASE:VARIANT, two defense presets separated by one ':' "
                          "(e.g. madry:madry+aad)")
    if base == variant:
        raise ConfigError(f"--paired {text!r}: BASE and VARIANT are the same preset")
    return base, variant


def _context(summary: dict) -> tuple:
    """The table's row key without the defense: the runs a pair may compare."""
    dataset, model, _, eps = row_key(summary)
    return dataset, model, eps


def _metrics(summary: dict) -> Dict[str, tuple]:
    """``{metric: (accuracy fraction, n examples, attacks covered or None)}`` of one summarized run."""
    out = {"clean": (summary["acc"]["clean"], summary["n"]["clean"], None)}
    out.update((k, (a, summary["n"][k], None)) for k, a in summary["acc"].items() if k != "clean")
    entries = summary["worst_cases"]
    # the attack set is part of a worst case: one over more attacks is lower for that reason alone
    out[WORST] = (summary["worst_case"], summary["n_worst"], tuple(sorted(entries[0]["attacks"])))
    if len(entries) > 1:
        last = entries[-1]
        out[WORST_WIDE] = (last["accuracy"], last["n_examples"], tuple(sorted(last["attacks"])))
    return out


def _seed(summary: dict) -> int:
    """The run's train seed (config.yaml's top-level ``seed``: init, data order and adversary)."""
    seed = summary.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"--paired: {summary['run']}/config.yaml has no whole-number 'seed' "
                          f"(got {seed!r}); runs are paired by it")
    return seed


def _by_seed(members: Sequence[dict], preset: str) -> Dict[int, dict]:
    out: Dict[int, dict] = {}
    for s in members:
        seed = _seed(s)
        if seed in out:  # two runs could pair with the same partner: which one is meant is not ours to guess
            raise ConfigError(f"--paired: {out[seed]['run']} and {s['run']} are both `{preset}` at seed {seed} "
                              "(same dataset, model and eps); pass one of them")
        out[seed] = s
    return out


def _metric_names(summaries: Sequence[dict]) -> List[str]:
    attacks = {k for s in summaries for k in s["acc"] if k != "clean"}
    ordered = [k for k in ORDER if k in attacks] + sorted(attacks - set(ORDER))
    wide = [WORST_WIDE] if any(len(s["worst_cases"]) > 1 for s in summaries) else []
    return ["clean", *ordered, WORST, *wide]


def _compare(metric: str, base: Dict[int, dict], variant: Dict[int, dict], seeds: Sequence[int],
             names: Tuple[str, str]) -> dict:
    """One metric over the common seeds (``base[seed]``: that run's :func:`_metrics`): the per-seed
    differences in points, their summary, and the seeds not paired with why."""
    per_seed, unpaired = [], []
    for seed in seeds:
        b, v = base[seed].get(metric), variant[seed].get(metric)
        if b is None or v is None:
            where = "either run" if b is None and v is None else f"the `{names[0] if b is None else names[1]}` run"
            unpaired.append({"seed": seed, "reason": f"not evaluated in {where}"})
        elif b[1] != v[1]:
            unpaired.append({"seed": seed, "reason": f"n differs ({b[1]} in `{names[0]}`, {v[1]} in `{names[1]}`)"})
        elif b[2] != v[2]:
            unpaired.append({"seed": seed, "reason": f"over different attacks ({', '.join(b[2])} in `{names[0]}`; "
                                                     f"{', '.join(v[2])} in `{names[1]}`)"})
        else:
            per_seed.append({"seed": seed, "n": b[1], "base": 100 * b[0], "variant": 100 * v[0],
                             "diff": 100 * (v[0] - b[0])})
    diffs = [p["diff"] for p in per_seed]
    return {"metric": metric, "per_seed": per_seed, "unpaired": unpaired, "n_paired": len(diffs),
            "n_examples": sorted({p["n"] for p in per_seed}),
            "mean": statistics.mean(diffs) if diffs else None,
            # sample std (ddof=1), the same estimator as the mean ± std table's
            "std": statistics.stdev(diffs) if len(diffs) > 1 else None,
            "min": min(diffs, default=None), "max": max(diffs, default=None),
            "ahead": sum(d > TIE_POINTS for d in diffs), "behind": sum(d < -TIE_POINTS for d in diffs),
            "tied": sum(abs(d) <= TIE_POINTS for d in diffs)}


def _comparison(base: str, variant: str, context: tuple, summaries: Sequence[dict]) -> dict:
    b = _by_seed([s for s in summaries if s["defense"] == base and _context(s) == context], base)
    v = _by_seed([s for s in summaries if s["defense"] == variant and _context(s) == context], variant)
    seeds = sorted(set(b) & set(v))
    members = [b[s] for s in seeds] + [v[s] for s in seeds]
    bm, vm = {s: _metrics(b[s]) for s in seeds}, {s: _metrics(v[s]) for s in seeds}
    return {"base": base, "variant": variant,
            "dataset": context[0], "model": context[1], "eps": context[2],
            "seeds": seeds, "only_base": sorted(set(b) - set(v)), "only_variant": sorted(set(v) - set(b)),
            "runs": {str(s): {"base": b[s]["run"], "variant": v[s]["run"]} for s in seeds},
            "metrics": [_compare(m, bm, vm, seeds, (base, variant)) for m in _metric_names(members)] if seeds else []}


def paired_comparisons(runs: Sequence, pairs: Sequence[str]) -> dict:
    """Every ``"BASE:VARIANT"`` of ``pairs`` over ``runs`` (run directories), as a JSON-able dict.

    ``{"pairs": [comparison, ...]}``, one comparison per pair and per (dataset, model, eps) holding
    runs of either preset: ``seeds`` (in both), ``only_base`` / ``only_variant`` (named, not
    compared), ``runs`` (seed -> the two run directories) and ``metrics``: clean, each attack and the
    worst case, each with ``per_seed`` ``{"seed", "n", "base", "variant", "diff"}`` (accuracies in %,
    diff = variant - base in points), ``unpaired`` ``{"seed", "reason"}``, ``n_paired``,
    ``n_examples``, ``mean``, ``std`` (sample, ddof=1; None under 2 seeds), ``min``, ``max`` and
    ``ahead`` / ``behind`` / ``tied`` (seeds where the variant is above / below / equal).
    Raises ConfigError for a malformed pair, a preset no run has, or a pair with no seed in common.
    """
    parsed = [parse_pair(p) for p in pairs]  # a typo fails before any run is read
    summaries = [run_summary(r) for r in runs]
    presets = sorted({str(s["defense"]) for s in summaries})
    out = []
    for base, variant in parsed:
        for name in (base, variant):
            if name not in presets:
                raise ConfigError(f"--paired {base}:{variant}: no run among RUN... has defense preset '{name}' "
                                  f"(they have: {', '.join(presets)})")
        contexts = dict.fromkeys(_context(s) for s in summaries if s["defense"] in (base, variant))
        found = [_comparison(base, variant, c, summaries) for c in contexts]
        if not any(c["seeds"] for c in found):
            seen = "; ".join(f"`{base}` {_seed_list(c['only_base'])}, `{variant}` {_seed_list(c['only_variant'])}"
                             for c in found)
            raise ConfigError(f"--paired {base}:{variant}: no seed in common at the same dataset, model and eps "
                              f"(seeds: {seen})")
        out += found
    return {"pairs": out}


# ------------------------------------------------------------------------------------------ markdown
def _seed_list(seeds: Sequence[int]) -> str:
    return ", ".join(map(str, seeds)) if seeds else "none"


def _points(d: float) -> str:
    return "0.0" if abs(d) <= TIE_POINTS else f"{d:+.1f}"


def _row(m: dict) -> str:
    if not m["per_seed"]:
        cells = ["-"] * 5
    else:
        spread = _points(m["mean"]) + (f" ± {m['std']:.1f}" if m["std"] is not None else " (1 seed, no std)")
        cells = ["/".join(map(str, m["n_examples"])),
                 ", ".join(f"s{p['seed']} {_points(p['diff'])}" for p in m["per_seed"]),
                 spread, f"{_points(m['min'])}..{_points(m['max'])}", f"{m['ahead']} / {m['behind']} / {m['tied']}"]
    missing = "; ".join(f"s{u['seed']}: {u['reason']}" for u in m["unpaired"]) or "-"
    return "| " + " | ".join([m["metric"], *cells, str(m["n_paired"]), missing]) + " |"


def comparison_markdown(c: dict) -> str:
    """One comparison of :func:`paired_comparisons` as a heading, a table and its notes."""
    b, v = f"`{c['base']}`", f"`{c['variant']}`"
    lines = [f"### {b} -> {v}, paired by seed ({c['dataset']}, {c['model']}, eps {c['eps']:.4g})", ""]
    if c["seeds"]:
        head = ["metric", "n (examples)", "per-seed difference (points)", "mean ± std", "min..max",
                "variant ahead / behind / tied (seeds)", "paired seeds", "not paired"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += [_row(m) for m in c["metrics"]]
        lines += ["", f"Differences: {v} minus {b}, in percentage points of accuracy, seed by seed, each on the n "
                  "test examples of its row (the first n, the same for both runs); mean ± sample std (ddof=1) over "
                  "the paired seeds. A seed whose two runs differ in n (or, for a worst case, in its attacks) is "
                  "not paired and is named in the last column.",
                  "Runs: " + "; ".join(f"s{s} {r['base']} vs {r['variant']}" for s, r in c["runs"].items()) + "."]
    else:
        lines += ["No seed in common here: nothing is compared."]
    lines += [f"Seeds only in {b}: {_seed_list(c['only_base'])}; only in {v}: {_seed_list(c['only_variant'])}."]
    return "\n".join(lines) + "\n"


def paired_markdown(runs: Sequence, pairs: Sequence[str]) -> Tuple[str, dict]:
    """The markdown of every comparison (``attnguard report --paired``) and the dict it is made from."""
    result = paired_comparisons(runs, pairs)
    return "\n".join(comparison_markdown(c) for c in result["pairs"]), result

