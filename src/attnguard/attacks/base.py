"""What every attack shares: the call contract, state preservation and projection.

An attack is a small callable object, ``attack(model, x, y) -> x_adv``:

* ``x`` holds [0, 1] pixels ``[B, C, H, W]``; ``x_adv`` lies in the eps-ball around ``x`` and in [0, 1].
* the model's train/eval mode and its parameters' ``.grad`` are as they were before the call;
  the attack differentiates w.r.t. the input only (``torch.autograd.grad``).
* with ``seed`` set, the attack is reproducible: its random draws come from its own generator.
* with ``skip_misclassified`` (the default, as in AutoAttack), examples the model already gets
  wrong are returned unchanged; training adversaries turn it off.

The caller chooses the mode: evaluation puts the model in eval mode before attacking.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..utils.modes import kept_modes

NORMS = ("linf", "l2")


@contextmanager
def preserved_state(model: nn.Module):
    """Restore the model's train/eval flags and its parameters' ``.grad`` on exit."""
    # Only gradients that exist are copied: the trainer zeroes them (to None) before the step, so the
    # in-training adversary copies nothing.
    grads = [(p, p.grad.clone()) for p in model.parameters() if p.grad is not None]
    with kept_modes(model):
        try:
            yield
        finally:
            for p in model.parameters():
                p.grad = None
            for p, g in grads:
                p.grad = g


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x``, then onto [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        delta = delta * (eps / n).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


class Attack:
    """Base class. Subclasses implement :meth:`perturb` on the examples to attack.

    Args:
        eps: radius of the threat model in [0, 1] pixel units.
        norm: ``"linf"`` or ``"l2"``.
        skip_misclassified: leave examples the model already misclassifies unchanged.
        seed: seed for the attack's own random generator (``None``: the global RNG).
    """

    name = "attack"
    uses_gradients = True

    def __init__(self, eps: float, *, norm: str = "linf", skip_misclassified: bool = True,
                 seed: Optional[int] = None):
        if norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if not eps >= 0:
            raise ConfigError(f"eps must be >= 0, got {eps!r}")
        self.eps = float(eps)
        self.norm = norm
        self.skip_misclassified = skip_misclassified
        self.seed = seed

    def generator(self, device) -> Optional[torch.Generator]:
        """A fresh generator seeded with ``seed`` (so every call draws the same), or None."""
        if self.seed is None:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(int(self.seed))
        return g

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 clean_correct: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attack ``x`` (labels ``y``); returns ``x_adv`` in the eps-ball and [0, 1].

        ``clean_correct`` (bool ``[B]``): whether ``model`` classifies each ``x`` correctly, when the
        caller already knows it (the evaluation's clean pass); ``skip_misclassified`` then uses it
        instead of running the same forward pass again.
        """
        x = x.detach()
        y = y.detach()
        with preserved_state(model):
            if self.skip_misclassified:
                if clean_correct is not None:
                    keep = clean_correct.to(device=x.device, dtype=torch.bool)
                else:
                    with torch.no_grad():
                        keep = model(x).argmax(1) == y
                idx = keep.nonzero().flatten()
                x_adv = x.clone()
                if idx.numel() > 0:
                    x_adv[idx] = self.perturb(model, x[idx], y[idx]).detach()
            else:
                x_adv = self.perturb(model, x, y).detach()
        return project(x_adv, x, self.eps, self.norm)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:g}, norm={self.norm})"
