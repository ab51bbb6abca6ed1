"""PGD adversarial training (Madry et al. 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks"; AT+ALP eq. 1; AFM eq. 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attacks.pgd import PGD
from .adversary import AdversaryConfig
from .base import BaseObjective, classification_loss
from .params import check_classification_loss


def training_pgd(adversary: AdversaryConfig) -> PGD:
    """The in-training PGD adversary: CE loss, every example attacked, the global RNG (seeded by the trainer)."""
    return PGD(adversary.eps, alpha=adversary.step_size, steps=adversary.steps, norm=adversary.norm,
               random_start=adversary.random_start, loss="ce", skip_misclassified=False)


@dataclass
class MadryParams:
    """The ``defense.madry`` section (the adversary's settings are the ``adversary:`` section).

    Attributes:
        classification_loss: L_c on ``f(x_adv)``: ``ce`` (softmax cross-entropy, Madry et al.) or
            ``soft-margin`` (AAD eq. 10's multi-label soft margin loss; see
            :func:`~attnguard.defenses.base.classification_loss`). The adversary maximizes CE either way.
    """

    classification_loss: str = "ce"

    def __post_init__(self):
        self.classification_loss = check_classification_loss("defense.madry.classification_loss",
                                                             self.classification_loss)


class Madry(BaseObjective):
    """``L_c(f(x_adv), y)`` with ``x_adv`` the PGD maximizer of the CE loss in the eps-ball (AT+ALP eq. 1).

    Its own pass is the adversarial one alone: a regularizer's clean pass runs apart from it and
    leaves BatchNorm's running statistics alone, so ``madry+<regularizer>`` trains the same
    classifier term, on the same batch statistics, as ``madry``.
    """

    name = "madry"
    needs_clean_logits = False
    fuses_clean = False
    Params = MadryParams

    def make_attack(self, adversary: AdversaryConfig) -> PGD:
        return training_pgd(adversary)

    def loss(self, ctx) -> torch.Tensor:
        ce = classification_loss(self.params.classification_loss, ctx.logits_adv, ctx.y)
        ctx.report("ce", ce)
        return ce
