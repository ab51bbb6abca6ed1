"""Adversarial logit pairing (Kannan et al. 2018; AT+ALP eq. 2-3; AFM eq. 2)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .adversary import AdversaryConfig
from .base import BaseObjective
from .madry import training_pgd
from .params import check_weight


def logit_pairing(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """``mean_b ||f(x) - f(x_adv)||_2^2``: squared L2 of the logit difference, summed over classes (AT+ALP eq. 3)."""
    d = logits_clean.float() - logits_adv.float()
    return d.pow(2).sum(1).mean()


@dataclass
class ALPParams:
    """The ``defense.alp`` section.

    Attributes:
        weight: the logit pairing weight, ``lambda`` in the config (``defense.alp.lambda``; the
            field cannot be called ``lambda``, a Python keyword). Kannan et al. 2018; AT+ALP eq. 2-3
            alpha; AFM eq. 2 lambda. 0.5 follows Kannan et al.'s ALP setting.
    """

    weight: float = field(default=0.5, metadata={"key": "lambda"})

    def __post_init__(self):
        self.weight = check_weight("defense.alp.lambda", self.weight)


class ALP(BaseObjective):
    """``0.5 (CE(f(x), y) + CE(f(x_adv), y)) + lambda * mean_b ||f(x) - f(x_adv)||_2^2``.

    The classification term averages the clean and adversarial cross-entropies: Kannan et al.
    train on mixed minibatches of 50% clean and 50% adversarial examples, whose mean CE is this.
    ``x_adv`` comes from the same PGD adversary as :class:`~attnguard.defenses.madry.Madry`
    (untargeted, as the AT+ALP and AFM papers use it).
    """

    name = "alp"
    needs_clean_logits = True
    Params = ALPParams

    def make_attack(self, adversary: AdversaryConfig):
        return training_pgd(adversary)

    def loss(self, ctx) -> torch.Tensor:
        ce = 0.5 * (F.cross_entropy(ctx.logits_clean.float(), ctx.y) + F.cross_entropy(ctx.logits_adv.float(), ctx.y))
        alp = logit_pairing(ctx.logits_clean, ctx.logits_adv)
        ctx.report("ce", ce)
        ctx.report("alp", alp)
        return ce + self.params.weight * alp
