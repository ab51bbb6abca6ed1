"""Robustness plots: accuracy vs PGD iterations (AFM Fig. 4), accuracy vs eps, training curves.

The loss landscape (AFM Fig. 3, AT+ALP Fig. 6) lives in ``landscape.py`` and the t-SNE of
penultimate features (AFM Fig. 5) in ``tsne.py``; both are re-exported here. Every function
writes a PNG and returns the plotted numbers as plain lists.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

from ..errors import DataError
from ._figures import PALETTE, new_figure, save_png, styled
from ..rundir import METRICS_FILE, read_jsonl
from ._run import attack_all, make_attack, predict
from ..utils.modes import eval_mode
from .landscape import loss_landscape
from .tsne import penultimate_features, tsne_features

DEFAULT_STEPS = (1, 2, 3, 5, 7, 10, 15, 20)


def _models(model) -> "OrderedDict[str, object]":
    if isinstance(model, Mapping):
        return OrderedDict(model)
    return OrderedDict([(getattr(model, "arch", "model"), model)])


def _accuracy(model, images, labels) -> float:
    if len(labels) == 0:
        return float("nan")
    return float((predict(model, images).argmax(1) == labels).float().mean())


def _data(model, images, labels):
    device = next(model.parameters()).device
    return images.to(device).float(), labels.to(device).long()


@styled
def accuracy_vs_iterations(model, images, labels, eps: float, steps: Sequence[int] = DEFAULT_STEPS, *,
                           alpha: Optional[float] = None, seed: int = 0, out="accuracy_vs_iterations.png") -> dict:
    """Robust accuracy under L-inf PGD with 1..K iterations (AFM Fig. 4).

    ``model`` may be one model or a ``{name: model}`` mapping (one curve each). Every run uses
    the same step size (default ``eps / 4``) and, through the same seed, the same random start,
    so the curves differ only in the number of iterations.
    """
    from ..attacks import PGD

    steps = sorted({int(s) for s in steps})
    if not steps or steps[0] < 1:
        raise ValueError(f"steps must be positive integers, got {steps}")
    alpha = float(eps) / 4 if alpha is None else float(alpha)
    curves: Dict[str, dict] = {}
    for name, m in _models(model).items():
        x, y = _data(m, images, labels)
        with eval_mode(m):
            clean = _accuracy(m, x, y)
            accs = [_accuracy(m, attack_all(PGD(eps, alpha=alpha, steps=k, seed=seed), m, x, y), y) for k in steps]
        curves[name] = {"clean": clean, "accuracy": accs}
    fig = new_figure(5.4, 3.5)
    ax = fig.add_subplot()
    for i, (name, c) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        ax.plot(steps, c["accuracy"], marker="o", ms=3.5, color=color, label=name)
        ax.axhline(c["clean"], color=color, lw=0.8, ls=":", alpha=0.8)
    ax.set_xlabel("PGD iterations")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Accuracy vs PGD iterations (ε={eps:.4g}, step {alpha:.4g})")
    ax.legend(title="dotted: clean accuracy", title_fontsize=7)
    path = save_png(fig, out)
    result = {"steps": steps, "eps": float(eps), "alpha": alpha, "n_examples": int(len(labels)), "path": str(path)}
    if len(curves) == 1:
        result.update(next(iter(curves.values())))
    else:
        result["models"] = curves
    return result


@styled
def accuracy_vs_eps(model, images, labels, eps_values: Sequence[float], attack="pgd-10", *, seed: int = 0,
                    out="accuracy_vs_eps.png") -> dict:
    """Accuracy under ``attack`` (a name such as ``"pgd-10"`` or ``"fgsm"``) for each radius.

    ``model`` may be one model or a ``{name: model}`` mapping. eps = 0 gives the clean accuracy.
    """
    eps_values = [float(e) for e in eps_values]
    if not eps_values or min(eps_values) < 0:
        raise ValueError(f"eps values must be >= 0, got {eps_values}")
    curves: Dict[str, list] = {}
    for name, m in _models(model).items():
        x, y = _data(m, images, labels)
        accs = []
        with eval_mode(m):
            for e in eps_values:
                if e == 0:
                    accs.append(_accuracy(m, x, y))
                    continue
                atk = make_attack(attack, e, seed=seed, num_classes=getattr(m, "num_classes", 10), device=x.device)
                accs.append(_accuracy(m, attack_all(atk, m, x, y), y))
        curves[name] = accs
    fig = new_figure(5.4, 3.5)
    ax = fig.add_subplot()
    for i, (name, accs) in enumerate(curves.items()):
        ax.plot(eps_values, accs, marker="o", ms=3.5, color=PALETTE[i % len(PALETTE)], label=name)
    ax.set_xlabel("ε (L-inf, pixels in [0, 1])")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Accuracy vs ε ({attack if isinstance(attack, str) else type(attack).__name__})")
    ax.legend()
    path = save_png(fig, out)
    result = {"eps": eps_values, "attack": str(attack), "n_examples": int(len(labels)), "path": str(path)}
    if len(curves) == 1:
        result["accuracy"] = next(iter(curves.values()))
    else:
        result["models"] = curves
    return result


CURVE_KEYS = ("loss", "acc_clean", "acc_adv")


def read_metrics(source) -> dict:
    """Per-epoch train means and val values from a run's ``metrics.jsonl`` (file or run directory).

    Lines that are not JSON objects (e.g. a line cut short by a killed run) are skipped and
    counted in ``skipped_lines``.
    """
    path = Path(source)
    path = path / METRICS_FILE if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"no metrics file: {path}")
    train: Dict[int, Dict[str, list]] = {}
    val: Dict[int, Dict[str, float]] = {}
    rows, skipped = read_jsonl(path)
    for row in rows:
        if not isinstance(row.get("epoch"), (int, float)):
            skipped += 1
            continue
        epoch, split = int(row["epoch"]), row.get("split", "train")
        values = {k: float(row[k]) for k in CURVE_KEYS if isinstance(row.get(k), (int, float))}
        if split == "train":
            bucket = train.setdefault(epoch, {k: [] for k in CURVE_KEYS})
            for k, v in values.items():
                bucket[k].append(v)
        elif split in ("val", "valid", "validation", "test"):
            val.setdefault(epoch, {}).update(values)

    def series(rows: dict, reduce) -> dict:
        epochs = sorted(rows)
        return {"epoch": epochs, **{k: [reduce(rows[e].get(k)) for e in epochs] for k in CURVE_KEYS}}

    mean = lambda vs: (sum(vs) / len(vs)) if vs else None  # noqa: E731
    return {"train": series(train, mean), "val": series(val, lambda v: v), "skipped_lines": skipped}


@styled
def training_curves(source, out="training_curves.png", title: Optional[str] = None) -> dict:
    """Loss and clean/adversarial accuracy per epoch, train (mean over the epoch) vs val."""
    data = read_metrics(source)
    fig = new_figure(9.0, 3.4)
    ax_loss, ax_acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    styles = {"train": dict(ls="-", marker="o", ms=3), "val": dict(ls="--", marker="s", ms=3.5)}
    colors = {"loss": "#444444", "acc_clean": "#1f77b4", "acc_adv": "#d62728"}
    names = {"loss": "loss", "acc_clean": "clean accuracy", "acc_adv": "adversarial accuracy"}
    drawn = False
    for split in ("train", "val"):
        s = data[split]
        for key in CURVE_KEYS:
            pts = [(e, v) for e, v in zip(s["epoch"], s[key]) if v is not None and math.isfinite(v)]
            if not pts:
                continue
            ax = ax_loss if key == "loss" else ax_acc
            ax.plot(*zip(*pts), color=colors[key], label=f"{split} {names[key]}", **styles[split])
            drawn = True
    ax_loss.set_title("Loss")
    ax_acc.set_title("Accuracy")
    ax_acc.set_ylim(-0.02, 1.02)
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if not drawn:
        ax_loss.text(0.5, 0.5, "no metrics recorded", ha="center", va="center", transform=ax_loss.transAxes)
    if title:
        fig.suptitle(title, fontweight="bold")
    data["path"] = str(save_png(fig, out))
    return data


__all__ = ["accuracy_vs_iterations", "accuracy_vs_eps", "training_curves", "read_metrics", "loss_landscape",
           "tsne_features", "penultimate_features"]
