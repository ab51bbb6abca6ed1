"""Clean vs adversarial Grad-CAM galleries (AAD Fig. 1 and Fig. 7).

One row per image: clean image | its Grad-CAM overlay | adversarial image | its Grad-CAM overlay.
Grad-CAM (AAD eq. 1-2, :func:`attnguard.attention.grad_cam`) explains each panel's *predicted*
class, min-max normalized per image and upsampled (bilinear) to the image for display.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..attention import normalize_cam, upsample_cam
from ._figures import CAM_CMAP, new_figure, save_png
from ..errors import ConfigError
from ..io import atomic_write_text
from ..rundir import RunDir, first_examples, parse_eps
from ._run import attack_all, attack_name, cams, class_name, load_test_data, make_attack, predict
from ..utils.modes import eval_mode

COLUMNS = ("clean", "Grad-CAM (clean)", "adversarial", "Grad-CAM (adversarial)")
# inches: panel width, row height (title + image), space for the headers and the caption
PANEL_W, ROW_H, TITLE_H, FOOTER_H, DPI = 2.0, 2.3, 0.42, 0.55, 100
OK_COLOR, BAD_COLOR = "#1b7837", "#c51b7d"


def _display(img: torch.Tensor) -> np.ndarray:
    arr = img.detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[2] == 1 else arr


def _panel(ax, img: np.ndarray, cam: Optional[np.ndarray], title: str, color: str):
    gray = img.ndim == 2
    ax.imshow(img, cmap="gray" if gray else None, vmin=0, vmax=1, interpolation="nearest")
    if cam is not None:
        ax.imshow(cam, cmap=CAM_CMAP, vmin=0, vmax=1, alpha=0.5, interpolation="bilinear")
    ax.set_title(title, fontsize=8, color=color, linespacing=1.2, pad=3)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def gallery_figure(model, images: torch.Tensor, labels: torch.Tensor, attack, class_names: Optional[Sequence[str]] = None,
                   *, layer=None, attack_label: str = "attack", title: Optional[str] = None,
                   x_adv: Optional[torch.Tensor] = None):
    """Build the gallery figure; returns ``(figure, info)`` where ``info`` has predictions and confidences.

    Args:
        model: classifier on [0, 1] inputs (evaluated in eval mode; its mode is restored).
        images: ``[N, C, H, W]`` in [0, 1], grayscale (C = 1) or RGB (C = 3).
        labels: true classes ``[N]``.
        attack: ``attack(model, x, y) -> x_adv`` (e.g. ``attnguard.attacks.PGD``).
        class_names: names for the class indices (default: the indices).
        layer: Grad-CAM layer (default: the model's attention layer).
        attack_label: shown in the column header, e.g. "PGD-20, eps=0.3".
        x_adv: adversarial images already made for ``images`` (e.g. by :func:`find_fooled`): shown
            as they are, instead of attacking again (a random-start attack run twice may differ).
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"gallery images must be [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    n = images.shape[0]
    if n < 1:
        raise ValueError("gallery needs at least one image")
    names = list(class_names) if class_names is not None else [str(i) for i in range(1000)]
    device = next(model.parameters()).device
    x, y = images.to(device).float(), labels.to(device).long()
    with eval_mode(model):
        x_adv = attack_all(attack, model, x, y) if x_adv is None else x_adv.to(device).float()
        p_clean, p_adv = predict(model, x), predict(model, x_adv)
        pred_clean, pred_adv = p_clean.argmax(1), p_adv.argmax(1)
        size = x.shape[-2:]
        cam_clean = upsample_cam(normalize_cam(cams(model, x, pred_clean, layer)), size).clamp(0, 1).cpu().numpy()
        cam_adv = upsample_cam(normalize_cam(cams(model, x_adv, pred_adv, layer)), size).clamp(0, 1).cpu().numpy()

    header_h = 0.75 + (0.3 if title else 0.0)
    height = header_h + n * ROW_H + FOOTER_H
    fig = new_figure(4 * PANEL_W + 0.3, height, dpi=DPI)
    # the first row's panel titles sit above the grid, inside the header band
    grid = fig.add_gridspec(n, 4, left=0.02, right=0.98, top=1 - (header_h + TITLE_H) / height,
                            bottom=FOOTER_H / height, wspace=0.08, hspace=TITLE_H / (ROW_H - TITLE_H) + 0.04)
    top = 1 - 0.12 / height
    if title:
        fig.text(0.5, top, title, ha="center", va="top", fontsize=11.5, fontweight="bold")
        top -= 0.3 / height
    fig.text(0.5, top, f"attack: {attack_label}", ha="center", va="top", fontsize=9, color="#555555")
    for col, text in enumerate(COLUMNS):
        fig.text(0.02 + (col + 0.5) * 0.96 / 4, 1 - (header_h - 0.12) / height, text, ha="center", va="top",
                 fontsize=9.5, fontweight="bold", color="#333333")
    info = {"true": [], "pred_clean": [], "conf_clean": [], "pred_adv": [], "conf_adv": []}
    for i in range(n):
        t, pc, pa = int(y[i]), int(pred_clean[i]), int(pred_adv[i])
        cc, ca = float(p_clean[i, pc]), float(p_adv[i, pa])
        for key, val in zip(info, (t, pc, cc, pa, ca)):
            info[key].append(val)
        clean_t = f"true: {class_name(names, t)}\npred: {class_name(names, pc)} ({cc:.0%})"
        adv_t = f"true: {class_name(names, t)}\npred: {class_name(names, pa)} ({ca:.0%})"
        col_c, col_a = OK_COLOR if pc == t else BAD_COLOR, OK_COLOR if pa == t else BAD_COLOR
        img_c, img_a = _display(x[i]), _display(x_adv[i])
        _panel(fig.add_subplot(grid[i, 0]), img_c, None, clean_t, col_c)
        _panel(fig.add_subplot(grid[i, 1]), img_c, cam_clean[i], clean_t, col_c)
        _panel(fig.add_subplot(grid[i, 2]), img_a, None, adv_t, col_a)
        _panel(fig.add_subplot(grid[i, 3]), img_a, cam_adv[i], adv_t, col_a)
    caption = ("Grad-CAM explains each panel's predicted class; maps are min-max normalized per image\n"
               f"({CAM_CMAP} colormap: blue = low, red = high). Titles: green = correct, magenta = wrong prediction.")
    fig.text(0.5, 0.1 / height, caption, ha="center", va="bottom", fontsize=7.5, color="#555555", linespacing=1.4)
    return fig, info


def save_gallery(model, images, labels, attack, class_names=None, out="gallery.png", **kwargs) -> Path:
    """Write the gallery of :func:`gallery_figure` as a PNG and return its path."""
    fig, info = gallery_figure(model, images, labels, attack, class_names, **kwargs)
    meta = {"Title": "attnguard gallery", "Description": f"rows={len(info['true'])}"}
    return save_png(fig, out, metadata=meta, tight=False)


def find_fooled(model, attack, split, n: int, batch_size: int = 128):
    """The first ``n`` examples of a data split that ``attack`` fools, scanning the split in order.

    Fooled: classified correctly clean and wrongly after the attack. Returns ``(indices, images,
    labels, x_adv, scanned)``: split indices (a list, maybe shorter than ``n`` when the split runs
    out), their clean images, labels and adversarial images, and how many examples were scanned.
    """
    device = next(model.parameters()).device
    total = len(split.labels)
    idx, xs, ys, advs, scanned = [], [], [], [], 0
    chunk = min(batch_size, max(2 * int(n), 32))  # small galleries of a strong attack stop after one chunk
    with eval_mode(model):
        while scanned < total and len(idx) < n:
            x, y = first_examples(split, chunk, start=scanned)
            x, y = x.to(device), y.to(device)
            adv = attack_all(attack, model, x, y)
            fooled = (predict(model, x).argmax(1) == y) & (predict(model, adv).argmax(1) != y)
            keep = fooled.nonzero().flatten()[: n - len(idx)].cpu()
            idx += (keep + scanned).tolist()
            xs.append(x.cpu()[keep])
            ys.append(y.cpu()[keep])
            advs.append(adv.cpu()[keep])
            scanned += len(y)
    if not xs:  # an empty split
        return [], None, None, None, 0
    return idx, torch.cat(xs), torch.cat(ys), torch.cat(advs), scanned


def explain(run, attack: str = "pgd-20", n: int = 16, out="gallery.png", eps=None, device="cpu", *,
            only_fooled: bool = False) -> Path:
    """Gallery of the first ``n`` test images of a run directory, attacked with ``attack`` at ``eps``.

    ``run`` is a run directory or a :class:`~attnguard.rundir.RunDir`; the model is the checkpoint its
    config's ``eval.checkpoint`` names (default best). ``eps`` defaults to the run's ``eval.eps``, else
    its training radius (``adversary.eps``); it is range-checked as ``attnguard eval`` does. With
    ``only_fooled``, the rows are the first ``n`` test images the attack fooled (clean correct,
    adversarial wrong; fewer if the split has fewer). Writes the PNG and, beside it, a ``.json`` with
    the test-split indices shown and their predictions. Returns the PNG path.
    """
    from ..evaluation.blocks import check_eps

    run = RunDir.of(run)
    if int(n) < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    eps = check_eps(run.eps if eps is None else parse_eps(eps))
    model = run.model(device)
    atk = make_attack(attack, eps, seed=run.seed, num_classes=model.num_classes, device=device)
    x_adv = None
    if only_fooled:
        ds = run.load_dataset()  # scanned in chunks: the whole split as floats could be large
        names = getattr(ds.info, "class_names", None) or [str(i) for i in range(ds.info.num_classes)]
        indices, images, labels, x_adv, scanned = find_fooled(model, atk, ds.test, int(n))
        if not indices:
            raise ConfigError(f"{attack_name(attack)} at eps {eps:.4g} fooled none of the {scanned} test examples; "
                              "there is nothing to show with --only-fooled")
    else:
        data = load_test_data(run, n)
        names, images, labels, scanned = data.class_names, data.images, data.labels, len(data.labels)
        indices = list(range(len(labels)))
    label = f"{attack_name(attack).upper()}, ε={eps:.4g}" + (", fooled examples only" if only_fooled else "")
    title = f"{run.name} · {getattr(model, 'arch', type(model).__name__)}"
    fig, info = gallery_figure(model, images, labels, atk, names, attack_label=label, title=title,
                               x_adv=x_adv)
    path = save_png(fig, out, metadata={"Title": "attnguard gallery", "Description": f"rows={len(indices)}"},
                    tight=False)
    record = {"run": str(run), "attack": attack_name(attack), "eps": eps, "only_fooled": only_fooled,
              "requested": int(n), "shown": len(indices), "scanned": scanned, "indices": indices, **info}
    atomic_write_text(path.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    return path
