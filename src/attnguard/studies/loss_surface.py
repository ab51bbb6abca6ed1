"""Study ``loss-surface`` (AFM Fig. 7, and Fig. 3): the loss around test examples, models side by side.

AFM Fig. 7 compares "loss surface for different feature matching operations around data points
1248 (top) and 1430 (bottom) of CIFAR-10 validation set: (a) Standard; (b) multilayers; (c) single
layer, and (d) proposed method", with Fig. 3's notation: the loss (z) against the adversarial
direction ``da = sign(grad_x f(x))`` and a Rademacher vector ``dr``. The paper reads them as: every
feature matching reduces the loss and smooths the surface, CAM matching the most (sec. IV-D-1).

``attnguard study loss-surface RUN [RUN ...]`` (e.g. ``fm-multi``, ``fm-single`` and ``afm`` runs,
and a ``standard`` one): one column per run, one row per test example, every panel on the same
axes and the same colour scale. The surface of each panel is :func:`attnguard.analysis.landscape.loss_grid`
(``CE(f(clip(x + a da + b dr)), y)``, ``da`` the sign of that model's own input gradient, ``dr``
one Rademacher draw shared by all models). Options: ``indices`` (test-set indices, e.g.
``1248,1430`` as in the paper) or the first ``n`` test examples; ``span`` (half-width of the a, b
grid; default the first run's eps, the attack's L-inf radius along each direction); ``steps``;
``seed`` (the Rademacher draw); ``kind`` (``surface``, 3-D as in the paper, or ``contour``).

Numbers, per run and example: the loss at the example, the mean and the largest loss over the
grid, and the rise (largest minus the example's): AFM's "lower losses" and "flatter landscapes".
"""

from __future__ import annotations

from typing import List

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from ..analysis._figures import new_figure, save_png, styled
from ..analysis._run import class_name
from ..analysis.landscape import loss_grid
from ..errors import ConfigError
from ..rundir import first_examples
from ..utils.modes import eval_mode
from ._maps import device_of, eps_option, int_option
from ._runs import items_option, run_label, runs_on_one_dataset
from .registry import STUDIES

OPTIONS = {"n": 2, "indices": None, "span": None, "steps": 21, "seed": 0, "kind": "surface"}
KINDS = ("surface", "contour")
CMAP = "viridis"


def _indices(ctx, n_test: int) -> List[int]:
    if ctx.options["indices"] is None:
        return list(range(min(int_option(ctx, "n"), n_test)))
    out = []
    for item in items_option(ctx, "indices"):
        try:
            i = int(float(item))
        except ValueError:
            i = -1
        if not 0 <= i < n_test or float(item) != i:
            raise ConfigError(f"study '{ctx.name}': indices must be test-set indices from 0 to {n_test - 1}, "
                              f"got {item!r}")
        out.append(i)
    return out


def _panel(fig, rows, cols, k, coords, z, norm, kind: str, title: str):
    a, b = np.meshgrid(coords, coords, indexing="ij")
    if kind == "surface":
        ax = fig.add_subplot(rows, cols, k, projection="3d")
        ax.plot_surface(a, b, z, cmap=CMAP, norm=norm, linewidth=0, antialiased=True, rcount=len(coords),
                        ccount=len(coords))
        ax.set_zlim(norm.vmin, norm.vmax)
        ax.set_zlabel("loss", labelpad=2)
        ax.view_init(elev=28, azim=-128)
    else:
        ax = fig.add_subplot(rows, cols, k)
        ax.contourf(a, b, z, levels=np.linspace(norm.vmin, norm.vmax, 21), cmap=CMAP, norm=norm, extend="both")
        ax.plot([0], [0], marker="+", color="white", ms=10)
        ax.grid(False)
    ax.set_xlabel("a: sign(∇ₓ loss)", labelpad=2)
    ax.set_ylabel("b: Rademacher", labelpad=2)
    ax.set_title(title, fontsize=8.5)
    return ax


@styled
def loss_surface(ctx) -> dict:
    o = ctx.options
    kind = o["kind"]
    if kind not in KINDS:
        raise ConfigError(f"study '{ctx.name}': option kind must be one of {', '.join(KINDS)}, got {kind!r}")
    steps, seed = int_option(ctx, "steps", lo=2), int_option(ctx, "seed", lo=0)
    runs = runs_on_one_dataset(ctx)
    eps = eps_option(ctx, runs[0].eps)
    span = eps if o["span"] is None else float(o["span"])
    if not span > 0:
        raise ConfigError(f"study '{ctx.name}': span must be > 0, got {o['span']!r} (default: the run's eps)")
    ds = runs[0].load_dataset()
    names = getattr(ds.info, "class_names", None) or []
    indices = _indices(ctx, len(ds.test.labels))
    images, labels = first_examples(ds.test)
    x_all, y_all = images[indices], labels[indices]
    device = device_of(ctx)

    grids, per_run = [], []
    for run in runs:
        model = run.model(device)
        rows = []
        with eval_mode(model):
            for i, idx in enumerate(indices):
                x, y = x_all[i : i + 1].to(device), y_all[i : i + 1].to(device)
                coords, z, center = loss_grid(model, x, y, span, steps, seed, 256)
                grids.append(z)
                rows.append({"index": idx, "label": int(y_all[i]), "center_loss": round(center, 5),
                             "mean_loss": round(float(z.mean()), 5), "max_loss": round(float(z.max()), 5),
                             "rise": round(float(z.max()) - center, 5), "loss": np.round(z, 5).tolist()})
        per_run.append({"run": str(run), "label": run_label(run), "defense": run.get("defense.preset"),
                        "eps": run.eps, "examples": rows})

    lo, hi = min(float(z.min()) for z in grids), max(float(z.max()) for z in grids)
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-6)  # one scale for every panel
    n_rows, n_cols = len(indices), len(runs)
    fig = new_figure(3.3 * n_cols + 1.0, 3.0 * n_rows + 1.2)
    for c, rec in enumerate(per_run):
        for r, ex in enumerate(rec["examples"]):
            where = f"test #{ex['index']} ({class_name(names, ex['label'])})"
            title = f"{rec['label']}\n{where}: loss {ex['center_loss']:.3g}"
            _panel(fig, n_rows, n_cols, r * n_cols + c + 1, coords, np.asarray(ex["loss"]), norm, kind, title)
    fig.subplots_adjust(left=0.04, right=0.88, top=1 - 0.95 / (3.0 * n_rows + 1.2), bottom=0.05, wspace=0.25,
                        hspace=0.35)
    cax = fig.add_axes([0.91, 0.15, 0.015, 0.65])
    fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), cax=cax, label="cross-entropy loss (one scale for all panels)")
    fig.suptitle(f"Loss surfaces (AFM Fig. 7), n={len(indices)} test examples x {len(runs)} models\n"
                 f"a along the FGSM direction sign(∇ₓ loss), b Rademacher; |a|, |b| <= {span:.4g} "
                 f"(eps={eps:.4g}), {steps}x{steps} grid", fontsize=10)
    save_png(fig, ctx.png, metadata={"Title": "attnguard loss-surface"})
    return {"direction": "a: sign(grad_x CE) of each model (FGSM); b: one Rademacher draw (seed) for all models",
            "span": span, "eps": eps, "steps": steps, "seed": seed, "kind": kind, "indices": indices,
            "a": [float(v) for v in coords], "loss_range": [round(lo, 5), round(hi, 5)], "runs": per_run}


STUDIES.add("loss-surface", loss_surface,
            "loss around test examples along sign(grad) x Rademacher, models side by side on one scale",
            paper="AFM Fig. 7 (and Fig. 3)", min_runs=1, max_runs=8, options=OPTIONS)
