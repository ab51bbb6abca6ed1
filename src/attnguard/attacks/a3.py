"""Attention-Augmented Adversarial Attack, A3 (AAD sec. 4.3, eq. 11-13; Wu, Sang et al., ACM TOMM 2022).

A3 adds an attention-deviation term to the loss of any gradient attack:

    AttentionAttackLoss = -||Att(x) - g(x_adv)||_1                        (eq. 11)
    TotalAttackLoss     = L(f(x_adv), y_LL) - sigma ||Att(x) - g(x_adv)||_1  (eq. 12, StepLL base)
    x_adv               = x - eps * sign(grad TotalAttackLoss)              (eq. 13)

Our reading of eq. 11-12 (``a3-<attack>``, class :class:`A3`):

* ``Att(x)`` is the attention area of the *clean* image (eq. 3): its true-class Grad-CAM
  binarized at ``kappa = mean(g(x))`` (sec. 5.1), a constant 0/1 map. Sec. 4.3 binarizes the
  attention before taking the distance; only the clean side can be binary, since a binarized
  ``g(x_adv)`` would carry no gradient.
* ``g(x_adv)`` is the true-class Grad-CAM of the adversarial image exactly as eq. 1-2 define it:
  ``ReLU(sum_k alpha_k A^k)``, *not* normalized, differentiable w.r.t. ``x_adv``.
* ``||.||_1`` is the sum of ``|Att(x) - g(x_adv)|`` over the ``h*w`` cells of the map.

So ``D = sum_cells |Att(x) - g(x_adv)|`` is in the Grad-CAM's own units and grows with the number
of cells. Where ``g < 1`` (Grad-CAM values are usually far below the mask's 1: on the default
LeNet's 14x14 map the largest cell is about 0.005 after training), ``D = |Att| + sum_outside g -
sum_inside g``: a constant (the area's cell count) plus the CAM mass outside the clean area minus
the mass inside it, and its gradient moves each cell by ``+-1`` per unit of ``g``. What sigma = 10
means therefore depends on the model: it weighs ten times that mass difference against one
cross-entropy value. It is not a3n's sigma = 10: there a cell moves ``D`` by ``1 / (h*w * (max g -
min g))`` per unit of ``g``, so the paper's sigma equals a3n's sigma times ``h*w * (max g - min g)``
(close to 1 on the default LeNet, far above 1 for models with large CAM values).

``a3n-<attack>`` (class :class:`A3`, ``normalized=True``) keeps attnguard's earlier variant:
``D = mean_cells |Att(x) - normalize(g(x_adv))|`` with ``g`` min-max normalized per example, so
``D`` lies in [0, 1] whatever the map size or the CAM's scale, and ``sigma`` compares directly with
the cross-entropy. When ``g`` is already min-max normalized the two agree up to the factor ``h*w``.

attnguard's attacks *maximize* their loss, so the loss here is ``base_loss + sigma * D``: for an
untargeted base (FGSM, PGD, CW) that is ascent on the base loss plus the deviation; for the
least-likely bases (StepLL, Iter-StepLL) the base loss is ``-CE(., y_LL)``, so ascent on
``-CE + sigma D`` is descent on eq. 12, exactly eq. 13. Either way the step pushes the attention
away from the clean attention area.
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
    """``base(logits) + sigma * D(Att(x), g(x_adv))`` from one forward pass (AAD eq. 11-12).

    ``Att(x)``: binarized Grad-CAM area of the clean image for the true class (AAD eq. 3),
    computed once in :meth:`setup` and constant. ``g(x_adv)``: the Grad-CAM of ``x_adv`` for the
    true class, differentiable w.r.t. ``x_adv`` (``create_graph=True``, or the exact closed form).

    ``normalized=False`` (AAD as written): ``D = sum_cells |Att(x) - g(x_adv)|``, ``g`` unnormalized.
    ``normalized=True`` (attnguard's variant): ``D = mean_cells |Att(x) - normalize(g(x_adv))|``,
    ``g`` min-max normalized per example, so ``D`` lies in [0, 1].
    """

    name = "a3"

    def __init__(self, base: LogitLoss, sigma: float, kappa="mean", layer=None, *, normalized: bool = False):
        self.base = base
        self.sigma = float(sigma)
        self.kappa = kappa
        self.layer = layer
        self.normalized = bool(normalized)
        self.targeted = getattr(base, "targeted", False)

    def setup(self, model, x, y):
        base_state = self.base.setup(model, x, y)
        att = attention_area(grad_cam(model, self.layer, x, target=y), self.kappa)
        return base_state, att.to(x.dtype)

    def deviation(self, cam: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """Per-example deviation ``[B]`` of the maps ``cam`` from the areas ``att`` (both ``[B, h, w]``)."""
        if self.normalized:
            return (att - normalize_cam(cam)).abs().flatten(1).mean(1)
        return (att - cam).abs().flatten(1).sum(1)  # eq. 11-12: the L1 norm over the h*w cells

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
    loss gains ``+ sigma * ||Att(x) - g(x_adv)||_1`` (see :class:`AttentionDeviationLoss`);
    each step still costs one forward pass (Grad-CAM and the base loss share it). The user's
    ``base`` object is not modified.

    Args:
        base: an FGSM- or PGD-type attack with a logit loss: FGSM, PGD (CE or CW loss, restarts),
            StepLL, IterStepLL. Targeted attacks on user-given targets are refused: A3 explains the
            label passed to the call, which must be the true class.
        sigma: weight of the attention deviation (AAD uses 10). With ``normalized=False`` it
            multiplies a sum over the ``h*w`` cells in the Grad-CAM's own units, with
            ``normalized=True`` a mean in [0, 1]; one sigma of the first equals
            ``h*w * (max g - min g)`` of the second (see the module docstring).
        kappa: threshold of the clean attention area, ``"mean"`` (AAD's default) or a number.
        layer: Grad-CAM layer (module or dotted name); default the model's ``attention_layer``.
        normalized: ``False`` (default): AAD eq. 11-12 as written, ``a3-<attack>``. ``True``:
            attnguard's normalized-mean variant, ``a3n-<attack>``.

    Args eps, norm, skip_misclassified and seed are those of ``base``.
    """

    name = "a3"

    def __init__(self, base: Attack, sigma: float = 10.0, kappa="mean", *, layer=None, normalized: bool = False):
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
        self.normalized = bool(normalized)
        self.inner = copy.copy(base)
        self.inner.loss = AttentionDeviationLoss(base.loss, self.sigma, kappa, layer, normalized=self.normalized)

    def perturb(self, model, x, y):
        return self.inner.perturb(model, x, y)

    @property
    def on_iterate(self):
        """The iterate observer of the wrapped copy (PGD-type bases; see ``PGD.on_iterate``)."""
        return getattr(self.inner, "on_iterate", None)

    @on_iterate.setter
    def on_iterate(self, fn):
        self.inner.on_iterate = fn

    def __repr__(self) -> str:
        extra = ", normalized=True" if self.normalized else ""
        return f"A3({self.base!r}, sigma={self.sigma:g}, kappa={self.kappa}{extra})"
