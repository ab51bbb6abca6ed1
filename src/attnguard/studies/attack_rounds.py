"""``attack-rounds`` (AAD Fig. 2 and Fig. 12): the attention after each round of an iterative attack,
Iter-StepLL next to Iter-StepLL + A3 (AAD eq. 11-13 as ``attacks/a3.py`` implements eq. 12).

Each attack runs once with ``rounds`` steps; its ``on_iterate`` observer (attacks/pgd.py) keeps every
iterate, so round r is the r-th step of that one attack (with its own step size), not a separate
r-step attack. Round 0 is the attack's starting point: the clean image for Iter-StepLL, the random
start for PGD. For each round: the Grad-CAM of the predicted class, the fooled fraction, and the
mean attention IoU with the clean image's map (AAD eq. 6, top-k cells on the 8x8 grid; AAD Table 3
reads a low IoU as a successful deviation of attention).
"""

from __future__ import annotations

import re

import torch

from ..analysis._run import cams, load_test_data, make_attack, predict
from ..errors import ConfigError
from ..rundir import RunDir
from ..utils.modes import eval_mode
from .registry import STUDIES
from ._maps import (attention_iou, cell, device_of, display_images, display_maps, eps_option, int_option,
                    names_option, panel_grid, pred_text)

POOL = 200  # the examples are the first n of the first POOL test images that the model classifies correctly


def _iterative(attack):
    from ..attacks.a3 import A3
    from ..attacks.pgd import PGD

    return isinstance(attack, PGD) or (isinstance(attack, A3) and isinstance(attack.inner, PGD))


def run_rounds(model, attack, x, y, rounds: int) -> torch.Tensor:
    """The iterates ``[rounds + 1, B, C, H, W]`` of one run of ``attack`` (first restart), every example attacked."""
    seen = {}
    attack.skip_misclassified = False  # the rows must show every example's rounds
    attack.on_iterate = lambda step, x_adv: seen.setdefault(step, x_adv.clone())
    try:
        attack(model, x, y)
    finally:
        attack.on_iterate = None
    if sorted(seen) != list(range(rounds + 1)):
        raise RuntimeError(f"{attack!r} reported rounds {sorted(seen)}, expected 0..{rounds}")
    return torch.stack([seen[r] for r in range(rounds + 1)])


def attack_rounds(ctx) -> dict:
    run = RunDir(ctx.runs[0])
    families = names_option(ctx, "attacks")
    rounds, n, cells = int_option(ctx, "rounds"), int_option(ctx, "n"), int_option(ctx, "cells")
    for fam in families:
        if re.search(r"-[0-9]+(x[0-9]+)?$", fam):
            raise ConfigError(f"study '{ctx.name}': give attack families without the step count (the rounds "
                              f"option sets it), e.g. iter-stepll or a3-iter-stepll, got '{fam}'")
    device = device_of(ctx)
    model = run.model(device)
    eps = eps_option(ctx, run.eps)
    data = load_test_data(run, POOL)
    names = data.class_names
    x_all, y_all = data.images.to(device), data.labels.to(device)
    with eval_mode(model):
        ok = predict(model, x_all).argmax(1) == y_all
    order = torch.cat([ok.nonzero().flatten(), (~ok).nonzero().flatten()])[:n]  # correct ones first
    x, y = x_all[order], y_all[order]
    n = len(y)

    per_attack, rows, row_labels = {}, [], []
    with eval_mode(model):
        clean_pred = predict(model, x).argmax(1)
        clean_cam = cams(model, x, clean_pred)
        size = x.shape[-2:]
        drawn = {}
        for fam in families:
            name = f"{fam}-{rounds}"
            attack = make_attack(name, eps, seed=run.seed, num_classes=model.num_classes, device=device)
            if not _iterative(attack):
                raise ConfigError(f"study '{ctx.name}' needs iterative attacks (PGD-type: pgd, iter-stepll, cw and "
                                  f"their a3-/a3n- variants); '{name}' is not one")
            iterates = run_rounds(model, attack, x, y, rounds)
            stats = {"fooled": [], "iou_clean": [], "p_true": []}
            for r in range(rounds + 1):
                prob = predict(model, iterates[r])
                conf, pred = prob.max(1)
                cam = cams(model, iterates[r], pred)
                stats["fooled"].append(float((pred != y).float().mean()))
                stats["iou_clean"].append(float(attention_iou(clean_cam, cam, cells).mean()))
                stats["p_true"].append(float(prob.gather(1, y[:, None]).mean()))
                drawn[name, r] = (display_images(iterates[r]), display_maps(cam, size), pred.tolist(), conf.tolist())
            per_attack[name] = stats
    pics = display_images(x)
    for i in range(n):
        true = int(y[i])
        for a, name in enumerate(per_attack):
            row = [cell(pics[i], None, f"true: {names[true]}") if a == 0 else None]
            for r in range(rounds + 1):
                imgs, maps, preds, confs = drawn[name, r]
                row.append(cell(imgs[i], maps[i], pred_text(preds[i], confs[i], names), preds[i] == true))
            rows.append(row)
            row_labels.append(f"test #{int(order[i])}\n{name}" if a == 0 else name)
    col_labels = ["image"] + [f"round {r}" for r in range(rounds + 1)]
    panel_grid(rows, row_labels, col_labels, out=ctx.png,
               title=f"Attention over attack rounds (AAD Fig. 2, 12) · {run.name}",
               subtitle=f"{' vs '.join(per_attack)}, ε={eps:.3g}, each round one step of the same attack · "
                        f"n={n} test examples (the first the model classifies correctly)",
               caption="Each panel: the round's adversarial image and its Grad-CAM of the predicted class (AAD eq. "
                       "1-2), min-max normalized per panel (jet: blue = low, red = high).\nRound 0 = the attack's "
                       "start (the clean image without a random start). Titles: prediction (confidence); green = "
                       "correct, magenta = wrong.")
    return {"eps": eps, "n": n, "examples": [int(i) for i in order], "rounds": list(range(rounds + 1)),
            "cells": cells, "attacks": per_attack,
            "note": f"per round: fooled fraction, mean IoU of the top-{cells} cells of the round's map with the "
                    "clean map (AAD eq. 6), mean probability of the true class"}


STUDIES.add("attack-rounds", attack_rounds,
            "Grad-CAM after each round of iterative attacks, Iter-StepLL next to Iter-StepLL + A3 (fooled fraction, "
            "IoU with the clean map)", paper="AAD Fig. 2, 12", min_runs=1, max_runs=1,
            options={"attacks": "iter-stepll,a3-iter-stepll", "rounds": 10, "n": 4, "eps": None, "cells": 10})
