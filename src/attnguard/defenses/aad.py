"""Attention rectification and preservation (Wu, Sang et al. 2022, "Attention, Please!", AAD sec. 4.1-4.2).

* eq. 7:  ``x^m = x * (1 - Att(x))``, ``Att(x) = g(x) >= kappa`` (eq. 3), a constant mask; a numeric
  kappa applies to the min-max normalized map, ``"mean"`` to the map's own mean (footnote 3).
* eq. 8:  ``L_r = -( L(f(x), f(x^m)) + L(f(x_adv), f(x_adv^m)) )``, L the L2 distance between
  softmax outputs (sec. 5.1: "l2-norm ... between the soft labels").
* eq. 9:  ``L_p = L(g(x), g(x_adv))``, L the L1 norm over the map cells (sec. 5.1: "to encourage sparsity").
* eq. 10: the total adds ``alpha * L_r + beta * L_p`` to the base loss.

g is the true-class Grad-CAM of the model's attention layer, unnormalized and differentiable,
computed in float32 (also under autocast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import attention_area
from ..errors import ConfigError
from .base import Regularizer, frozen_bn_statistics
from .params import check_weight


def attention_mask(cam: torch.Tensor, size, kappa: Union[str, float] = "mean") -> torch.Tensor:
    """``Att(x)`` of AAD eq. 3 as a float ``[B, 1, H, W]`` mask at input resolution (nearest upsampling).

    No gradient flows through it: the threshold is a hard, constant decision.
    """
    mask = attention_area(cam, kappa).to(cam.dtype)[:, None]
    return F.interpolate(mask, size=tuple(size), mode="nearest")


def masked_input(x: torch.Tensor, cam: torch.Tensor, kappa: Union[str, float] = "mean") -> torch.Tensor:
    """``x^m = x * (1 - Att(x))`` (AAD eq. 7): the input with its attention area blacked out."""
    return x * (1.0 - attention_mask(cam, x.shape[-2:], kappa).to(x.dtype))


def rectification_loss(p_clean: torch.Tensor, p_clean_masked: torch.Tensor, p_adv: torch.Tensor,
                       p_adv_masked: torch.Tensor) -> torch.Tensor:
    """AAD eq. 8: ``-(mean_b ||p(x) - p(x^m)||_2 + mean_b ||p(x_adv) - p(x_adv^m)||_2)`` for softmax outputs p."""
    d_clean = (p_clean - p_clean_masked).norm(dim=1).mean()
    d_adv = (p_adv - p_adv_masked).norm(dim=1).mean()
    return -(d_clean + d_adv)


def preservation_loss(g_clean: torch.Tensor, g_adv: torch.Tensor) -> torch.Tensor:
    """AAD eq. 9: ``mean_b ||g(x) - g(x_adv)||_1`` over the cells of ``[B, h, w]`` maps, in float32.

    float32 also under autocast: the difference of two bf16 maps of similar values loses 1-2%.
    """
    return (g_clean.float() - g_adv.float()).abs().flatten(1).sum(1).mean()


@dataclass
class AADParams:
    """The ``defense.aad`` section.

    Attributes:
        alpha, beta: weights of the rectification and preservation losses (AAD eq. 10; the
            paper's sensitivity study, sec. 5.4, uses 0.01 for both).
        kappa: the eq. 3 threshold, ``"mean"`` (each map's own mean, the paper's choice) or a number
            in [0, 1] compared with the min-max normalized map (unnormalized Grad-CAM values depend
            on the model: about 0.01 at the peak on the MNIST LeNet; see ``attention_area``).
    """

    alpha: float = 0.01
    beta: float = 0.01
    kappa: Union[str, float] = "mean"

    def __post_init__(self):
        self.alpha = check_weight("defense.aad.alpha", self.alpha)
        self.beta = check_weight("defense.aad.beta", self.beta)
        kappa = self.kappa
        if isinstance(kappa, str):
            if kappa != "mean":
                raise ConfigError(f"defense.aad.kappa must be 'mean' or a number, got {kappa!r}")
        elif isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not 0.0 <= kappa <= 1.0:
            raise ConfigError(f"defense.aad.kappa must be 'mean' or a number in [0, 1] (a threshold on the "
                              f"min-max normalized map), got {kappa!r}")
        else:
            self.kappa = float(kappa)


class AAD(Regularizer):
    """``alpha * L_r + beta * L_p`` (AAD eq. 10; the paper's sec. 5.4 uses alpha = beta = 0.01).

    Parts: ``aad_rect`` (L_r, unweighted, <= 0) and ``aad_pres`` (L_p, unweighted).
    ``x^m`` and ``x_adv^m`` go through the unwrapped model in one forward pass.
    """

    name = "aad"
    reads_cam = True  # the trainer asks: torch.compile cannot serve a gradient-path Grad-CAM
    Params = AADParams
    default_base = "madry"

    def layers(self, inner: nn.Module) -> List[str]:
        return [inner.attention_layer]

    def __call__(self, ctx) -> Dict[str, torch.Tensor]:
        cfg = self.params
        if cfg.alpha <= 0 and cfg.beta <= 0:
            return {}  # nothing to compute: no CAMs, and no clean pass (nor its dropout draws) for madry
        g_clean, g_adv = ctx.cam()
        out: Dict[str, torch.Tensor] = {}
        if cfg.alpha > 0:
            b = ctx.x.shape[0]
            masked = torch.cat([masked_input(ctx.x, g_clean, cfg.kappa),
                                masked_input(ctx.x_adv, g_adv, cfg.kappa)])
            with frozen_bn_statistics(ctx.inner):
                p_masked = F.softmax(ctx.inner(masked).float(), 1)
            p_clean, p_adv = ctx.probabilities()
            l_r = rectification_loss(p_clean, p_masked[:b], p_adv, p_masked[b:])
            ctx.report("aad_rect", l_r)
            out["aad_rect"] = cfg.alpha * l_r
        if cfg.beta > 0:
            l_p = preservation_loss(g_clean, g_adv)
            ctx.report("aad_pres", l_p)
            out["aad_pres"] = cfg.beta * l_p
        return out
