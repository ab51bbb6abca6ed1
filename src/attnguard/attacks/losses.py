"""Losses that gradient attacks maximize.

A loss is an object with ``setup(model, x, y) -> state`` (once per attack call, on the clean
batch) and ``__call__(model, x_adv, y, state) -> (per_example_loss [B], logits)``. Losses that
depend only on the logits subclass :class:`LogitLoss` and implement ``from_logits``, which lets
wrappers such as A3 reuse the logits of a forward pass they already made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError


class LogitLoss:
    name = "logit"
    targeted = False

    def setup(self, model, x, y):
        return None

    def from_logits(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model, x_adv, y, state=None):
        logits = model(x_adv)
        return self.from_logits(logits, y), logits


class CrossEntropyLoss(LogitLoss):
    """Untargeted: CE w.r.t. the true class. Targeted: minus CE w.r.t. the target class."""

    name = "ce"

    def __init__(self, targeted: bool = False):
        self.targeted = targeted

    def from_logits(self, logits, y):
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        return -ce if self.targeted else ce


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{j != y} z_j - z_y`` per example (positive means misclassified)."""
    z_y = logits.gather(1, y[:, None])[:, 0]
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - z_y


class CWLoss(LogitLoss):
    """The Carlini-Wagner margin loss (Carlini & Wagner 2017, f6), as PGD's objective ("CW-k").

    Untargeted: ``min(max_{j!=y} z_j - z_y, kappa)``. Targeted: ``min(z_t - max_{j!=t} z_j, kappa)``.
    ``kappa`` caps the margin once an example is misclassified by that much (Madry et al. use 50).
    """

    name = "cw"

    def __init__(self, targeted: bool = False, kappa: float = 50.0):
        self.targeted = targeted
        self.kappa = kappa

    def from_logits(self, logits, y):
        m = margin(logits.float(), y)
        return (-m if self.targeted else m).clamp(max=self.kappa)


def make_loss(loss, targeted: bool = False):
    """A loss object from a name (``"ce"``, ``"cw"``) or an object already made."""
    if isinstance(loss, str):
        if loss == "ce":
            return CrossEntropyLoss(targeted)
        if loss == "cw":
            return CWLoss(targeted)
        raise ConfigError(f"loss must be 'ce' or 'cw' (or a loss object), got {loss!r}")
    return loss
