"""What the attention-map studies share: a labelled grid of map panels, map display, the overlap measure
and option checks. The panels are the galleries' (analysis/gallery.py), the figure plumbing is
analysis/_figures.py, the overlap is AAD eq. 6 (analysis/iou.py: cell_iou)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..analysis._figures import CAM_CMAP, new_figure, save_png
from ..analysis.gallery import BAD_COLOR, OK_COLOR, _display, _panel
from ..analysis.iou import cell_iou
from ..attention import normalize_cam, upsample_cam
from ..errors import ConfigError

# inches: panel width, row height (panel title + image), left band for the row labels
PANEL_W, ROW_H, TITLE_H, LABEL_W, DPI = 1.3, 1.55, 0.3, 1.45, 100
CAPTION = (f"Grad-CAM of the predicted class (AAD eq. 1-2), min-max normalized per panel ({CAM_CMAP}: blue = low, "
           "red = high). Panel titles: prediction (confidence); green = correct, magenta = wrong.")


def int_option(ctx, key: str, lo: int = 1) -> int:
    value = ctx.options[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < lo:
        raise ConfigError(f"study '{ctx.name}': option {key} must be a whole number >= {lo}, got {value!r}")
    return int(value)


def names_option(ctx, key: str) -> List[str]:
    """A list option given as a list or as one comma-separated string."""
    value = ctx.options[key]
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    items = [str(v).strip() for v in items or [] if str(v).strip()]
    if not items:
        raise ConfigError(f"study '{ctx.name}': option {key} must name at least one item, got {value!r}")
    return items


def eps_option(ctx, default: float) -> float:
    from ..rundir import parse_eps

    value = ctx.options.get("eps")
    return float(default) if value is None else parse_eps(value)


def device_of(ctx) -> torch.device:
    from ..utils.runtime import pick_device

    return pick_device(ctx.device)


def display_maps(cams, size) -> np.ndarray:
    """``[N, h, w]`` maps -> ``[N, H, W]`` numpy in [0, 1]: min-max normalized, upsampled to the image."""
    cams = torch.as_tensor(np.asarray(cams) if not torch.is_tensor(cams) else cams).detach().float().cpu()
    return upsample_cam(normalize_cam(cams), tuple(size)).clamp(0, 1).numpy()


def display_images(images: torch.Tensor) -> List[np.ndarray]:
    return [_display(img) for img in images.detach().cpu()]


def attention_iou(cam_a, cam_b, cells: int = 10) -> torch.Tensor:
    """Per-example IoU of the top-``cells`` cells of two maps (AAD eq. 6) on AAD's 8x8 grid.

    Maps coarser than 8x8 (a ResNet-50's 7x7) are compared on their own grid; ``cells`` is capped at
    the grid's cell count.
    """
    a, b = (torch.as_tensor(np.asarray(c)).float() if not torch.is_tensor(c) else c.float() for c in (cam_a, cam_b))
    grid = 8 if min(a.shape[-2:]) >= 8 else None
    n_cells = 64 if grid else a.shape[-2] * a.shape[-1]
    k = min(int(cells), n_cells)
    return cell_iou(a, b, cells=(k,), grid=grid)[k]


def cell(img: Optional[np.ndarray], cam: Optional[np.ndarray], text: str = "", correct: Optional[bool] = None) -> dict:
    color = "#333333" if correct is None else OK_COLOR if correct else BAD_COLOR
    return {"img": img, "cam": cam, "text": text, "color": color}


def pred_text(pred: int, conf: float, names: Sequence[str]) -> str:
    label = names[pred] if 0 <= pred < len(names) else str(pred)
    return f"{label} ({conf:.0%})"


def panel_grid(cells: Sequence[Sequence[Optional[dict]]], row_labels: Sequence[str], col_labels: Sequence[str], *,
               title: str, subtitle: str = "", caption: str = CAPTION, out, groups=None) -> Path:
    """A grid of image/map panels with row labels on the left and column labels on top; writes a PNG.

    ``cells[r][c]`` is a :func:`cell` dict or None (an empty slot). ``groups``: optional
    ``[(first_col, last_col, text)]`` headers above the column labels (e.g. one per model).
    """
    n_rows, n_cols = len(cells), max(len(r) for r in cells)
    lines = lambda texts: max([t.count("\n") + 1 for t in texts] or [0])  # noqa: E731
    # the header, top-down in inches: title, subtitle, group headers, column labels, then the panel titles
    sub_top = 0.45
    group_top = sub_top + (0.2 * lines([subtitle]) + 0.12 if subtitle else 0.0)
    label_top = group_top + (0.18 * lines([g[2] for g in groups]) + 0.1 if groups else 0.0)
    header_h = label_top + 0.17 * lines(list(col_labels)) + 0.08
    footer_h = 0.2 + 0.16 * (caption.count("\n") + 1)
    width = LABEL_W + n_cols * PANEL_W + 0.2
    height = header_h + n_rows * ROW_H + footer_h
    fig = new_figure(width, height, dpi=DPI)
    grid = fig.add_gridspec(n_rows, n_cols, left=LABEL_W / width, right=1 - 0.2 / width,
                            top=1 - (header_h + TITLE_H) / height, bottom=footer_h / height, wspace=0.06,
                            hspace=TITLE_H / (ROW_H - TITLE_H) + 0.05)
    at = lambda inches: 1 - inches / height  # noqa: E731
    fig.text(0.5, at(0.1), title, ha="center", va="top", fontsize=11.5, fontweight="bold")
    if subtitle:
        fig.text(0.5, at(sub_top), subtitle, ha="center", va="top", fontsize=9, color="#444444", linespacing=1.3)
    boxes = {}
    for r in range(n_rows):
        for c in range(n_cols):
            ax = fig.add_subplot(grid[r, c])
            boxes[r, c] = ax.get_position()
            spec = cells[r][c] if c < len(cells[r]) else None
            if spec is None:
                ax.axis("off")
                continue
            img = spec["img"] if spec["img"] is not None else np.full_like(spec["cam"], 0.5)
            _panel(ax, img, spec["cam"], spec["text"], spec["color"])
        box = boxes[r, 0]
        fig.text(box.x0 - 0.08 / width, (box.y0 + box.y1) / 2, row_labels[r], ha="right", va="center", fontsize=8,
                 color="#222222", linespacing=1.25)
    for c, text in enumerate(col_labels[:n_cols]):
        b = boxes[0, c]
        fig.text((b.x0 + b.x1) / 2, at(label_top), text, ha="center", va="top", fontsize=8.5, fontweight="bold",
                 color="#333333", linespacing=1.2)
    for first, last, text in groups or []:
        x = (boxes[0, first].x0 + boxes[0, last].x1) / 2
        fig.text(x, at(group_top), text, ha="center", va="top", fontsize=9, fontweight="bold", color="#1f3b73",
                 linespacing=1.2)
    fig.text(0.5, 0.08 / height, caption, ha="center", va="bottom", fontsize=7.5, color="#555555", linespacing=1.4)
    return save_png(fig, out, metadata={"Title": title}, tight=True)
