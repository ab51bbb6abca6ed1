"""Overlap measures of the AAD attention analysis (AAD sec. 3, eq. 5-6) and AT+ALP Table 3.

All functions take plain tensors, so they can be checked on hand-made maps:

* :func:`cell_iou` -- AAD eq. 6 / Table 3: IoU of the top-k cells of two maps on an 8x8 grid.
* :func:`equal_area_mask`, :func:`box_iou` -- AAD eq. 5 / Tables 1-2: the attention area is
  thresholded per image so that it covers exactly as many pixels as the ground-truth area.
* :func:`mean_activation_in` -- AT+ALP Table 3: mean normalized activation inside key regions.
* :func:`boxes_to_mask` -- pixel masks from boxes.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..attention import mask_iou, normalize_cam, top_k_mask, upsample_cam

GridSize = Union[int, Sequence[int], None]


def to_grid(cam: torch.Tensor, grid: GridSize = 8) -> torch.Tensor:
    """Resample ``[B, h, w]`` maps to a ``grid`` (an int for square grids) by adaptive average pooling.

    AAD computes its attention IoU on the 8x8 Grad-CAM grid of InceptionV3; models whose
    attention layer has another resolution are pooled to that grid. ``grid=None`` keeps the
    model's own grid. A grid finer than the map is refused (pooling cannot invent cells).
    """
    if grid is None:
        return cam
    gh, gw = (grid, grid) if isinstance(grid, int) else tuple(grid)
    h, w = cam.shape[-2:]
    if (gh, gw) == (h, w):
        return cam
    if gh > h or gw > w:
        raise ValueError(f"cannot pool a {h}x{w} attention map to a finer {gh}x{gw} grid; use the model's grid")
    return F.adaptive_avg_pool2d(cam[:, None].float(), (gh, gw))[:, 0]


def cell_iou(cam_a: torch.Tensor, cam_b: torch.Tensor, cells: Iterable[int] = (5, 10, 20, 30),
             grid: GridSize = 8) -> Dict[int, torch.Tensor]:
    """AAD eq. 6: per-example IoU of the ``k`` highest cells of two maps, for each ``k`` in ``cells``.

    Cell counts larger than the grid are left out of the result.
    """
    a, b = to_grid(cam_a.detach(), grid), to_grid(cam_b.detach(), grid)
    n_cells = a.shape[-2] * a.shape[-1]
    return {int(k): mask_iou(top_k_mask(a, int(k)), top_k_mask(b, int(k))) for k in cells if 1 <= k <= n_cells}


def boxes_to_mask(boxes, height: int, width: int) -> torch.Tensor:
    """Boolean masks ``[B, H, W]``, each the union of an image's boxes (x0, y0, x1, y1 in pixels).

    ``boxes`` is a ``[B, 4]`` tensor (one box per image) or a list with, per image, a ``[m, 4]``
    array (``m`` may be 0). Pixel (r, c) covers [c, c+1) x [r, r+1) and belongs to a box when
    its centre does, so an integer box (2, 2, 5, 4) covers 3 x 2 = 6 pixels.
    """
    if isinstance(boxes, torch.Tensor) and boxes.dim() == 2:
        boxes = [b[None] for b in boxes]
    cx = torch.arange(width, dtype=torch.float32) + 0.5
    cy = torch.arange(height, dtype=torch.float32) + 0.5
    out = torch.zeros(len(boxes), height, width, dtype=torch.bool)
    for i, bs in enumerate(boxes):
        bs = torch.as_tensor(bs, dtype=torch.float32).reshape(-1, 4)
        for x0, y0, x1, y1 in bs.tolist():
            inside_x = (cx >= min(x0, x1)) & (cx <= max(x0, x1))
            inside_y = (cy >= min(y0, y1)) & (cy <= max(y0, y1))
            out[i] |= inside_y[:, None] & inside_x[None, :]
    return out


def equal_area_mask(cam: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """The attention area of AAD eq. 5: per image, the ``|region|`` highest pixels of ``cam``.

    ``cam`` and ``region`` are ``[B, H, W]`` (upsample the CAM to the image first). This is
    the image-specific threshold kappa that makes Att(x) exactly as large as GT(x); ties at the
    threshold are broken by position, so the area is always exact. An empty region gives an
    empty mask.
    """
    if cam.shape != region.shape:
        raise ValueError(f"cam and region differ in shape: {tuple(cam.shape)} vs {tuple(region.shape)}")
    out = torch.zeros_like(region, dtype=torch.bool)
    areas = region.flatten(1).sum(1).tolist()
    for i, k in enumerate(areas):
        if k > 0:
            out[i] = top_k_mask(cam[i : i + 1].detach(), int(k))[0]
    return out


def box_iou(cam: torch.Tensor, region: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """AAD eq. 5: IoU between the equal-area attention area and the ground-truth area, per image.

    ``cam`` ``[B, h, w]`` is upsampled (bilinear) to ``size`` or to the region's size first.
    Images with an empty region get NaN (they have no ground truth to compare with).
    """
    size = tuple(size or region.shape[-2:])
    if tuple(cam.shape[-2:]) != size:
        cam = upsample_cam(cam.detach().float(), size)
    iou = mask_iou(equal_area_mask(cam, region), region)
    empty = region.flatten(1).sum(1) == 0
    return torch.where(empty, torch.full_like(iou, float("nan")), iou)


def mean_activation_in(cam: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """AT+ALP Table 3: mean of the min-max normalized, upsampled map inside ``region``, per image.

    NaN for an empty region.
    """
    size = tuple(region.shape[-2:])
    cam = normalize_cam(cam.detach().float())
    if tuple(cam.shape[-2:]) != size:
        cam = upsample_cam(cam, size).clamp(0.0, 1.0)
    region = region.bool()
    total = (cam * region).flatten(1).sum(1)
    count = region.flatten(1).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def nanmean(values: torch.Tensor) -> Optional[float]:
    """Mean of the finite entries as a float, or None when there are none (JSON-friendly)."""
    values = values[torch.isfinite(values)]
    return float(values.mean()) if values.numel() else None
