"""StepLL adversarial training (Kurakin et al. 2017, "Adversarial Machine Learning at Scale", Algorithm 1).

AAD sec. 5.5 / Fig. 11 analyses this defense (without AAD) as a second existing adversarial
training method whose attention maps are rectified and preserved.

What we follow from Kurakin et al.:

* **The batch** (Algorithm 1): of a minibatch of ``m`` examples, the first ``k`` are replaced by
  their adversarial versions and the other ``m - k`` stay clean; the model is trained on this one
  mixed batch of ``m`` examples (so BatchNorm sees it as one batch). Kurakin et al. use m = 32,
  k = 16: ``adv_fraction = 0.5``. The loader shuffles, so the first ``k`` are a random subset.
* **The loss** (their eq. in sec. 3): ``(sum_clean L(x_i, y_i) + lambda sum_adv L(x_adv_i, y_i)) /
  ((m - k) + lambda k)`` with L the cross-entropy and ``lambda = 0.3``: :func:`kurakin_loss`.
* **The attack**: one-step least-likely class (StepLL, AAD eq. 4), crafted on the current model,
  with ``y_LL`` from the model's own clean prediction (no true label: no label leaking, their
  sec. 6). Every one of the ``k`` examples is attacked (no skipping of misclassified ones).
* **The step size**: drawn per example from a normal distribution N(0, sigma) truncated to
  [0, eps_max] with sigma = eps_max / 2 (their N(0, 8) on [0, 16] of 255), so that the model sees
  small as well as large perturbations. ``eps_max`` is ``adversary.eps``. ``eps_sampling: fixed``
  uses ``adversary.eps`` for every example. The draw uses the global RNG (seeded by the trainer and
  restored on resume).

What differs: Kurakin et al. train Inception v3 on ImageNet with RMSProp and several hundred
thousand steps; optimizer, schedule and data are the run config's.

Composition with a regularizer (``stepll-at+aad``): the regularizer pairs each clean example with
its counterpart in the mixed batch, which is the example itself for the ``m - k`` clean ones.
The base's own pass is the mixed batch alone (``needs_clean_logits = False``): a clean pass that
a regularizer needs runs apart with BatchNorm running statistics frozen, as next to madry.
Note that ``acc_adv`` in the training metrics is the accuracy on the mixed batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from ..attacks.stepll import StepLL
from ..errors import ConfigError, check_range
from .adversary import AdversaryConfig
from .base import BaseObjective, crafting_mode
from .params import check_weight

EPS_SAMPLING = ("truncated-normal", "fixed")


def kurakin_loss(loss_clean: torch.Tensor, loss_adv: torch.Tensor, weight: float) -> torch.Tensor:
    """``(sum loss_clean + weight * sum loss_adv) / (n_clean + weight * n_adv)`` (Kurakin et al. 2017, sec. 3).

    ``loss_clean [m - k]`` and ``loss_adv [k]`` are per-example losses of the clean and the
    adversarial examples of one batch. With ``weight = 1`` it is the plain mean over all ``m``.
    """
    denom = loss_clean.numel() + weight * loss_adv.numel()
    if denom <= 0:
        raise ValueError("the mixed batch has no example with a positive weight")
    return (loss_clean.float().sum() + weight * loss_adv.float().sum()) / denom


def adversarial_count(batch: int, fraction: float) -> int:
    """``k``, the number of examples of a batch of ``batch`` replaced by adversarial ones (at least 1)."""
    return min(batch, max(1, int(fraction * batch + 0.5)))


def sample_eps(n: int, eps_max: float, sampling: str, device=None) -> torch.Tensor:
    """Per-example step sizes ``[n]``: ``eps_max`` each (``fixed``), or Kurakin et al.'s draw from
    N(0, eps_max / 2) truncated to [0, eps_max] (``truncated-normal``; global RNG)."""
    if sampling == "fixed" or eps_max == 0:
        return torch.full((n,), float(eps_max), device=device)
    out = torch.empty(n, device=device)
    return torch.nn.init.trunc_normal_(out, mean=0.0, std=eps_max / 2, a=0.0, b=eps_max)


class KurakinStepLL(StepLL):
    """StepLL (AAD eq. 4) with a step size per example (:func:`sample_eps`), every example attacked.

    ``x_adv = x - eps_i * sign(grad_x CE(f(x), y_LL))``, ``eps_i <= eps``; then clipped to [0, 1].
    """

    name = "kurakin-stepll"

    def __init__(self, eps: float, sampling: str = "truncated-normal"):
        super().__init__(eps, skip_misclassified=False)
        self.sampling = sampling

    def perturb(self, model, x, y):
        if self.sampling == "fixed":
            return super().perturb(model, x, y)
        x_in = x.clone().requires_grad_(True)
        state = self.loss.setup(model, x, y)
        with torch.enable_grad():
            loss, _ = self.loss(model, x_in, y, state)
            (grad,) = torch.autograd.grad(loss.sum(), x_in)
        eps = sample_eps(x.shape[0], self.eps, self.sampling, device=x.device).to(x.dtype)
        return x + eps.view(-1, *([1] * (x.dim() - 1))) * grad.sign()

    def __repr__(self) -> str:
        return f"KurakinStepLL(eps={self.eps:g}, sampling={self.sampling})"


@dataclass
class StepLLATParams:
    """The ``defense.stepll-at`` section; defaults are Kurakin et al. 2017's.

    Attributes:
        weight: ``lambda``, the weight of the adversarial examples in :func:`kurakin_loss`
            (``defense.stepll-at.lambda``; 0.3 in Kurakin et al.).
        adv_fraction: ``k / m``, the share of each batch replaced by adversarial examples (16 of 32).
        eps_sampling: ``truncated-normal`` (Kurakin et al.'s random step size, at most
            ``adversary.eps``) or ``fixed`` (``adversary.eps`` for every example).
    """

    weight: float = field(default=0.3, metadata={"key": "lambda"})
    adv_fraction: float = 0.5
    eps_sampling: str = "truncated-normal"

    def __post_init__(self):
        self.weight = check_weight("defense.stepll-at.lambda", self.weight)
        self.adv_fraction = float(check_range("defense.stepll-at.adv_fraction", self.adv_fraction, 0.0, 1.0))
        if self.adv_fraction == 0:
            raise ConfigError("defense.stepll-at.adv_fraction must be > 0 (0 trains on clean examples only: "
                              "use the 'standard' defense)")
        if self.adv_fraction == 1 and self.weight == 0:
            raise ConfigError("defense.stepll-at: lambda 0 with adv_fraction 1 leaves no example with a weight")
        if self.eps_sampling not in EPS_SAMPLING:
            raise ConfigError(f"defense.stepll-at.eps_sampling must be one of {', '.join(EPS_SAMPLING)}, "
                              f"got {self.eps_sampling!r}")


class StepLLAT(BaseObjective):
    """Kurakin et al.'s StepLL adversarial training: :func:`kurakin_loss` on one mixed batch.

    ``x_adv`` (what :meth:`craft` returns, and what regularizers pair with ``x``) is the mixed
    batch: StepLL examples in the first ``k`` rows, the clean examples in the others.
    """

    name = "stepll-at"
    needs_clean_logits = False
    fuses_clean = False
    Params = StepLLATParams

    def make_attack(self, adversary: AdversaryConfig) -> KurakinStepLL:
        if adversary.norm != "linf":
            raise ConfigError("stepll-at crafts StepLL examples, an L-inf attack; set adversary.norm: linf")
        return KurakinStepLL(adversary.eps, self.params.eps_sampling)

    def craft(self, inner, x: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        k = adversarial_count(x.shape[0], self.params.adv_fraction)
        with crafting_mode(inner, self.adversary.bn_mode):
            adv = self.attack(inner, x[:k], y[:k])
        return torch.cat([adv, x[k:].detach()])

    def loss(self, ctx) -> torch.Tensor:
        b = ctx.y.shape[0]
        k = adversarial_count(b, self.params.adv_fraction)
        per = F.cross_entropy(ctx.logits_adv.float(), ctx.y, reduction="none")
        loss = kurakin_loss(per[k:], per[:k], self.params.weight)
        ctx.report("ce", loss)
        ctx.report("ce_adv", per[:k].mean())
        if k < b:
            ctx.report("ce_clean", per[k:].mean())
        return loss
