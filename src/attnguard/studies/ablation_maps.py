"""``ablation-maps`` (AAD Fig. 9): attention maps from the raw model, rectification only, preservation
only, and both (AAD eq. 10 with beta = 0, alpha = 0, or both weights set).

Four runs, in that order. The same first ``n`` test examples are attacked white-box against each
model (``attack`` at the first run's eps, each run's seed); each model contributes its clean map and
its adversarial example's map (Grad-CAM of the predicted class). Columns are labelled from each
run's config (defense preset, AAD alpha/beta), and a run whose weights do not fit its position is
named in the caption and the numbers rather than refused. The numbers, per model: accuracy on the
shown examples, clean and adversarial, and the mean IoU of the clean and adversarial maps (AAD eq. 6,
top-k cells on the 8x8 grid), the overlap AAD's preservation loss (eq. 9) is meant to raise.
"""

from __future__ import annotations

from typing import Optional

from ..analysis._run import attack_all, cams, load_test_data, make_attack, predict
from ..defenses.config import normalize_defense_section
from ..errors import AttnGuardError, ConfigError
from ..rundir import RunDir
from ..utils.modes import eval_mode
from .registry import STUDIES
from ._maps import (attention_iou, cell, device_of, display_images, display_maps, eps_option, int_option,
                    panel_grid, pred_text)

ROLES = ("raw model", "rectification only", "preservation only", "rectification + preservation")
# what each position expects of (alpha > 0, beta > 0); the raw model has no AAD term at all
EXPECTED = ((False, False), (True, False), (False, True), (True, True))


def defense_of(run: RunDir) -> dict:
    """Preset and AAD weights from a run's config.yaml (old flat keys such as aad_alpha understood)."""
    section = run.config.get("defense") or {}
    try:
        section = normalize_defense_section(section)
    except AttnGuardError:
        pass
    preset = str(section.get("preset", "?"))
    aad = section.get("aad") if isinstance(section.get("aad"), dict) else {}
    uses_aad = "aad" in preset.split("+")
    alpha: Optional[float] = float(aad.get("alpha", 0.01)) if uses_aad else None
    beta: Optional[float] = float(aad.get("beta", 0.01)) if uses_aad else None
    label = f"{preset}\nα={alpha:g}, β={beta:g}" if uses_aad else preset
    return {"preset": preset, "alpha": alpha, "beta": beta, "label": label}


def _misfit(i: int, d: dict) -> Optional[str]:
    got = ((d["alpha"] or 0) > 0, (d["beta"] or 0) > 0)
    return None if got == EXPECTED[i] else f"run {i + 1} is in the '{ROLES[i]}' position but has {d['label']!r}"


def ablation_maps(ctx) -> dict:
    runs = [RunDir(r) for r in ctx.runs]
    n, cells = int_option(ctx, "n"), int_option(ctx, "cells")
    with_clean = bool(ctx.options["clean_maps"])
    datasets = {r.dataset for r in runs}
    if len(datasets) > 1:
        raise ConfigError(f"study '{ctx.name}': the runs use different datasets ({', '.join(sorted(datasets))})")
    attack_name = str(ctx.options["attack"]).strip().lower()
    eps = eps_option(ctx, runs[0].eps)
    device = device_of(ctx)
    data = load_test_data(runs[0], n)
    names = data.class_names
    x, y = data.images.to(device), data.labels.to(device)
    n = len(y)
    size = x.shape[-2:]
    defenses = [defense_of(r) for r in runs]
    notes = [m for i, d in enumerate(defenses) for m in [_misfit(i, d)] if m]
    notes += [f"run {i + 1} was trained at eps {r.eps:g}; all are attacked at {eps:g}"
              for i, r in enumerate(runs) if abs(r.eps - eps) > 1e-9]

    models, panels = [], []
    for i, (run, d) in enumerate(zip(runs, defenses)):
        model = run.model(device)
        attack = make_attack(attack_name, eps, seed=run.seed, num_classes=model.num_classes, device=device)
        with eval_mode(model):
            x_adv = attack_all(attack, model, x, y)
            p_clean, p_adv = predict(model, x), predict(model, x_adv)
            (c_conf, c_pred), (a_conf, a_pred) = p_clean.max(1), p_adv.max(1)
            cam_clean, cam_adv = cams(model, x, c_pred), cams(model, x_adv, a_pred)
        models.append({"run": str(run.target), "role": ROLES[i], "preset": d["preset"], "alpha": d["alpha"],
                       "beta": d["beta"], "acc_clean": float((c_pred == y).float().mean()),
                       "acc_adv": float((a_pred == y).float().mean()),
                       "iou_clean_adv": float(attention_iou(cam_clean, cam_adv, cells).mean())})
        panels.append({"clean": (display_images(x), display_maps(cam_clean, size), c_pred.tolist(), c_conf.tolist()),
                       "adv": (display_images(x_adv), display_maps(cam_adv, size), a_pred.tolist(), a_conf.tolist())})

    kinds = ("clean", "adv") if with_clean else ("adv",)
    rows, row_labels = [], []
    for j in range(n):
        true = int(y[j])
        row = [cell(display_images(x[j:j + 1])[0], None, f"true: {names[true]}")]
        for p in panels:
            for kind in kinds:
                imgs, maps, preds, confs = p[kind]
                row.append(cell(imgs[j], maps[j], pred_text(preds[j], confs[j], names), preds[j] == true))
        rows.append(row)
        row_labels.append(f"test #{j}")
    col_labels = ["image"] + [("clean" if k == "clean" else "adversarial") for _ in panels for k in kinds]
    w = len(kinds)
    groups = [(1 + w * i, w * (i + 1), f"{ROLES[i]}\n{d['label']}") for i, d in enumerate(defenses)]
    caption = ("Grad-CAM of the predicted class (AAD eq. 1-2), min-max normalized per panel (jet: blue = low, red = "
               "high); each model's adversarial example is crafted against that model.\nTitles: prediction "
               "(confidence); green = correct, magenta = wrong.")
    if notes:
        caption += "\nNote: " + "; ".join(notes)
    panel_grid(rows, row_labels, col_labels, out=ctx.png, groups=groups,
               title="Attention with and without AAD's losses (AAD Fig. 9)",
               subtitle=f"attack: {attack_name}, ε={eps:.3g}, white-box against each model · n={n} test examples",
               caption=caption)
    return {"attack": attack_name, "eps": eps, "n": n, "cells": cells, "models": models, "notes": notes,
            "note": f"accuracy on the {n} shown examples; IoU: top-{cells} cells of the clean vs the adversarial "
                    "map (AAD eq. 6)"}


STUDIES.add("ablation-maps", ablation_maps,
            "clean and adversarial Grad-CAM under four models: raw, rectification only (beta=0), preservation only "
            "(alpha=0), both; runs in that order", paper="AAD Fig. 9", min_runs=4, max_runs=4,
            options={"attack": "pgd-20", "n": 4, "eps": None, "cells": 10, "clean_maps": True})
