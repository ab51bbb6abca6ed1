"""Attention areas (AAD eq. 3) and their overlap (AAD eq. 5-6)."""

from __future__ import annotations

from typing import Union

import torch

from .gradcam import normalize_cam

Kappa = Union[str, float]


def attention_area(cam: torch.Tensor, kappa: Kappa = "mean", top_k: int | None = None) -> torch.Tensor:
    """Binary attention area ``Att(x) = g(x) >= kappa`` of ``[B, h, w]`` maps (AAD eq. 3).

    Args:
        cam: attention maps ``[B, h, w]``, unnormalized.
        kappa: ``"mean"`` (each map's own mean, the paper's default, footnote 3 (b)), or a fixed
            threshold in [0, 1] (footnote 3 (a)) applied to the min-max normalized map.
        top_k: instead of a threshold, keep the ``top_k`` highest cells of each map (AAD sec. 3.2).

    Why normalize for a fixed kappa: unnormalized Grad-CAM values depend on the model and the
    layer (about 0.01 at the peak on the MNIST LeNet), so a fixed number compared with them
    selects nothing or everything. On the [0, 1] map, kappa = 0.5 means "at least half the
    map's peak above its minimum" for every model. The mean threshold is scale-free already
    (``g >= mean(g)`` is unchanged by any positive scaling and shift) and stays on the raw map.

    The result is a boolean tensor with no gradient: the AAD rectification mask is a constant.
    """
    if cam.dim() != 3:
        raise ValueError(f"attention maps must be [B, h, w], got shape {tuple(cam.shape)}")
    cam = cam.detach().float()  # a bf16 mean (autocast) would shift the threshold
    if top_k is not None:
        return top_k_mask(cam, top_k)
    if isinstance(kappa, str):
        if kappa != "mean":
            raise ValueError(f"kappa must be 'mean' or a number, got {kappa!r}")
        thr = cam.flatten(1).mean(1).view(-1, 1, 1)
    else:
        return normalize_cam(cam) >= float(kappa)  # a Python scalar: no host-to-device copy per call
    return cam >= thr


def top_k_mask(cam: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` highest cells of each ``[h, w]`` map (ties: as ``torch.topk`` breaks them,
    which is implementation-defined; a flat map has no meaningful top cells, see ``analysis.flat_maps``)."""
    b, h, w = cam.shape
    if not 1 <= k <= h * w:
        raise ValueError(f"top_k must be in [1, {h * w}] for {h}x{w} maps, got {k}")
    idx = cam.detach().flatten(1).topk(k, dim=1).indices
    mask = torch.zeros(b, h * w, dtype=torch.bool, device=cam.device)
    mask.scatter_(1, idx, True)
    return mask.view(b, h, w)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example IoU ``|a & b| / |a | b|`` of two boolean masks ``[B, h, w]`` (AAD eq. 5-6).

    Two empty masks have IoU 1 (they agree).
    """
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.flatten(1).bool(), b.flatten(1).bool()
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
