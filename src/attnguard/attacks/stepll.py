"""Least-likely-class attacks: StepLL and Iter-StepLL (Kurakin et al. 2017; Tramèr et al. 2018; AAD eq. 4).

Both descend the cross-entropy towards ``y_LL``, the class the model finds least likely on the
*clean* input. Attacks here maximize their loss, so the loss is ``-CE(f(x_adv), y_LL)``: one
ascent step on it is exactly AAD eq. 4, ``x_adv = x - eps * sign(grad_x CE(f(x), y_LL))``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .fgsm import FGSM
from .losses import LogitLoss
from .pgd import PGD


class LeastLikelyLoss(LogitLoss):
    """``-CE(logits, y_LL)`` with ``y_LL = argmin_c f(x)_c`` fixed on the clean batch in :meth:`setup`.

    ``state`` (what ``setup`` returns) holds ``y_LL``; :meth:`labels` tells logit-reusing wrappers
    (A3) which labels :meth:`from_logits` expects.
    """

    name = "ll"
    targeted = True  # it pulls towards a class (y_LL), not away from y

    def setup(self, model, x, y):
        with torch.no_grad():
            return model(x).argmin(1)

    def labels(self, y, state):
        return state

    def from_logits(self, logits, y_ll):
        return -F.cross_entropy(logits.float(), y_ll, reduction="none")

    def __call__(self, model, x_adv, y, state=None):
        if state is None:
            raise ValueError("LeastLikelyLoss needs the state returned by setup() (the least-likely classes)")
        logits = model(x_adv)
        return self.from_logits(logits, state), logits


class StepLL(FGSM):
    """StepLL (Kurakin et al. 2017, "Adversarial Machine Learning at Scale"; Tramèr et al. 2018; AAD eq. 4).

    One L-inf step ``x_adv = x - eps * sign(grad_x CE(f(x), y_LL))``, ``y_LL`` the least-likely
    class of the clean prediction. AAD uses it for its attention analysis.

    Args:
        eps: step size and L-inf radius ([0, 1] pixel units).
        skip_misclassified: leave already-misclassified examples unchanged.
        seed: unused (the attack is deterministic); kept for a uniform interface.
    """

    name = "stepll"

    def __init__(self, eps: float, *, skip_misclassified: bool = True, seed: Optional[int] = None):
        super().__init__(eps, loss=LeastLikelyLoss(), norm="linf", skip_misclassified=skip_misclassified,
                         seed=seed)

    def __repr__(self) -> str:
        return f"StepLL(eps={self.eps:g})"


def kurakin_alpha(eps: float, steps: int) -> float:
    """Step size that spreads Kurakin et al.'s total path length ``min(eps + 4/255, 1.25 eps)`` over ``steps``.

    Kurakin et al. take ``min(eps*255 + 4, 1.25 eps*255)`` steps of 1/255; with a chosen number of
    steps the same total length gives this step size.
    """
    return min(eps + 4.0 / 255.0, 1.25 * eps) / steps


class IterStepLL(PGD):
    """Iter-StepLL / iterative least-likely class method (Kurakin et al. 2017, "Adversarial Examples in the
    Physical World", sec. 2.3; used by AAD Table 7).

    ``x <- Proj_eps(x - alpha * sign(grad_x CE(f(x), y_LL)))`` for ``steps`` iterations from the clean
    input (no random start), with ``y_LL`` fixed from the clean prediction. Implemented as PGD on
    :class:`LeastLikelyLoss`.

    Args:
        eps: L-inf radius ([0, 1] pixel units).
        alpha: step size; default ``min(eps + 4/255, 1.25 eps) / steps`` (Kurakin et al.'s total
            path length, see :func:`kurakin_alpha`).
        steps: iterations (>= 1).
        skip_misclassified: leave already-misclassified examples unchanged.
        seed: unused (no random draws); kept for a uniform interface.
    """

    name = "iter-stepll"

    def __init__(self, eps: float, alpha: Optional[float] = None, steps: int = 10, *,
                 skip_misclassified: bool = True, seed: Optional[int] = None):
        if int(steps) < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        if alpha is None:
            alpha = kurakin_alpha(float(eps), int(steps))
        super().__init__(eps, alpha, steps, norm="linf", random_start=False, restarts=1, loss=LeastLikelyLoss(),
                         targeted=False, skip_misclassified=skip_misclassified, seed=seed)

    def __repr__(self) -> str:
        return f"IterStepLL(eps={self.eps:g}, alpha={self.alpha:g}, steps={self.steps})"
