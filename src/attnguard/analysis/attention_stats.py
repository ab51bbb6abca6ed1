"""The papers' attention analyses on tensors: AAD Tables 1-5 and AT+ALP Table 3.

Protocol (AAD sec. 3): keep the test images the model classifies correctly (I_att), attack them,
and split them into I_succeed (the attack changed the decision) and I_fail (it did not).
Attention maps are Grad-CAM (AAD eq. 1-2) of each image's predicted class -- for a clean image in
I_att that is its true class, for an adversarial image the class the attack produced -- and, in
the LIME variant (AAD sec. 3.3), the top-k LIME superpixels of the same class.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ._run import attack_all, cams, predict
from ..utils.modes import eval_mode
from .iou import box_iou, boxes_to_mask, cell_iou, mean_activation_in, nanmean, to_grid

CELLS = (5, 10, 20, 30)
LIME_FEATURES = (8, 10)


def _split_means(values: torch.Tensor, succeed: torch.Tensor) -> dict:
    return {"succeed": nanmean(values[succeed]), "fail": nanmean(values[~succeed])}


def _share(mask: torch.Tensor, within: Optional[torch.Tensor] = None) -> Optional[float]:
    within = torch.ones_like(mask) if within is None else within
    n = int(within.sum())
    return float((mask & within).sum()) / n if n else None


def flat_maps(cam: torch.Tensor) -> torch.Tensor:
    """``[B]`` True where a map has no top cells: every cell equal (all zero, typically, after the ReLU)."""
    flat = cam.flatten(1)
    return flat.amax(1) <= flat.amin(1)


def clean_vs_adv_table(cam_clean: torch.Tensor, cam_adv: torch.Tensor, succeed: torch.Tensor,
                       cells: Sequence[int] = CELLS, grid=8):
    """AAD Table 3 (eq. 6): mean top-k cell IoU of clean vs adversarial maps, I_succeed and I_fail apart.

    A flat map (every cell equal) has no highest cells: its top k are whatever ``torch.topk`` returns
    for a tie (the same cells for two flat maps, whatever the images), so such a pair's IoU measures
    the tie-break, not attention (seen: an AFM-CAM model whose maps were zero for 98% of CIFAR images
    printed IoU 1.0). Pairs with a flat map on either side are left out of ``rows`` and counted in
    ``flat_maps``; ``rows_with_flat_maps`` keeps the means over every pair for comparison.
    Returns (table, per-k IoU of every pair, a note or None).
    """
    grid_name = "model" if grid is None else (f"{grid}x{grid}" if isinstance(grid, int) else "x".join(map(str, grid)))
    per_k = cell_iou(cam_clean, cam_adv, cells, grid)
    flat_c, flat_a = flat_maps(to_grid(cam_clean, grid)), flat_maps(to_grid(cam_adv, grid))
    keep = ~(flat_c | flat_a)
    table = {"grid": grid_name, "model_grid": list(cam_clean.shape[-2:]),
             "rows": [{"cells": k, **_split_means(v[keep], succeed[keep])} for k, v in per_k.items()]}
    skipped = [k for k in cells if k not in per_k]
    if skipped:
        table["skipped_cells"] = skipped
    note = None
    left = int((~keep).sum())
    if left:
        table["flat_maps"] = {"clean": int(flat_c.sum()), "adversarial": int(flat_a.sum()), "pairs_left_out": left,
                              "succeed_left_out": int((~keep & succeed).sum()),
                              "fail_left_out": int((~keep & ~succeed).sum())}
        table["rows_with_flat_maps"] = [{"cells": k, **_split_means(v, succeed)} for k, v in per_k.items()]
        note = (f"{left} of {len(keep)} clean/adversarial pairs have a flat attention map (every cell equal: "
                f"{int(flat_c.sum())} clean, {int(flat_a.sum())} adversarial); their top cells are a tie, so they "
                "are left out of the IoU table (clean_vs_adv.rows_with_flat_maps keeps them)")
    return table, per_k, note


def box_tables(iou: torch.Tensor, succeed: torch.Tensor, confidence: torch.Tensor, threshold: float = 0.5) -> dict:
    """AAD Table 1 (share and mean IoU_Att_GT of I_succeed / I_fail) and Table 2 (images with IoU < 0.5:
    share fooled / not fooled and mean top-1 confidence of the clean image). NaN IoUs (no box) are left out."""
    has = torch.isfinite(iou)
    iou, succeed, confidence = iou[has], succeed[has], confidence[has]
    low = iou < threshold
    return {
        "n_images": int(has.sum()),
        "table1": {
            "succeed": {"percentage": _share(succeed), "iou": nanmean(iou[succeed])},
            "fail": {"percentage": _share(~succeed), "iou": nanmean(iou[~succeed])},
        },
        "table2": {
            "threshold": threshold,
            "n_images": int(low.sum()),
            "succeed": {"percentage": _share(succeed, low), "confidence": nanmean(confidence[low & succeed])},
            "fail": {"percentage": _share(~succeed, low), "confidence": nanmean(confidence[low & ~succeed])},
        },
    }


def attention_statistics(model, images: torch.Tensor, labels: torch.Tensor, attack, *,
                         boxes=None, masks: Optional[torch.Tensor] = None, layer=None, grid=8,
                         cells: Sequence[int] = CELLS, lime_examples: int = 16, lime_samples: int = 300,
                         lime_features: Sequence[int] = LIME_FEATURES, seed: int = 0, batch_size: int = 128):
    """Run the analyses; returns ``(results dict, arrays dict)`` (arrays feed the plots).

    Args:
        images, labels: test images ``[N, C, H, W]`` in [0, 1] and their classes.
        attack: ``attack(model, x, y) -> x_adv``; AAD uses StepLL (eq. 4).
        boxes: ground-truth boxes per image (``[N, 4]`` or a list of ``[m, 4]``), input pixels.
        masks: key-region / part masks ``[N, H, W]`` (AT+ALP Table 3).
        grid: grid for AAD Table 3 (8 = the paper's 8x8; None = the model's own grid).
        lime_examples: how many images of I_att get LIME maps (0 disables LIME; it is slow).
    """
    device = next(model.parameters()).device
    x_all, y_all = images.to(device).float(), labels.to(device).long()
    with eval_mode(model):
        prob = predict(model, x_all, batch_size)
        correct = prob.argmax(1) == y_all
        idx = correct.nonzero().flatten().cpu()
        x, y = x_all[idx], y_all[idx]
        conf = prob[idx].gather(1, y[:, None])[:, 0].cpu()
        x_adv = attack_all(attack, model, x, y, batch_size) if len(idx) else x
        pred_adv = predict(model, x_adv, batch_size).argmax(1) if len(idx) else y
        succeed = (pred_adv != y).cpu()
        cam_clean = cams(model, x, y, layer, batch_size).cpu() if len(idx) else None
        cam_adv = cams(model, x_adv, pred_adv, layer, batch_size).cpu() if len(idx) else None

    n_att = len(idx)
    res: dict = {
        "n_examples": int(len(images)),
        "n_correct": n_att,
        "n_succeed": int(succeed.sum()),
        "n_fail": int((~succeed).sum()),
        "cam_target": "predicted class (the true class for clean images in I_att)",
    }
    arrays: dict = {"succeed": succeed, "confidence": conf}
    if n_att == 0:
        res["notes"] = ["the model classifies none of the examples correctly; nothing to analyze"]
        return res, arrays

    notes = []
    if grid is not None:
        gh, gw = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if gh > cam_clean.shape[-2] or gw > cam_clean.shape[-1]:
            notes.append(f"the model's attention grid ({cam_clean.shape[-2]}x{cam_clean.shape[-1]}) is coarser than "
                         f"the requested {gh}x{gw}; the clean-vs-adversarial IoU uses the model's grid")
            grid = None
    res["clean_vs_adv"], per_k, note = clean_vs_adv_table(cam_clean, cam_adv, succeed, cells, grid)
    notes += [note] if note else []
    arrays["cell_iou"] = per_k

    h, w = x.shape[-2:]
    region = None
    if boxes is not None:
        sel = [boxes[i] for i in idx.tolist()]
        region = boxes_to_mask(torch.stack(sel) if isinstance(boxes, torch.Tensor) else sel, h, w)
        iou = box_iou(cam_clean, region)
        res["attention_vs_box"] = box_tables(iou, succeed, conf)
        arrays["box_iou"] = iou
    regions = {"box": region}
    if masks is not None:
        regions["mask"] = masks[idx.to(masks.device)].cpu().bool()
    activation = {}
    for name, reg in regions.items():
        if reg is None:
            continue
        act_c, act_a = mean_activation_in(cam_clean, reg), mean_activation_in(cam_adv, reg)
        activation[name] = {"clean": nanmean(act_c), "adv": nanmean(act_a),
                            "clean_by_group": _split_means(act_c, succeed), "adv_by_group": _split_means(act_a, succeed)}
    if activation:
        res["activation_in_region"] = activation

    if lime_examples > 0:
        res["lime"], arrays["lime"] = _lime_tables(model, x, x_adv, y, pred_adv, succeed, region,
                                                   int(lime_examples), lime_samples, lime_features, seed)
    if notes:
        res["notes"] = notes
    return res, arrays


def _lime_tables(model, x, x_adv, y, pred_adv, succeed, region, n, samples, features, seed):
    """AAD Table 4 (LIME top-k vs box IoU) and Table 5 (LIME clean vs adversarial IoU)."""
    from ..attention import mask_iou
    from .lime_maps import lime_maps

    n = min(n, len(x))
    with eval_mode(model):
        clean = lime_maps(model, x[:n], y[:n], features, num_samples=samples, seed=seed)
        adv = lime_maps(model, x_adv[:n], pred_adv[:n], features, num_samples=samples, seed=seed)
    s = succeed[:n]
    table4, table5 = [], []
    arrays = {"clean": clean, "adv": adv}
    for k in sorted(clean.masks):
        between = mask_iou(clean.masks[k], adv.masks[k])
        table5.append({"features": k, **_split_means(between, s)})
        if region is not None:
            reg = region[:n]
            with_box = reg.flatten(1).any(1)
            gt = mask_iou(clean.masks[k], reg)
            gt = torch.where(with_box, gt, torch.full_like(gt, float("nan")))
            table4.append({"features": k, **_split_means(gt, s)})
    out = {"n_images": n, "n_succeed": int(s.sum()), "n_fail": int((~s).sum()), "num_samples": samples,
           "segments_mean": sum(clean.n_segments) / max(1, n), "table5": table5}
    if region is not None:
        out["table4"] = table4
    return out, arrays
