"""Study ``defense-maps`` (AAD Fig. 10-11): successful and failed defenses, seen through Grad-CAM.

AAD sec. 5.5 shows, for an existing adversarial training method (ensemble adversarial training,
Fig. 10; StepLL adversarial training, Fig. 11), "three images as the original image, activation
map of adversarial image for the clean model, and activation map of adversarial image for the
adversarially trained model", for cases where the defense succeeds (a) and fails (b).

``attnguard study defense-maps CLEAN_RUN DEFENDED_RUN``. Which adversarial image: the captions
show *one* adversarial image under both models, and AAD's analyses craft it, "unless otherwise
specified", with StepLL on "the original network" (sec. 3, eq. 4). So by default the image is
StepLL on the clean (standard) model, transferred to the defended one: the defense succeeds when
the defended model still classifies it correctly. ``crafted_on=defended`` crafts it on the
defended model instead (a white-box attack on the defense), ``attack`` picks any attack name
(e.g. ``pgd-20``), ``eps`` defaults to the defended run's (``eval.eps``, else ``adversary.eps``).

Examples: among the first ``pool`` test images, those both models classify correctly when clean
(AAD's I_att: attention is read on correctly classified images). Success: the defended model is
right on the adversarial image; failure: it is wrong. The figure shows the first ``n`` of each.
Each map is the Grad-CAM (AAD eq. 1-2) of the model's predicted class (``target=true``: of the
true class), min-max normalized and upsampled for display.

Numbers: counts, and per model the mean IoU (AAD eq. 5-6) between its attention area on the
clean image and on the adversarial image, the area being AAD eq. 3 with kappa = the map's mean
(on the model's own Grad-CAM grid), over all eligible examples and per outcome.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch

from ..analysis._figures import CAM_CMAP, new_figure, save_png
from ..analysis._run import attack_all, attack_name, cams, class_name, load_test_data, make_attack, predict
from ..attention import attention_area, mask_iou, normalize_cam, upsample_cam
from ..errors import ConfigError
from ..rundir import RunDir
from ..utils.modes import eval_mode
from ._maps import device_of, eps_option, int_option
from .registry import STUDIES

OPTIONS = {"attack": "stepll", "eps": None, "n": 4, "pool": 256, "crafted_on": "clean", "target": "predicted"}
CRAFTED_ON = ("clean", "defended")
TARGETS = ("predicted", "true")
OK_COLOR, BAD_COLOR = "#1b7837", "#c51b7d"
COLUMNS = ("original", "adversarial: clean model", "adversarial: defended model")
PANEL_W, ROW_H, GROUP_H, HEAD_H = 2.2, 2.25, 0.4, 1.45


def _choice(name: str, value, valid) -> str:
    if value not in valid:
        raise ConfigError(f"study option {name} must be one of {', '.join(valid)}, got {value!r}")
    return value


def _mean(values: torch.Tensor) -> Optional[float]:
    return round(float(values.mean()), 4) if values.numel() else None


def _display(img: torch.Tensor) -> np.ndarray:
    arr = img.detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[2] == 1 else arr


def _panel(ax, img: np.ndarray, cam: Optional[np.ndarray], title: str, color: str) -> None:
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    if cam is not None:
        ax.imshow(cam, cmap=CAM_CMAP, vmin=0, vmax=1, alpha=0.5, interpolation="bilinear")
    ax.set_title(title, fontsize=8, color=color, linespacing=1.2, pad=3)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for side in ax.spines.values():
        side.set_visible(False)


def _figure(groups: Dict[str, List[int]], x, x_adv, y, pred: Dict[str, torch.Tensor], maps: Dict[str, np.ndarray],
            names, title: str, subtitle: str):
    """Two row groups, (a) success and (b) failure; three panels per example."""
    rows = sum(max(1, len(v)) for v in groups.values())
    height = HEAD_H + len(groups) * GROUP_H + rows * ROW_H + 0.2
    fig = new_figure(3 * PANEL_W + 0.4, height)
    fig.text(0.5, 1 - 0.1 / height, title, ha="center", va="top", fontsize=11.5, fontweight="bold")
    fig.text(0.5, 1 - 0.4 / height, subtitle, ha="center", va="top", fontsize=8.5, color="#555555", linespacing=1.3)
    top = HEAD_H
    for label, idx in groups.items():
        fig.text(0.03, 1 - (top + 0.1) / height, label, ha="left", va="top", fontsize=10, fontweight="bold")
        top += GROUP_H
        if not idx:
            fig.text(0.5, 1 - (top + ROW_H / 2) / height, "no such example among the eligible test images",
                     ha="center", va="center", fontsize=9, color="#777777")
            top += ROW_H
            continue
        for i in idx:
            t = int(y[i])
            cells = [(_display(x[i]), None, f"true: {class_name(names, t)}", "#333333")]
            for key, who in (("clean", "clean"), ("defended", "defended")):
                p = int(pred[key][i])
                cells.append((_display(x_adv[i]), maps[key][i], f"{who}: pred {class_name(names, p)}\n"
                              f"true {class_name(names, t)}", OK_COLOR if p == t else BAD_COLOR))
            for col, (img, cam, text, color) in enumerate(cells):
                left = (0.2 + col * PANEL_W + 0.08) / (3 * PANEL_W + 0.4)
                ax = fig.add_axes([left, 1 - (top + ROW_H - 0.05) / height, (PANEL_W - 0.16) / (3 * PANEL_W + 0.4),
                                   (ROW_H - 0.55) / height])
                _panel(ax, img, cam, text, color)
            top += ROW_H
    for col, text in enumerate(COLUMNS):
        fig.text((0.2 + (col + 0.5) * PANEL_W) / (3 * PANEL_W + 0.4), 1 - (HEAD_H - 0.3) / height, text, ha="center",
                 va="top", fontsize=9, fontweight="bold", color="#333333")
    return fig


def defense_maps(ctx) -> dict:
    o = ctx.options
    n, pool = int_option(ctx, "n"), int_option(ctx, "pool")
    crafted_on = _choice("crafted_on", o["crafted_on"], CRAFTED_ON)
    target = _choice("target", o["target"], TARGETS)
    clean_run, def_run = RunDir(ctx.runs[0]), RunDir(ctx.runs[1])
    if clean_run.dataset != def_run.dataset:
        raise ConfigError(f"defense-maps compares two models on one dataset; {clean_run} is on {clean_run.dataset}, "
                          f"{def_run} on {def_run.dataset}")
    device = device_of(ctx)
    models = {"clean": clean_run.model(device), "defended": def_run.model(device)}
    eps = eps_option(ctx, def_run.eps)
    data = load_test_data(def_run, pool)
    x, y = data.images.to(device).float(), data.labels.to(device).long()
    attack = make_attack(o["attack"], eps, seed=def_run.seed, num_classes=models["defended"].num_classes,
                         device=device)
    with eval_mode(models["clean"]), eval_mode(models["defended"]):
        x_adv = attack_all(attack, models[crafted_on], x, y)
        pred_x = {k: predict(m, x).argmax(1) for k, m in models.items()}
        pred = {k: predict(m, x_adv).argmax(1) for k, m in models.items()}
        eligible = (pred_x["clean"] == y) & (pred_x["defended"] == y)
        idx = eligible.nonzero().flatten()
        ok = pred["defended"][idx] == y[idx]
        size = x.shape[-2:]
        maps, iou = {}, {}
        for k, m in models.items():
            t_x, t_adv = (y[idx], y[idx]) if target == "true" else (pred_x[k][idx], pred[k][idx])
            g_x, g_adv = cams(m, x[idx], t_x), cams(m, x_adv[idx], t_adv)
            iou[k] = mask_iou(attention_area(g_x), attention_area(g_adv)).cpu()
            maps[k] = upsample_cam(normalize_cam(g_adv), size).clamp(0, 1).cpu().numpy() if len(idx) else None
    ok = ok.cpu()
    where = idx.cpu().tolist()
    groups = {"(a) successful defense": [j for j, s in enumerate(ok.tolist()) if s][:n],
              "(b) failed defense": [j for j, s in enumerate(ok.tolist()) if not s][:n]}
    sub = {k: v[idx].cpu() for k, v in pred.items()}
    label = f"{attack_name(o['attack']).upper()}, eps={eps:.4g}, crafted on the {crafted_on} model"
    title = "Successful and failed defenses (AAD Fig. 10-11)"
    subtitle = (f"defended: {def_run.name}; clean: {clean_run.name}\n{label}\n"
                f"Grad-CAM of the {target} class, min-max normalized; green: right, magenta: wrong")
    fig = _figure(groups, x[idx].cpu(), x_adv[idx].cpu(), y[idx].cpu(), sub, maps, data.class_names, title,
                  subtitle)
    save_png(fig, ctx.png, metadata={"Title": "attnguard defense-maps"}, tight=False)

    def by(mask):
        return {k: _mean(v[mask]) for k, v in iou.items()}

    clean_fooled = (pred["clean"][idx] != y[idx]).cpu()
    return {
        "attack": attack_name(o["attack"]), "eps": eps, "crafted_on": crafted_on, "target": target,
        "examples": int(len(y)), "eligible": len(where), "success": int(ok.sum()), "failure": int((~ok).sum()),
        "clean_model_fooled": int(clean_fooled.sum()),
        "iou_clean_vs_adversarial": {"kappa": "mean", "all": by(torch.ones_like(ok)), "success": by(ok),
                                     "failure": by(~ok)},
        "shown": {"success": [where[j] for j in groups["(a) successful defense"]],
                  "failure": [where[j] for j in groups["(b) failed defense"]]},
    }


STUDIES.add("defense-maps", defense_maps,
            "original | adversarial Grad-CAM under the clean and the defended model, successes and failures",
            paper="AAD Fig. 10-11", min_runs=2, max_runs=2, options=OPTIONS)
