"""``group-maps`` (AT+ALP Fig. 4): the activation attention of each layer group, clean next to adversarial.

AT+ALP Fig. 4 shows, for a ResNet-101 under each defense, the activation attention maps (Zagoruyko &
Komodakis 2017) of its four groups of residual blocks (conv2_x to conv5_x, "group-0" to "group-3"):
group-0 holds low-level features, group-3 high-level ones. The map of a group with activation
``A [C, h, w]`` is ``F(A) = sum_c |A_c|^2``, the map AT+ALP eq. 4 pairs. Here the groups are the
model's ``group_layers`` (a ResNet's stages; LeNet's two conv blocks), so any attnguard model works.

``attnguard study group-maps RUN [RUN ...]``: one block of rows per run (defense), one row per
example: the clean image, then per group its map on the clean image next to its map on the
adversarial image (``attack``, default PGD-20, white-box against that run, at the first run's eps
unless ``eps`` is given). Maps are min-max normalized per panel for display.

The numbers, per run and group, over the first ``n_stats`` test examples (the shown ``n`` are the
first of them): the mean clean-vs-adversarial distance of AT+ALP eq. 4 with p = 2, i.e.
``|| Q_adv / ||Q_adv||_2 - Q_o / ||Q_o||_2 ||_2`` per example (0 = the same map, at most sqrt 2),
the quantity the at+alp pairing trains down; and the mean IoU of the top ``top`` share of the
cells of the two maps on the group's own grid (AAD eq. 6 with k = ceil(top * h * w)).
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch

from ..analysis._run import attack_all, attack_name, batched, load_test_data, make_attack
from ..attention import mask_iou, top_k_mask
from ..attention.activation import attention_map, attention_vector
from ..attention.hooks import forward_with_activations
from ..errors import ConfigError
from ..utils.modes import eval_mode
from ._maps import cell, device_of, display_images, display_maps, eps_option, int_option, panel_grid, pred_text
from ._runs import run_label, runs_on_one_dataset
from .registry import STUDIES

OPTIONS = {"n": 4, "n_stats": 100, "attack": "pgd-20", "eps": None, "top": 0.2}
POWER = 2.0  # AT+ALP eq. 4 / Zagoruyko & Komodakis: sum_c |A_c|^2


def group_attention(model, x: torch.Tensor, power: float = POWER,
                    batch_size: int = 128) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """``(softmax [N, K], [F(A_j) of each group layer j: [N, h_j, w_j]])`` on the CPU, in eval mode, no graph."""
    layers = list(getattr(model, "group_layers", None) or [])
    if not layers:
        raise ConfigError(f"{type(model).__name__} declares no group layers (model.group_layers); the "
                          "activation attention of AT+ALP eq. 4 is read there")
    probs, maps = [], [[] for _ in layers]
    with eval_mode(model), torch.no_grad():
        for s in batched(len(x), batch_size):
            logits, acts = forward_with_activations(model, x[s], layers)
            probs.append(torch.softmax(logits.float(), 1).cpu())
            for j, a in enumerate(acts):
                maps[j].append(attention_map(a.float(), power).cpu())
    return torch.cat(probs), [torch.cat(m) for m in maps]


def clean_and_adversarial_groups(run, attack: str, eps: float, x: torch.Tensor, y: torch.Tensor, device):
    """``(model, x_adv, group_attention(x), group_attention(x_adv))`` of one run, ``x_adv`` crafted on it in
    eval mode with the run's seed (the per-group maps of AT+ALP Fig. 4 and Table 3)."""
    model = run.model(device)
    atk = make_attack(attack, eps, seed=run.seed, num_classes=model.num_classes, device=device)
    with eval_mode(model):
        x_adv = attack_all(atk, model, x, y)
    return model, x_adv, group_attention(model, x), group_attention(model, x_adv)


def pairing_distance(map_clean: torch.Tensor, map_adv: torch.Tensor) -> torch.Tensor:
    """Per-example AT+ALP eq. 4 term (p = 2) between two ``[N, h, w]`` maps F(A): the L2 distance of the
    L2-normalized vectorized maps."""
    # attention_vector wants [B, C, h, w]; a map is the C = 1, power = 1 case of itself
    v_c, v_a = attention_vector(map_clean[:, None], 1.0), attention_vector(map_adv[:, None], 1.0)
    return torch.linalg.vector_norm(v_a - v_c, ord=2, dim=1)


def top_share_iou(map_clean: torch.Tensor, map_adv: torch.Tensor, top: float) -> Tuple[torch.Tensor, int]:
    """Per-example IoU of the top ``top`` share of the cells (at least one) of two maps; returns (IoU, k)."""
    h, w = map_clean.shape[-2:]
    k = max(1, min(h * w, math.ceil(top * h * w)))
    return mask_iou(top_k_mask(map_clean, k), top_k_mask(map_adv, k)), k


def _top(ctx) -> float:
    top = ctx.options["top"]
    if isinstance(top, bool) or not isinstance(top, (int, float)) or not 0 < top <= 1:
        raise ConfigError(f"study '{ctx.name}': option top must be a share in (0, 1], got {top!r}")
    return float(top)


def group_maps(ctx) -> dict:
    runs = runs_on_one_dataset(ctx)
    n, n_stats, top = int_option(ctx, "n"), int_option(ctx, "n_stats"), _top(ctx)
    attack = str(ctx.options["attack"]).strip().lower()
    eps = eps_option(ctx, runs[0].eps)
    device = device_of(ctx)
    data = load_test_data(runs[0], max(n, n_stats))
    names = data.class_names
    x, y = data.images.to(device), data.labels.to(device)
    n, n_stats = min(n, len(y)), len(y)
    size = x.shape[-2:]
    pics = display_images(x[:n])

    per_run, blocks = [], []
    for run in runs:
        model, x_adv, (p_clean, m_clean), (p_adv, m_adv) = clean_and_adversarial_groups(run, attack, eps, x, y, device)
        y_cpu = y.cpu()
        groups = []
        for j, layer in enumerate(model.group_layers):
            iou, k = top_share_iou(m_clean[j], m_adv[j], top)
            groups.append({"group": j, "layer": layer, "grid": list(m_clean[j].shape[-2:]), "top_cells": k,
                           "distance": round(float(pairing_distance(m_clean[j], m_adv[j]).mean()), 4),
                           "iou_top": round(float(iou.mean()), 4)})
        per_run.append({"run": str(run), "label": run_label(run), "defense": run.get("defense.preset"),
                        "acc_clean": round(float((p_clean.argmax(1) == y_cpu).float().mean()), 4),
                        "acc_adv": round(float((p_adv.argmax(1) == y_cpu).float().mean()), 4), "groups": groups})
        shown = [(display_maps(c[:n], size), display_maps(a[:n], size)) for c, a in zip(m_clean, m_adv)]
        blocks.append({"adv_pics": display_images(x_adv[:n]), "p": (p_clean[:n], p_adv[:n]), "maps": shown})

    n_groups = max(len(r["groups"]) for r in per_run)
    rows, labels = [], []
    for rec, block in zip(per_run, blocks):
        (c_conf, c_pred), (a_conf, a_pred) = block["p"][0].max(1), block["p"][1].max(1)
        for i in range(n):
            true = int(y[i])
            row = [cell(pics[i], None, f"true: {names[true]}")]
            for c_map, a_map in block["maps"]:
                row.append(cell(pics[i], c_map[i], pred_text(int(c_pred[i]), float(c_conf[i]), names),
                                int(c_pred[i]) == true))
                row.append(cell(block["adv_pics"][i], a_map[i], pred_text(int(a_pred[i]), float(a_conf[i]), names),
                                int(a_pred[i]) == true))
            rows.append(row)
            head = rec["label"].replace(" (", "\n(") + "\n" if i == 0 else ""
            dist = " ".join(f"{g['distance']:.2f}" for g in rec["groups"])
            labels.append(f"{head}test #{i}" + (f"\nmean d: {dist}" if i == 0 else ""))
    col_labels = ["image"] + ["clean", "adversarial"] * n_groups
    groups = [(1 + 2 * j, 2 + 2 * j, f"group-{j}") for j in range(n_groups)]
    layers = "; ".join(f"{r['label']}: " + ", ".join(f"{g['layer']} {g['grid'][0]}x{g['grid'][1]}" for g in r["groups"])
                       for r in per_run)
    panel_grid(rows, labels, col_labels, out=ctx.png, groups=groups,
               title="Activation attention per layer group, clean vs adversarial (AT+ALP Fig. 4)",
               subtitle=f"attack: {attack_name(attack)}, ε={eps:.3g}, white-box against each model · n={n} shown, "
                        f"numbers over n={n_stats} test examples of {runs[0].dataset}",
               caption=f"Each map: F(A) = Σ_c |A_c|² of the group's output (AT+ALP eq. 4), min-max normalized per "
                       f"panel (jet: blue = low, red = high), over the clean or the adversarial image.\nTitles: "
                       f"prediction (confidence); green = correct, magenta = wrong. 'mean d': per group, the mean "
                       f"AT+ALP eq. 4 distance (p = 2) of the clean and adversarial maps.\nGroups: {layers}")
    return {"attack": attack_name(attack), "eps": eps, "n_shown": n, "n": n_stats, "top": top,
            "distance": "AT+ALP eq. 4 with p = 2 per example: ||Q_adv/||Q_adv||_2 - Q_o/||Q_o||_2||_2, "
                        "Q = vec(sum_c |A_c|^2); 0 = the same map, at most sqrt(2)",
            "iou": "IoU of the top ceil(top * h * w) cells of the clean and adversarial map, the group's own grid",
            "runs": per_run}


STUDIES.add("group-maps", group_maps,
            "activation attention of each layer group, clean next to adversarial, one block of rows per run "
            "(eq. 4 distance, top-cell IoU)", paper="AT+ALP Fig. 4", min_runs=1, max_runs=6, options=OPTIONS)
