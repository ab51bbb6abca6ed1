"""Adversarial logit pairing (Kannan et al. 2018; AT+ALP eq. 2-3; AFM eq. 2)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .adversary import AdversaryConfig
from .base import BaseObjective, classification_loss
from .madry import training_pgd
from .params import check_classification_loss, check_weight


def logit_pairing(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """``mean_{b,k} (f(x)_{b,k} - f(x_adv)_{b,k})^2``: the squared logit difference averaged over all B*K entries.

    AT+ALP eq. 3 (an "L_2 loss") and AFM eq. 2 (D an l2 loss) leave the scale open; this is the
    scale of the reference code: Kannan et al.'s released ALP code and the AFM authors' code pair
    logits with a mean squared error over all batch x class entries
    (``mean_squared_error(logits_clean, logits_adv, weights=0.5)``, the weight being ALP's lambda).
    Summing over the K classes instead would make the term K times stronger (10x on CIFAR-10).
    """
    d = logits_clean.float() - logits_adv.float()
    return d.pow(2).mean()


@dataclass
class ALPParams:
    """The ``defense.alp`` section.

    Attributes:
        weight: the logit pairing weight, ``lambda`` in the config (``defense.alp.lambda``; the
            field cannot be called ``lambda``, a Python keyword). Kannan et al. 2018; AT+ALP eq. 2
            alpha; AFM eq. 2 lambda. 0.5 on :func:`logit_pairing`'s mean over B*K entries is the
            reference code's ``weights=0.5``.
        classification_loss: L_c of both halves: ``ce`` (softmax cross-entropy, Kannan et al.) or
            ``soft-margin`` (AAD eq. 10; see :func:`~attnguard.defenses.base.classification_loss`).
    """

    weight: float = field(default=0.5, metadata={"key": "lambda"})
    classification_loss: str = "ce"

    def __post_init__(self):
        self.weight = check_weight("defense.alp.lambda", self.weight)
        self.classification_loss = check_classification_loss("defense.alp.classification_loss",
                                                              self.classification_loss)


class ALP(BaseObjective):
    """``0.5 (L_c(f(x), y) + L_c(f(x_adv), y)) + lambda * mean_{b,k} (f(x) - f(x_adv))^2`` (L_c CE by default).

    The classification term averages the clean and adversarial losses: Kannan et al. train on
    mixed minibatches of 50% clean and 50% adversarial examples, whose mean loss is this; so the
    clean and adversarial halves are one batch (``fuses_clean``) when ``fused_forward`` is on.
    ``x_adv`` comes from the same PGD adversary as :class:`~attnguard.defenses.madry.Madry`
    (untargeted, as the AT+ALP and AFM papers use it).
    """

    name = "alp"
    needs_clean_logits = True
    fuses_clean = True
    Params = ALPParams

    def make_attack(self, adversary: AdversaryConfig):
        return training_pgd(adversary)

    def loss(self, ctx) -> torch.Tensor:
        kind = self.params.classification_loss
        ce = 0.5 * (classification_loss(kind, ctx.logits_clean, ctx.y)
                    + classification_loss(kind, ctx.logits_adv, ctx.y))
        alp = logit_pairing(ctx.logits_clean, ctx.logits_adv)
        ctx.report("ce", ce)
        ctx.report("alp", alp)
        return ce + self.params.weight * alp
