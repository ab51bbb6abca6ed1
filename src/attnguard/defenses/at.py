"""Attention-map pairing (Goodman, Li et al. 2022, AT+ALP eq. 4; attention maps of Zagoruyko & Komodakis 2017).

``L_AT = sum_j mean_b || Q_adv^j / ||Q_adv^j||_2 - Q_o^j / ||Q_o^j||_2 ||_p`` with
``Q^j = vec(sum_c |A_c^j|^power)`` over the model's group layers j, p = 2 in the paper.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn

from ..attention import attention_vector
from .base import Regularizer


def attention_pairing(acts_clean: Sequence[torch.Tensor], acts_adv: Sequence[torch.Tensor], power: float = 2.0,
                      p: float = 2.0) -> torch.Tensor:
    """AT+ALP eq. 4 over paired ``[B, C, h, w]`` activations: a p-norm (not raised to p), averaged over the batch."""
    total = None
    for a_clean, a_adv in zip(acts_clean, acts_adv, strict=True):
        diff = attention_vector(a_adv.float(), power) - attention_vector(a_clean.float(), power)
        term = torch.linalg.vector_norm(diff, ord=p, dim=1).mean()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("attention pairing needs at least one layer")
    return total


class AT(Regularizer):
    """``at_beta * L_AT`` (AT+ALP eq. 2 beta; the paper gives no value, 1.0 is our default). Part: ``at``."""

    name = "at"

    def layers(self, model: nn.Module) -> List[str]:
        return list(model.group_layers)

    def __call__(self, ctx) -> Dict[str, torch.Tensor]:
        cfg = self.defense
        if cfg.at_beta <= 0:
            return {}
        pairs = [ctx.activations(name) for name in self.layers(ctx.net)]
        l_at = attention_pairing([c for c, _ in pairs], [a for _, a in pairs], cfg.at_power, cfg.at_p)
        ctx.report("at", l_at)
        return {"at": cfg.at_beta * l_at}
