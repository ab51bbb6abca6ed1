"""Attention-Augmented Adversarial Attack, A3 (AAD sec. 4.3, eq. 11-13; Wu, Sang et al., ACM TOMM 2022).

A3 adds an attention-deviation term to the loss of any gradient attack:

    AttentionAttackLoss = -||Att(x) - g(x_adv)||_1                        (eq. 11)
    TotalAttackLoss     = L(f(x_adv), y_LL) - sigma ||Att(x) - g(x_adv)||_1  (eq. 12, StepLL base)
    x_adv               = x - eps * sign(grad TotalAttackLoss)              (eq. 13)

attnguard's attacks *maximize* their loss, so the loss here is ``base_loss + sigma * D`` with
``D = mean_cells |Att(x) - g~(x_adv)|``: for an untargeted base (FGSM, PGD, CW) that is ascent on
the base loss plus the deviation; for the least-likely bases (StepLL, Iter-StepLL) the base loss
is ``-CE(., y_LL)``, so ascent on ``-CE + sigma D`` is descent on eq. 12, exactly eq. 13.
Either way the step pushes the attention away from the clean attention area.
"""

from __future__ import annotations

import copy

import torch

from ..attention import attention_area, grad_cam, normalize_cam
from ..errors import ConfigError
from .base import Attack
from .fgsm import FGSM
from .losses import LogitLoss
from .pgd import PGD


class AttentionDeviationLoss:
    """``base(logits) + sigma * mean_cells |Att(x) - g~(x_adv)|`` from one forward pass.

    ``Att(x)``: binarized Grad-CAM area of the clean image for the true class (AAD eq. 3),
    computed once in :meth:`setup` and constant. ``g~(x_adv)``: the Grad-CAM of ``x_adv`` for the
    true class, differentiable w.r.t. ``x_adv`` (``create_graph=True``, or the exact closed form)
    and min-max normalized per example to [0, 1] so it is comparable with the binary mask.
    The L1 distance is the *mean* over the ``h*w`` cells rather than the sum: it lies in [0, 1]
    whatever the map size, which keeps ``sigma`` on the scale of the cross-entropy loss.
    """

    name = "a3"

    def __init__(self, base: LogitLoss, sigma: float, kappa="mean", layer=None):
        self.base = base
        self.sigma = float(sigma)
        self.kappa = kappa
        self.layer = layer
        self.targeted = getattr(base, "targeted", False)

    def setup(self, model, x, y):
        base_state = self.base.setup(model, x, y)
        att = attention_area(grad_cam(model, self.layer, x, target=y), self.kappa)
        return base_state, att.to(x.dtype)

    def deviation(self, cam: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """Per-example ``mean |Att(x) - normalize(g(x_adv))|``."""
        return (att - normalize_cam(cam)).abs().flatten(1).mean(1)

    def __call__(self, model, x_adv, y, state):
        base_state, att = state
        # Outside the attack's gradient steps (the final no-grad evaluation) the map needs no graph.
        differentiable = torch.is_grad_enabled() and x_adv.requires_grad
        cam, logits = grad_cam(model, self.layer, x_adv, target=y, create_graph=differentiable,
                               return_logits=True)
        labels = self.base.labels(y, base_state) if hasattr(self.base, "labels") else y
        loss = self.base.from_logits(logits, labels) + self.sigma * self.deviation(cam, att).float()
        return loss, logits


class A3(Attack):
    """A3, the Attention-Augmented Adversarial Attack (AAD sec. 4.3, eq. 11-13).

    Runs a copy of ``base`` (same steps, step size, projection, random start, restarts) whose
    loss gains ``+ sigma * mean_cells |Att(x) - g~(x_adv)|`` (see :class:`AttentionDeviationLoss`);
    each step still costs one forward pass (Grad-CAM and the base loss share it). The user's
    ``base`` object is not modified.

    Args:
        base: an FGSM- or PGD-type attack with a logit loss: FGSM, PGD (CE or CW loss, restarts),
            StepLL, IterStepLL. Targeted attacks on user-given targets are refused: A3 explains the
            label passed to the call, which must be the true class.
        sigma: weight of the attention deviation (AAD uses 10).
        kappa: threshold of the clean attention area, ``"mean"`` (AAD's default) or a number.
        layer: Grad-CAM layer (module or dotted name); default the model's ``attention_layer``.

    Args eps, norm, skip_misclassified and seed are those of ``base``.
    """

    name = "a3"

    def __init__(self, base: Attack, sigma: float = 10.0, kappa="mean", *, layer=None):
        if not isinstance(base, (FGSM, PGD)):
            raise ConfigError(f"A3 wraps FGSM/PGD-type gradient attacks (FGSM, PGD, StepLL, IterStepLL), "
                              f"got {type(base).__name__}")
        if getattr(base, "targeted", False) or (getattr(base.loss, "targeted", False)
                                                and not hasattr(base.loss, "labels")):
            raise ConfigError("A3 needs the true labels to explain; a targeted attack receives target classes")
        if not isinstance(base.loss, LogitLoss):
            raise ConfigError(f"A3 reuses the logits of its Grad-CAM forward pass, so the base loss must be a "
                              f"LogitLoss, got {type(base.loss).__name__}")
        if not sigma >= 0:
            raise ConfigError(f"sigma must be >= 0, got {sigma!r}")
        if isinstance(kappa, str) and kappa != "mean":
            raise ConfigError(f"kappa must be 'mean' or a number, got {kappa!r}")
        super().__init__(base.eps, norm=base.norm, skip_misclassified=base.skip_misclassified, seed=base.seed)
        self.base = base
        self.sigma = float(sigma)
        self.kappa = kappa
        self.inner = copy.copy(base)
        self.inner.loss = AttentionDeviationLoss(base.loss, self.sigma, kappa, layer)

    def perturb(self, model, x, y):
        return self.inner.perturb(model, x, y)

    def __repr__(self) -> str:
        return f"A3({self.base!r}, sigma={self.sigma:g}, kappa={self.kappa})"
