"""``attention-evolution`` (AAD Fig. 6): how a fixed set of examples' attention changes over training.

Reads the per-epoch snapshots the trainer writes (``RUN/attention/epoch-EEE.npz``, see
:mod:`attnguard.train.snapshots`: the first ``train.attention_snapshots`` test examples, clean and
under the validation's PGD-k) and draws a strip: for each example a clean row and an adversarial
row, epochs left to right (epoch 0 = the initial weights). The numbers: per epoch, accuracy on the
snapshot examples, clean and adversarial, and the mean attention IoU between each example's clean
and adversarial map (AAD eq. 6, top-k cells on the 8x8 grid), which AAD's preservation loss
(eq. 9) is meant to raise.
"""

from __future__ import annotations

import numpy as np

from ..analysis._run import load_test_data
from ..errors import DataError
from ..rundir import RunDir
from ..train.snapshots import SNAPSHOT_DIR, read_snapshot, snapshot_files
from .registry import STUDIES
from ._maps import attention_iou, cell, display_images, display_maps, int_option, panel_grid, pred_text


def pick_columns(count: int, columns: int) -> list:
    """``columns`` indices out of ``count``, evenly spaced, always the first and the last."""
    if count <= columns:
        return list(range(count))
    if columns == 1:
        return [count - 1]
    return sorted({round(i * (count - 1) / (columns - 1)) for i in range(columns)})


def attention_evolution(ctx) -> dict:
    run = RunDir(ctx.runs[0])
    files = snapshot_files(run.path)
    if not files:
        raise DataError(f"{run.path} has no attention snapshots ({SNAPSHOT_DIR}/epoch-EEE.npz); they are written "
                        "during training when train.attention_snapshots > 0 (default 8, from this version on)")
    snaps = [read_snapshot(f) for f in files]
    n, columns, cells = int_option(ctx, "n"), int_option(ctx, "columns"), int_option(ctx, "cells")
    stored = len(snaps[0]["labels"])
    n = min(n, stored)
    labels = snaps[0]["labels"]
    attack, eps = str(snaps[-1]["attack"]), float(snaps[-1]["eps"])

    per_epoch = []
    for s in snaps:
        iou = attention_iou(s["clean_cam"], s["adv_cam"], cells)
        per_epoch.append({"epoch": int(s["epoch"]), "step": int(s["step"]),
                          "acc_clean": float(np.mean(s["clean_pred"] == s["labels"])),
                          "acc_adv": float(np.mean(s["adv_pred"] == s["labels"])),
                          "iou_clean_adv": float(iou.mean()), "seconds": round(float(s["seconds"]), 4)})

    shown = pick_columns(len(snaps), columns)
    data = load_test_data(run, n)  # the snapshot examples: the first test images
    images, names = data.images, data.class_names
    # the snapshots carry their labels; a dataset that changed since training would show other images
    if [int(v) for v in data.labels[:n]] != [int(v) for v in labels[:n]]:
        raise DataError(f"{run.path}: the first {n} test labels of {run.dataset} differ from those in the snapshots; "
                        "the dataset changed since training, so the images cannot be matched to the maps")
    size = images.shape[-2:]
    pics = display_images(images)
    maps = {(j, key): display_maps(snaps[j][f"{key}_cam"][:n], size) for j in shown for key in ("clean", "adv")}
    rows, row_labels = [], []
    for i in range(n):
        true = int(labels[i])
        for key, what in (("clean", "clean"), ("adv", f"adversarial\n({attack}, ε={eps:.3g})")):
            row = [cell(pics[i], None, f"true: {names[true]}") if key == "clean" else None]
            for j in shown:
                pred, conf = int(snaps[j][f"{key}_pred"][i]), float(snaps[j][f"{key}_conf"][i])
                row.append(cell(pics[i], maps[j, key][i], pred_text(pred, conf, names), pred == true))
            rows.append(row)
            row_labels.append(f"test #{i}\n{what}" if key == "clean" else what)
    col_labels = ["image"] + [f"epoch {per_epoch[j]['epoch']}\nstep {per_epoch[j]['step']}" for j in shown]
    panel_grid(rows, row_labels, col_labels, out=ctx.png,
               title=f"Attention over training (AAD Fig. 6) · {run.name}",
               subtitle=f"clean and adversarial Grad-CAM of the same {n} test examples at each epoch end\n"
                        f"attack: {attack}, ε={eps:.3g} (the run's validation attack) · n={n} · "
                        f"{len(shown)} of {len(snaps)} epochs shown",
               caption="Grad-CAM of the predicted class (AAD eq. 1-2), min-max normalized per panel, drawn over the "
                       "clean image (jet: blue = low, red = high).\nPanel titles: prediction (confidence); green = "
                       "correct, magenta = wrong. Epoch 0 = the initial weights.")
    return {"attack": attack, "eps": eps, "n_shown": n, "n_snapshot": stored, "cells": cells,
            "epochs_shown": [per_epoch[j]["epoch"] for j in shown], "per_epoch": per_epoch,
            "note": f"accuracy and IoU over the {stored} snapshot examples; IoU: top-{cells} cells "
                    "of the clean vs the adversarial map (AAD eq. 6)"}


STUDIES.add("attention-evolution", attention_evolution,
            "clean and adversarial Grad-CAM of fixed test examples at each epoch end, epochs left to right "
            "(needs train.attention_snapshots > 0)", paper="AAD Fig. 6", min_runs=1, max_runs=1,
            options={"n": 4, "columns": 8, "cells": 10})
