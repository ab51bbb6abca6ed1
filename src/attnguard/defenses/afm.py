"""Adversarial feature matching (Li, Feng et al. 2020, "Towards Adversarial Robustness via Feature Matching").

* eq. 3: ``phi = ReLU(sum_k GAP(d y_c / d A^k) A^k)``, the true-class CAM of the penultimate conv
  layer, unnormalized (the paper drops CAM's [0, 1] scaling on purpose) and differentiable.
* eq. 4: ``D = ||phi(x) - phi(x_adv)||_2^2 / (C H W)``, C x H x W the shape of that layer's feature map.
* eq. 6: adds ``lambda1 * D + lambda2 * L_norm``, ``L_norm = ||phi(x)||_2 + ||phi(x_adv)||_2``, to the
  ALP loss (eq. 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import nn

from .base import Regularizer
from .params import check_weight


def feature_distance(phi_clean: torch.Tensor, phi_adv: torch.Tensor, feature_size: int) -> torch.Tensor:
    """AFM eq. 4: ``mean_b ||phi(x) - phi(x_adv)||_2^2 / feature_size`` (feature_size = C * H * W)."""
    return (phi_clean - phi_adv).pow(2).flatten(1).sum(1).mean() / feature_size


def norm_decay(phi_clean: torch.Tensor, phi_adv: torch.Tensor) -> torch.Tensor:
    """AFM eq. 6 ``L_norm``: ``mean_b (||phi(x)||_2 + ||phi(x_adv)||_2)``."""
    return (phi_clean.flatten(1).norm(dim=1) + phi_adv.flatten(1).norm(dim=1)).mean()


@dataclass
class AFMParams:
    """The ``defense.afm`` section.

    Attributes:
        lambda1: weight of the CAM feature distance D (AFM eq. 6; the paper uses 10).
        lambda2: weight of the norm decay (AFM eq. 6; no value in the paper, 0.01 is ours).
    """

    lambda1: float = 10.0
    lambda2: float = 0.01

    def __post_init__(self):
        self.lambda1 = check_weight("defense.afm.lambda1", self.lambda1)
        self.lambda2 = check_weight("defense.afm.lambda2", self.lambda2)


class AFM(Regularizer):
    """``lambda1 * D + lambda2 * L_norm`` (AFM eq. 6; lambda1 = 10 in the paper, lambda2 = 0.01 ours).

    Parts: ``afm`` (D) and ``afm_norm`` (L_norm), unweighted. AFM eq. 6 adds these terms to the
    ALP loss (eq. 2), so ``afm`` alone means ``alp+afm``.
    """

    name = "afm"
    Params = AFMParams
    default_base = "alp"

    def layers(self, inner: nn.Module) -> List[str]:
        return [inner.attention_layer]

    def __call__(self, ctx) -> Dict[str, torch.Tensor]:
        cfg = self.params
        if cfg.lambda1 <= 0 and cfg.lambda2 <= 0:
            return {}
        phi_clean, phi_adv = ctx.cam()
        out: Dict[str, torch.Tensor] = {}
        if cfg.lambda1 > 0:
            c, h, w = ctx.activations(ctx.inner.attention_layer)[0].shape[1:]
            d = feature_distance(phi_clean, phi_adv, c * h * w)
            ctx.report("afm", d)
            out["afm"] = cfg.lambda1 * d
        if cfg.lambda2 > 0:
            n = norm_decay(phi_clean, phi_adv)
            ctx.report("afm_norm", n)
            out["afm_norm"] = cfg.lambda2 * n
        return out
