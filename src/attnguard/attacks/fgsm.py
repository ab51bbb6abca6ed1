"""Fast gradient sign method (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial Examples")."""

from __future__ import annotations

from typing import Optional

import torch

from .base import Attack
from .losses import make_loss


class FGSM(Attack):
    """One step ``x + eps * sign(grad_x loss)`` (L-inf), or ``x + eps * grad / ||grad||_2`` (L2).

    Args:
        eps: step size and radius.
        loss: ``"ce"`` (default) or ``"cw"`` or a loss object.
        norm, skip_misclassified, seed: see :class:`~attnguard.attacks.base.Attack`.
    """

    name = "fgsm"

    def __init__(self, eps: float, *, loss="ce", norm: str = "linf", skip_misclassified: bool = True,
                 seed: Optional[int] = None):
        super().__init__(eps, norm=norm, skip_misclassified=skip_misclassified, seed=seed)
        self.loss = make_loss(loss)

    def perturb(self, model, x, y):
        x_adv = x.clone().requires_grad_(True)
        state = self.loss.setup(model, x, y)
        with torch.enable_grad():
            loss, _ = self.loss(model, x_adv, y, state)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        if self.norm == "linf":
            return x + self.eps * grad.sign()
        n = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        return x + self.eps * grad / n
