"""``analyze``: the papers' attention analyses for a run directory, written as JSON and PNG plots.

Writes ``analysis.json`` (see :func:`attnguard.analysis.attention_stats.attention_statistics`
for the tables) and ``iou_clean_adv.png`` / ``iou_box.png`` / ``lime_iou.png`` into ``out_dir``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ConfigError
from ..evaluation.blocks import check_eps
from ._figures import new_figure, save_png, styled
from ..rundir import RunDir, parse_eps
from ._run import attack_name, load_test_data, make_attack
from .attention_stats import CELLS, LIME_FEATURES, attention_statistics

GROUP_COLORS = {"succeed": "#c51b7d", "fail": "#1b7837"}
GROUP_LABELS = {"succeed": "I_succeed (attack fooled the model)", "fail": "I_fail (attack failed)"}


def _bars(ax, rows, key, title, xlabel):
    xs = np.arange(len(rows))
    for j, group in enumerate(("succeed", "fail")):
        vals = [np.nan if r[group] is None else r[group] for r in rows]
        bars = ax.bar(xs + (j - 0.5) * 0.38, vals, 0.38, color=GROUP_COLORS[group], label=GROUP_LABELS[group])
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, [str(r[key]) for r in rows])
    ax.set_ylim(0, 1.3)  # headroom above 1 keeps the legend off the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean IoU")
    ax.set_title(title)
    ax.grid(axis="x", visible=False)


@styled
def plot_analysis(results: dict, arrays: dict, out_dir) -> list:
    """Plots of the analysis tables; returns the written paths."""
    out_dir = Path(out_dir)
    written = []
    cva = results.get("clean_vs_adv")
    if cva:
        fig = new_figure(5.2, 3.4)
        ax = fig.add_subplot()
        _bars(ax, cva["rows"], "cells", f"Attention IoU, clean vs adversarial ({cva['grid']} grid)",
              "top-k attention cells (AAD eq. 6)")
        ax.legend(loc="upper left", fontsize=7.5)
        written.append(save_png(fig, out_dir / "iou_clean_adv.png"))
    if "box_iou" in arrays:
        iou, succ = arrays["box_iou"].numpy(), arrays["succeed"].numpy()
        fig = new_figure(5.2, 3.4)
        ax = fig.add_subplot()
        bins = np.linspace(0, 1, 21)
        groups = [(g, iou[sel & np.isfinite(iou)]) for g, sel in (("succeed", succ), ("fail", ~succ))]
        groups = [(g, v) for g, v in groups if len(v)]
        if groups:  # side by side bars: overlapping translucent histograms turn muddy
            ax.hist([v for _, v in groups], bins=bins, color=[GROUP_COLORS[g] for g, _ in groups],
                    label=[f"{GROUP_LABELS[g]}: mean {v.mean():.3f}" for g, v in groups], rwidth=0.9)
        ax.axvline(0.5, color="#555555", lw=1, ls="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
        ax.set_xlabel("IoU between equal-area attention and ground-truth box (AAD eq. 5)")
        ax.set_ylabel("images")
        ax.set_title("Attention vs ground truth")
        ax.legend(fontsize=7.5, loc="upper left")
        written.append(save_png(fig, out_dir / "iou_box.png"))
    lime = results.get("lime")
    if lime:
        panels = [("table5", "LIME: clean vs adversarial")] + ([("table4", "LIME: attention vs box")]
                                                              if "table4" in lime else [])
        fig = new_figure(4.2 * len(panels), 3.4)
        for i, (key, title) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            _bars(ax, lime[key], "features", title, "top-k LIME features")
            if i == 0:
                ax.legend(loc="upper left", fontsize=7)
        written.append(save_png(fig, out_dir / "lime_iou.png"))
    return written


def analyze_model(model, images, labels, attack, *, boxes=None, masks=None, out_dir=None,
                  header: Optional[dict] = None, **options) -> dict:
    """Library-level analysis of ``model`` on tensors; writes JSON and plots when ``out_dir`` is given.

    ``header`` entries (run, dataset, notes, ...) are put first in the results. ``options`` go to
    :func:`attention_statistics` (layer, grid, cells, lime_examples, lime_samples, seed, ...).
    """
    start = time.perf_counter()
    results, arrays = attention_statistics(model, images, labels, attack, boxes=boxes, masks=masks, **options)
    header = dict(header or {})
    notes = list(header.pop("notes", [])) + results.pop("notes", [])
    if boxes is None:
        notes.append("no ground-truth boxes: the attention-vs-box analyses (AAD Tables 1, 2 and 4, activation "
                     "inside boxes) were skipped; pass boxes (--boxes FILE_OR_DIR) to run them")
    results = {**header, **results, "notes": notes, "seconds": round(time.perf_counter() - start, 2)}
    if out_dir is not None:
        from ..io import atomic_write_text

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        results["plots"] = [p.name for p in plot_analysis(results, arrays, out_dir)]
        atomic_write_text(out_dir / "analysis.json", json.dumps(results, indent=2) + "\n")
    return results


def analyze(run, boxes=None, attack: str = "stepll", n_examples: int = 500, out_dir=None, device="cpu", *,
            eps=None, grid=8, lime_examples: int = 16, lime_samples: int = 300, seed: Optional[int] = None) -> dict:
    """AAD Tables 1-5 and AT+ALP Table 3 for a run directory; writes RUN/analysis/ (or ``out_dir``).

    Args:
        run: run directory (config.yaml + checkpoints/), or a :class:`~attnguard.rundir.RunDir`;
            the model is the checkpoint its config's ``eval.checkpoint`` names (default best).
        boxes: VOC XML file/directory or CSV of ground-truth boxes; default: the dataset's own boxes
            (synthetic-boxes), else the box analyses are skipped with a note.
        attack: attack name; AAD generates its analysis examples with StepLL (eq. 4).
        n_examples: first test images to use (the correctly classified ones form I_att).
        eps: attack radius (default: the run's eval.eps, else adversary.eps).
        grid: 8 for AAD's 8x8 grid, None for the model's own grid.
        lime_examples: images of I_att that also get LIME maps (0 disables LIME).

    Returns the results written to ``analysis.json``.
    """
    from .boxes import load_boxes

    run = RunDir.of(run)
    if int(n_examples) < 1:
        raise ConfigError(f"n_examples must be >= 1, got {n_examples}")
    # the range check of attnguard eval, before the model loads (eps 2 or -1 is one line, exit 2)
    eps = check_eps(run.eps if eps is None else parse_eps(eps))
    model = run.model(device)
    data = load_test_data(run, n_examples)
    seed = run.seed if seed is None else int(seed)
    atk = make_attack(attack, eps, seed=seed, num_classes=model.num_classes, device=device)
    n, _, h, w = data.images.shape
    box_source = None
    if boxes is not None:
        box_list, box_source = load_boxes(boxes, n, (h, w), data.filenames), str(boxes)
    elif data.boxes is not None:
        box_list, box_source = data.boxes, "dataset"
    else:
        box_list = None
    header = {
        "run": str(run), "dataset": run.get("data.name"), "model": getattr(model, "arch", None),
        "defense": run.get("defense.preset"), "attack": attack, "attack_used": attack_name(attack), "eps": eps,
        "boxes": box_source, "masks": "dataset" if data.masks is not None else None, "notes": [],
    }
    out_dir = Path(out_dir) if out_dir is not None else run.analysis_dir
    return analyze_model(model, data.images, data.labels, atk, boxes=box_list, masks=data.masks, out_dir=out_dir,
                         header=header, grid=grid, lime_examples=lime_examples, lime_samples=lime_samples, seed=seed)


__all__ = ["analyze", "analyze_model", "plot_analysis", "CELLS", "LIME_FEATURES"]
