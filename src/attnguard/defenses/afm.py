"""Adversarial feature matching (Li, Feng et al. 2020, "Towards Adversarial Robustness via Feature Matching").

* eq. 3: ``phi = ReLU(sum_k GAP(d y_c / d A^k) A^k)``, the true-class CAM of the penultimate conv
  layer, unnormalized (the paper drops CAM's [0, 1] scaling on purpose) and differentiable.
* eq. 4: ``D = ||phi(x) - phi(x_adv)||_2^2 / (C H W)``, C x H x W the shape of that layer's feature map.
* eq. 6: adds ``lambda1 * D + lambda2 * L_norm``, ``L_norm = ||phi(x)||_2 + ||phi(x_adv)||_2``, to the
  ALP loss (eq. 2).
"""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from .base import Regularizer


def feature_distance(phi_clean: torch.Tensor, phi_adv: torch.Tensor, feature_size: int) -> torch.Tensor:
    """AFM eq. 4: ``mean_b ||phi(x) - phi(x_adv)||_2^2 / feature_size`` (feature_size = C * H * W)."""
    return (phi_clean - phi_adv).pow(2).flatten(1).sum(1).mean() / feature_size


def norm_decay(phi_clean: torch.Tensor, phi_adv: torch.Tensor) -> torch.Tensor:
    """AFM eq. 6 ``L_norm``: ``mean_b (||phi(x)||_2 + ||phi(x_adv)||_2)``."""
    return (phi_clean.flatten(1).norm(dim=1) + phi_adv.flatten(1).norm(dim=1)).mean()


class AFM(Regularizer):
    """``afm_lambda1 * D + afm_lambda2 * L_norm`` (AFM eq. 6; lambda1 = 10 in the paper, lambda2 = 0.01 ours).

    Parts: ``afm`` (D) and ``afm_norm`` (L_norm), unweighted.
    """

    name = "afm"

    def layers(self, model: nn.Module) -> List[str]:
        return [model.attention_layer]

    def __call__(self, ctx) -> Dict[str, torch.Tensor]:
        cfg = self.defense
        if cfg.afm_lambda1 <= 0 and cfg.afm_lambda2 <= 0:
            return {}
        phi_clean, phi_adv = ctx.cam()
        out: Dict[str, torch.Tensor] = {}
        if cfg.afm_lambda1 > 0:
            c, h, w = ctx.activations(ctx.net.attention_layer)[0].shape[1:]
            d = feature_distance(phi_clean, phi_adv, c * h * w)
            ctx.report("afm", d)
            out["afm"] = cfg.afm_lambda1 * d
        if cfg.afm_lambda2 > 0:
            n = norm_decay(phi_clean, phi_adv)
            ctx.report("afm_norm", n)
            out["afm_norm"] = cfg.afm_lambda2 * n
        return out
