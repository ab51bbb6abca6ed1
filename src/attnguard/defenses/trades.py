"""TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and Accuracy").

``min CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv))`` where ``x_adv`` maximizes the
same KL (with the clean distribution held fixed) by L-inf projected gradient ascent from
``x + 0.001 N(0, I)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..attacks.base import project
from ..attacks.pgd import PGD
from .adversary import AdversaryConfig
from .base import BaseObjective, classification_loss
from .params import check_classification_loss, check_weight


def trades_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """``KL(softmax f(x) || softmax f(x_adv))`` summed over classes, averaged over the batch ("batchmean")."""
    return F.kl_div(F.log_softmax(logits_adv.float(), 1), F.softmax(logits_clean.float(), 1), reduction="batchmean")


class TradesKLLoss:
    """Attack loss for TRADES' inner maximization: per-example ``KL(p(x) || p(x_adv))``, ``p(x)`` a constant."""

    name = "trades-kl"
    targeted = False

    def setup(self, model, x, y):
        with torch.no_grad():
            return F.softmax(model(x).float(), 1)

    def __call__(self, model, x_adv, y, state):
        logits = model(x_adv)
        kl = F.kl_div(F.log_softmax(logits.float(), 1), state, reduction="none").sum(1)
        return kl, logits


class TradesPGD(PGD):
    """PGD on :class:`TradesKLLoss` from TRADES' start ``x + 0.001 N(0, I)``.

    The start is always random: the KL and its gradient are exactly 0 at ``x``, so PGD from ``x``
    would never move.
    """

    name = "trades-pgd"

    def __init__(self, eps: float, alpha: float, steps: int, *, norm: str = "linf", seed: Optional[int] = None):
        super().__init__(eps, alpha=alpha, steps=steps, norm=norm, random_start=True, loss=TradesKLLoss(),
                         skip_misclassified=False, seed=seed)

    def _start(self, x, gen):
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return project(x + 0.001 * noise, x, self.eps, self.norm)


@dataclass
class TradesParams:
    """The ``defense.trades`` section.

    Attributes:
        beta: the KL regularization weight (Zhang et al. 2019 use 6 on CIFAR-10).
        classification_loss: L_c on ``f(x)``: ``ce`` (softmax cross-entropy, Zhang et al.) or
            ``soft-margin`` (AAD eq. 10; see :func:`~attnguard.defenses.base.classification_loss`).
            The KL term and the adversary are unchanged.
    """

    beta: float = 6.0
    classification_loss: str = "ce"

    def __post_init__(self):
        self.beta = check_weight("defense.trades.beta", self.beta)
        self.classification_loss = check_classification_loss("defense.trades.classification_loss",
                                                             self.classification_loss)


class Trades(BaseObjective):
    """``L_c(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv))`` (batchmean), both terms differentiable.

    The clean and adversarial halves are one batch (``fuses_clean``) when ``fused_forward`` is on.
    """

    name = "trades"
    needs_clean_logits = True
    fuses_clean = True
    Params = TradesParams

    def make_attack(self, adversary: AdversaryConfig) -> TradesPGD:
        return TradesPGD(adversary.eps, alpha=adversary.step_size, steps=adversary.steps, norm=adversary.norm)

    def loss(self, ctx) -> torch.Tensor:
        ce = classification_loss(self.params.classification_loss, ctx.logits_clean, ctx.y)
        kl = trades_kl(ctx.logits_clean, ctx.logits_adv)
        ctx.report("ce", ce)
        ctx.report("trades_kl", kl)
        return ce + self.params.beta * kl
