"""PGD adversarial training (Madry et al. 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks"; AT+ALP eq. 1; AFM eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attacks.pgd import PGD
from .adversary import AdversaryConfig
from .base import BaseObjective


def training_pgd(adversary: AdversaryConfig) -> PGD:
    """The in-training PGD adversary: CE loss, every example attacked, the global RNG (seeded by the trainer)."""
    return PGD(adversary.eps, alpha=adversary.step_size, steps=adversary.steps, norm=adversary.norm,
               random_start=adversary.random_start, loss="ce", skip_misclassified=False)


class Madry(BaseObjective):
    """``CE(f(x_adv), y)`` with ``x_adv`` the PGD maximizer of the CE loss in the eps-ball (AT+ALP eq. 1).

    No parameters: the adversary's settings are the ``adversary:`` section.
    """

    name = "madry"
    needs_clean_logits = False

    def make_attack(self, adversary: AdversaryConfig) -> PGD:
        return training_pgd(adversary)

    def loss(self, ctx) -> torch.Tensor:
        ce = F.cross_entropy(ctx.logits_adv.float(), ctx.y)
        ctx.report("ce", ce)
        return ce
