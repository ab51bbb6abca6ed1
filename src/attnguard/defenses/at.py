"""Attention-map pairing (Li, Goodman et al. 2022, AT+ALP eq. 4; attention maps of Zagoruyko & Komodakis 2017).

``L_AT = sum_j mean_b || Q_adv^j / ||Q_adv^j||_2 - Q_o^j / ||Q_o^j||_2 ||_p`` with
``Q^j = vec(sum_c |A_c^j|^power)`` over the model's group layers j, p = 2 in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch
from torch import nn

from ..attention import attention_vector
from ..errors import check_range
from .base import Regularizer
from .params import check_weight


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


@dataclass
class ATParams:
    """The ``defense.at`` section.

    Attributes:
        beta: weight of the attention pairing (AT+ALP eq. 2 beta; the paper gives no value, 1.0 is ours).
        power: exponent of ``sum_c |A_c|^power`` in the attention map (Zagoruyko & Komodakis use 2).
        p: the norm of AT+ALP eq. 4 (the paper uses p = 2, a norm, not squared).
    """

    beta: float = 1.0
    power: float = 2.0
    p: float = 2.0

    def __post_init__(self):
        self.beta = check_weight("defense.at.beta", self.beta)
        self.power = float(check_range("defense.at.power", self.power, 1e-12))
        self.p = float(check_range("defense.at.p", self.p, 1.0))


class AT(Regularizer):
    """``beta * L_AT`` (AT+ALP eq. 2 beta; the paper gives no value, 1.0 is our default). Part: ``at``."""

    name = "at"
    Params = ATParams
    default_base = "madry"  # "Our AT" of AT+ALP Table 1; at+alp is their AT+ALP

    def layers(self, inner: nn.Module) -> List[str]:
        return list(inner.group_layers)

    def __call__(self, ctx) -> Dict[str, torch.Tensor]:
        cfg = self.params
        if cfg.beta <= 0:
            return {}
        pairs = [ctx.activations(name) for name in self.layers(ctx.inner)]
        l_at = attention_pairing([c for c, _ in pairs], [a for _, a in pairs], cfg.power, cfg.p)
        ctx.report("at", l_at)
        return {"at": cfg.beta * l_at}
