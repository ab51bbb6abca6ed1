"""``attention-in-box`` (AAD Tables 1-2, mass in the box, across models): does attention on the object go
with robustness?

AAD Tables 1-2 ask whether a model's Grad-CAM (AAD eq. 1-2) lies on the annotated object, on clean and on
adversarial images. This study measures the plainest version of that, the share of the Grad-CAM's mass
inside the object box, for many runs (defenses x seeds) on the same test images, and sets it beside each
run's robust accuracy from its own evaluation files.

``attnguard study attention-in-box RUN... [--set metric=autoattack]``, per run, on the first ``n`` test
images (boxes from the dataset, ``synthetic-boxes``, or ``boxes=FILE_OR_DIR`` as ``part-activations``):

* the Grad-CAM of the predicted class at the model's attention layer (``analysis._run.cams``, the map the
  ``analyze`` command uses), ReLU'd (Grad-CAM's own ReLU, AAD eq. 2), upsampled bilinearly to the image;
  its share inside the box = sum inside / sum over the image. A map that is zero everywhere has no share:
  it is left out and counted (``n_zero``), not scored 0.5. Clean image and the adversarial image of
  ``attack`` (default PGD-20 at the run's eval eps, crafted on that run in eval mode at the run's seed).
  Mean over images with a 95% percentile bootstrap interval over images.
* the "uniform" baseline: the mean share of the image the box covers, which a flat map would score.
* the robust accuracy under ``metric`` read from the run's ``eval*.json`` (never computed here: running
  AutoAttack inside a study would hide its cost), and the clean accuracy of ``eval.json``.

Across runs: Pearson and Spearman correlation of the adversarial (and the clean) in-box share with the
robust accuracy, with 95% percentile bootstrap intervals over runs; per defense preset, mean and sample std
over its runs (seeds). Writes the figure, the numbers and ``attention-in-box.md``.
"""

from __future__ import annotations

import math
import statistics
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..analysis._figures import PALETTE, new_figure, save_png, styled
from ..analysis._run import attack_all, attack_name, cams, make_attack, predict
from ..attention import upsample_cam
from ..errors import ConfigError
from ..evaluation.results import attack_n
from ..io import atomic_write_text
from ..rundir import parse_eps
from ..utils.modes import eval_mode
from ._maps import device_of, eps_option, int_option
from ._runs import run_label, runs_on_one_dataset
from .part_activations import boxed_examples
from .registry import STUDIES

OPTIONS = {"n": 500, "attack": "pgd-20", "eps": None, "boxes": None, "metric": "autoattack", "resamples": 2000}
BOOT_SEED = 0  # the bootstrap's generator: the same numbers on every call
LEVEL = 0.95
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile (Fisher-z interval)
FEW_RUNS = 10  # below this, a percentile bootstrap over runs is coarse and usually too narrow: said in a note


def box_mass_share(cam: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per image, the share of the ReLU'd, upsampled map's sum inside ``region`` ``[N, H, W]``.

    NaN where it is undefined: an all-zero map (no mass to place) or an empty region (no box).
    """
    up = upsample_cam(torch.relu(cam.detach().float()), tuple(region.shape[-2:]))
    total = up.flatten(1).sum(1)
    inside = (up * region.float()).flatten(1).sum(1)
    ok = (total > 0) & region.flatten(1).any(1)
    return torch.where(ok, inside / total.clamp_min(1e-30), torch.full_like(total, float("nan")))


def bootstrap_mean(values, resamples: int = 2000, seed: int = BOOT_SEED) -> dict:
    """Mean of the finite ``values`` and its 95% percentile bootstrap interval (None where none are finite)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "ci": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (int(resamples), v.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return {"mean": float(v.mean()), "ci": [float(lo), float(hi)], "n": int(v.size)}


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing their average rank (what Spearman's rho needs)."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(v.size)
    ranks[order] = np.arange(1, v.size + 1)
    for value in np.unique(v):
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    dx, dy = x - x.mean(), y - y.mean()
    den = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return None if den == 0 else float(np.clip((dx * dy).sum() / den, -1.0, 1.0))


def _spearman(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    return _pearson(_ranks(x), _ranks(y))


def correlation(x: Sequence[float], y: Sequence[float], resamples: int = 2000, seed: int = BOOT_SEED) -> dict:
    """Pearson and Spearman r of paired numbers, each with a 95% percentile bootstrap CI over the pairs.

    Pairs with a None are dropped first. Fewer than 3 pairs, or no variance in x or y: r is None and
    ``note`` says why. A resample whose x or y has no variance has no r: it is skipped and counted.
    With 4 or more pairs, also the textbook Fisher-z interval of Pearson's r (``pearson_ci_fisher``,
    tanh(atanh r -+ 1.96 / sqrt(n - 3))), a second reading where the bootstrap has few runs to draw from.
    """
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if a is not None and b is not None]
    out = {"n_runs": len(pairs), "pearson": None, "pearson_ci": None, "pearson_ci_fisher": None, "spearman": None,
           "spearman_ci": None, "resamples": int(resamples), "skipped": 0, "note": None}
    if len(pairs) < 3:
        out["note"] = f"{len(pairs)} run(s) with both numbers; a correlation needs at least 3"
        return out
    xs, ys = np.array(pairs).T
    if _pearson(xs, ys) is None:
        out["note"] = "no correlation: the in-box share or the robust accuracy is the same for every run"
        return out
    rng = np.random.default_rng(seed)
    boot = {"pearson": [], "spearman": []}
    for idx in rng.integers(0, len(pairs), (int(resamples), len(pairs))):
        bx, by = xs[idx], ys[idx]
        if np.ptp(bx) == 0 or np.ptp(by) == 0:
            out["skipped"] += 1
            continue
        boot["pearson"].append(_pearson(bx, by))
        boot["spearman"].append(_spearman(bx, by))
    for name, fn in (("pearson", _pearson), ("spearman", _spearman)):
        out[name] = fn(xs, ys)
        if boot[name]:
            lo, hi = np.quantile(boot[name], [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
            out[f"{name}_ci"] = [float(lo), float(hi)]
    if len(pairs) >= 4:
        z, half = math.atanh(max(-1 + 1e-12, min(1 - 1e-12, out["pearson"]))), Z95 / math.sqrt(len(pairs) - 3)
        out["pearson_ci_fisher"] = [math.tanh(z - half), math.tanh(z + half)]
    if len(pairs) < FEW_RUNS:
        # a resample holding only 2 distinct runs always has |r| = 1, and with few runs most resamples do
        out["note"] = (f"only {len(pairs)} runs: the bootstrap over runs is coarse and usually too narrow; "
                       "read the interval with care")
    return out


def _eps_of(result: dict) -> Optional[float]:
    """An evaluation's radius as a number (None where it records none or nothing readable)."""
    try:
        return None if result.get("eps") is None else parse_eps(result["eps"])
    except ConfigError:
        return None


def eval_numbers(run, metric: str, notes: List[str]) -> dict:
    """The run's robust accuracy under ``metric`` and its clean accuracy, from its evaluation files.

    ``eval.json`` first, then the other ``eval*.json`` (``attnguard eval`` writes a later evaluation such
    as AutoAttack beside the training's ``eval.json``); where several hold ``metric``, the one on the
    most examples. Missing: None, and a line in ``notes``.
    """
    label = run_label(run)
    evals = run.evals(notes)
    out = {"robust": None, "n_robust": None, "robust_file": None, "robust_eps": None, "clean": None,
           "n_clean": None, "clean_file": None}
    if evals:
        path, first = evals[0]
        out.update(clean=first.get("clean"), n_clean=first.get("n_examples"), clean_file=path.name)
    for path, e in evals:
        acc = (e.get("attacks") or {}).get(metric)
        if acc is None:
            continue
        try:
            n_acc = attack_n(e, metric)
        except (KeyError, TypeError, ValueError):
            n_acc = None
        if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 <= acc <= 1 or n_acc is None:
            notes.append(f"{label}: {path.name} holds '{metric}' without a valid accuracy and example count; left out")
            continue
        if out["n_robust"] is None or n_acc > out["n_robust"]:
            out.update(robust=float(acc), n_robust=n_acc, robust_file=path.name, robust_eps=_eps_of(e))
    if not evals:
        notes.append(f"{label}: no eval*.json; its robust and clean accuracy are null")
    elif out["robust"] is None:
        notes.append(f"{label}: no evaluation file holds '{metric}' (run `attnguard eval {run} --attacks {metric}`);"
                     " its robust accuracy is null and it is left out of the correlations")
    return out


def _mean_std(values) -> dict:
    v = [float(a) for a in values if a is not None]
    return {"mean": statistics.mean(v) if v else None, "std": statistics.stdev(v) if len(v) > 1 else None,
            "n_runs": len(v)}


KEYS = (("clean_share", lambda r: r["clean"]["mean"]), ("adv_share", lambda r: r["adv"]["mean"]),
        ("robust", lambda r: r["eval"]["robust"]), ("eval_clean", lambda r: r["eval"]["clean"]),
        ("acc_clean", lambda r: r["acc_clean"]), ("acc_adv", lambda r: r["acc_adv"]))


def per_preset(per_run: List[dict]) -> Dict[str, dict]:
    """``{preset: {number: {"mean", "std" (sample, n-1), "n_runs"}}}`` in the order the presets first appear."""
    groups: Dict[str, List[dict]] = {}
    for r in per_run:
        groups.setdefault(r["defense"], []).append(r)
    return {p: {"runs": len(rs), **{k: _mean_std(get(r) for r in rs) for k, get in KEYS}} for p, rs in groups.items()}


def _fmt(v, pct: bool = False) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}" if pct else f"{v:.3f}"


def _pm(s: dict, pct: bool = False) -> str:
    if s["mean"] is None:
        return "n/a"
    return _fmt(s["mean"], pct) + ("" if s["std"] is None else f" ± {_fmt(s['std'], pct)}") + f" ({s['n_runs']})"


def _corr_line(name: str, c: dict) -> str:
    if c["pearson"] is None:
        return f"- {name}: null ({c['note']})"
    ci = lambda v: "n/a" if v is None else f"[{v[0]:.2f}, {v[1]:.2f}]"  # noqa: E731
    fisher = "" if c["pearson_ci_fisher"] is None else f" (Fisher-z {ci(c['pearson_ci_fisher'])})"
    return (f"- {name}: Pearson r = {c['pearson']:.2f} {ci(c['pearson_ci'])}{fisher}, Spearman rho = "
            f"{c['spearman']:.2f} {ci(c['spearman_ci'])}; {c['n_runs']} runs, 95% bootstrap over runs "
            f"({c['resamples']} resamples, {c['skipped']} without variance skipped)"
            + (f". {c['note']}" if c["note"] else ""))


def _markdown(head: str, presets: dict, per_run: List[dict], corr: dict, metric: str, uniform: float,
              notes: List[str]) -> str:
    lines = [head, "", f"| defense | runs | in-box share clean | in-box share adv | uniform | {metric} acc (%) | "
             "clean acc (%) |", "|---|---|---|---|---|---|---|"]
    for p, s in presets.items():
        lines.append(f"| {p} | {s['runs']} | {_pm(s['clean_share'])} | {_pm(s['adv_share'])} | {uniform:.3f} | "
                     f"{_pm(s['robust'], True)} | {_pm(s['eval_clean'], True)} |")
    lines += ["", "mean ± sample std over the runs (seeds) of a preset; in parentheses the runs with the number.", ""]
    lines += [_corr_line(f"adversarial in-box share vs {metric} accuracy", corr["adv"]),
              _corr_line(f"clean in-box share vs {metric} accuracy", corr["clean"]), "", "Per run:", "",
              f"| run | defense | clean share [95% CI] (n, zero maps) | adv share [95% CI] (n, zero maps) | "
              f"{metric} acc (n, file) |", "|---|---|---|---|---|"]
    cell = lambda s: ("n/a" if s["mean"] is None else f"{s['mean']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]")  # noqa
    for r in per_run:
        e = r["eval"]
        acc = "n/a" if e["robust"] is None else f"{100 * e['robust']:.1f} ({e['n_robust']}, {e['robust_file']})"
        lines.append(f"| {r['label']} | {r['defense']} | {cell(r['clean'])} ({r['clean']['n']}, {r['clean']['n_zero']})"
                     f" | {cell(r['adv'])} ({r['adv']['n']}, {r['adv']['n_zero']}) | {acc} |")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _draw(out, per_run: List[dict], presets: dict, corr: dict, metric: str, uniform: float, title: str) -> None:
    fig = new_figure(12.0, 5.4)
    colors = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(presets)}
    ax = fig.add_subplot(1, 2, 1)
    shown = [r for r in per_run if r["eval"]["robust"] is not None and r["adv"]["mean"] is not None]
    for p in presets:
        rs = [r for r in shown if r["defense"] == p]
        if rs:
            xs = [r["adv"]["mean"] for r in rs]
            err = np.array([[r["adv"]["mean"] - r["adv"]["ci"][0], r["adv"]["ci"][1] - r["adv"]["mean"]] for r in rs]).T
            ax.errorbar(xs, [100 * r["eval"]["robust"] for r in rs], xerr=err, fmt="o", color=colors[p], capsize=3,
                        label=f"{p} ({len(rs)})")
    ax.axvline(uniform, color="#555555", ls="--", lw=1, label="uniform map (box area)")
    c = corr["adv"]
    if c["pearson"] is None:
        head = f"r: null ({c['note']})"
    else:
        ci = lambda v: "n/a" if v is None else f"[{v[0]:.2f}, {v[1]:.2f}]"  # noqa: E731
        head = (f"Pearson r = {c['pearson']:.2f} {ci(c['pearson_ci'])}, Spearman ρ = {c['spearman']:.2f} "
                f"{ci(c['spearman_ci'])}\n95% bootstrap CIs over {c['n_runs']} runs")
    ax.set_title(head, fontsize=9)
    if not shown:
        ax.text(0.5, 0.5, f"no run has a '{metric}' accuracy", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("adversarial in-box share of Grad-CAM mass (mean, 95% CI over images)")
    ax.set_ylabel(f"{metric} accuracy (%) from the run's eval files")
    ax.legend(fontsize=7.5, loc="best")

    ax = fig.add_subplot(1, 2, 2)
    pos = np.arange(len(presets))
    for off, key, label, color in ((-0.2, "clean_share", "clean", "#1f5fa8"),
                                   (0.2, "adv_share", "adversarial", "#b2182b")):
        stats = [presets[p][key] for p in presets]
        vals = [np.nan if s["mean"] is None else s["mean"] for s in stats]
        errs = [np.nan if s["std"] is None else s["std"] for s in stats]  # one run: no bar, not a zero std
        bars = ax.bar(pos + off, vals, width=0.38, yerr=errs, capsize=3, color=color, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.axhline(uniform, color="#555555", ls="--", lw=1, label=f"uniform map ({uniform:.2f})")
    ax.set_xticks(pos)
    ax.set_xticklabels([f"{p}\n({presets[p]['runs']} runs)" for p in presets], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("share of Grad-CAM mass inside the box")
    ax.set_title("per defense: mean ± sample std over runs", fontsize=9)
    ax.legend(fontsize=7.5, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(top=0.8, wspace=0.25)
    save_png(fig, out, metadata={"Title": "attnguard attention-in-box"})


def share_stats(cam: torch.Tensor, region: torch.Tensor, resamples: int) -> dict:
    """Mean in-box share over the images with a box, its bootstrap CI, and ``n_zero``: the all-zero maps left out."""
    zero = int(((torch.relu(cam.detach().float()).flatten(1).sum(1) == 0) & region.flatten(1).any(1)).sum())
    return {**bootstrap_mean(box_mass_share(cam, region).numpy(), resamples), "n_zero": zero}


@styled
def attention_in_box(ctx) -> dict:
    runs = runs_on_one_dataset(ctx)
    n = int_option(ctx, "n")
    resamples = int_option(ctx, "resamples", lo=100)
    attack = str(ctx.options["attack"]).strip().lower()
    metric = str(ctx.options["metric"] or "").strip().lower()
    if not metric:
        raise ConfigError(f"study '{ctx.name}': option metric must name an attack of the runs' eval files")
    eps = eps_option(ctx, runs[0].eps)
    device = device_of(ctx)
    x, y, region, box_source = boxed_examples(ctx, runs[0], n, device)
    n = len(y)
    has_box = region.flatten(1).any(1)
    uniform = float(region.float().flatten(1).mean(1)[has_box].mean())

    notes: List[str] = []
    per_run = []
    for run in runs:
        model = run.model(device)
        atk = make_attack(attack, eps, seed=run.seed, num_classes=model.num_classes, device=device)
        with eval_mode(model):
            x_adv = attack_all(atk, model, x, y)
            pred_c, pred_a = predict(model, x).argmax(1), predict(model, x_adv).argmax(1)
            # the map of the class the model predicts on that image, as the analyses take it (AAD eq. 1-2)
            cam_c, cam_a = cams(model, x, pred_c).cpu(), cams(model, x_adv, pred_a).cpu()
        clean, adv = share_stats(cam_c, region, resamples), share_stats(cam_a, region, resamples)
        ev = eval_numbers(run, metric, notes)
        if ev["robust_eps"] is not None and abs(ev["robust_eps"] - eps) > 1e-9:
            notes.append(f"{run_label(run)}: its {metric} accuracy is at eps {ev['robust_eps']:.4g}, the "
                         f"study's attack at {eps:.4g}")
        per_run.append({"run": str(run), "label": run_label(run), "defense": str(run.get("defense.preset") or "?"),
                        "seed": run.seed, "acc_clean": float((pred_c == y).float().mean()),
                        "acc_adv": float((pred_a == y).float().mean()), "clean": clean, "adv": adv, "eval": ev})

    robust = [r["eval"]["robust"] for r in per_run]
    corr = {"adv": correlation([r["adv"]["mean"] for r in per_run], robust, resamples),
            "clean": correlation([r["clean"]["mean"] for r in per_run], robust, resamples)}
    presets = per_preset(per_run)
    setting = f"{attack_name(attack)}, ε={eps:.4g}, white-box against each run"
    title = (f"Grad-CAM mass inside the object box vs {metric} accuracy (AAD Tables 1-2 style, across models)\n"
             f"{setting} · n={n} test images of {runs[0].dataset} ({int(has_box.sum())} with a box, boxes: "
             f"{box_source}) · {len(runs)} runs\nGrad-CAM of the predicted class, ReLU, upsampled; share = mass "
             f"inside / total; uniform map = box area {uniform:.2f}")
    _draw(ctx.png, per_run, presets, corr, metric, uniform, title)
    md = ctx.out_dir / f"{ctx.name}.md"
    head = (f"# Grad-CAM mass inside the object box vs {metric} accuracy (AAD Tables 1-2, across models)\n\n"
            f"{setting}; n = {n} test images of {runs[0].dataset}, {int(has_box.sum())} with a box (boxes: "
            f"{box_source}); {len(runs)} runs. In-box share: Grad-CAM of the predicted class (ReLU, upsampled to "
            f"the image), mass inside the box / total, mean over images (all-zero maps left out); uniform: the "
            f"mean box area fraction ({uniform:.3f}), what a flat map scores. {metric} and clean accuracy: from "
            "each run's eval files.")
    atomic_write_text(md, _markdown(head, presets, per_run, corr, metric, uniform, notes))
    return {"attack": attack_name(attack), "eps": eps, "n": n, "n_with_box": int(has_box.sum()), "boxes": box_source,
            "metric": metric, "uniform": uniform, "resamples": resamples, "bootstrap_seed": BOOT_SEED,
            "correlation": corr, "presets": presets, "runs": per_run, "notes": notes, "table": md.name,
            "share": "Grad-CAM of the predicted class at the attention layer, ReLU, bilinear upsampling to the "
                     "image; sum inside the box / sum over the image; all-zero maps excluded (n_zero); mean with "
                     "a 95% percentile bootstrap CI over images"}


STUDIES.add("attention-in-box", attention_in_box,
            "share of the Grad-CAM mass inside the object box, clean and adversarial, per run and defense, and its "
            "correlation with the robust accuracy of the runs' eval files", paper="AAD Tables 1-2 (mass in box), "
            "across models", min_runs=1, max_runs=24, options=OPTIONS)
