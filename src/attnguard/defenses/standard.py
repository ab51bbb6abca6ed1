"""Standard training: the classification loss on clean examples only (the undefended baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import BaseObjective, classification_loss
from .params import check_classification_loss


@dataclass
class StandardParams:
    """The ``defense.standard`` section.

    Attributes:
        classification_loss: L_c: ``ce`` (softmax cross-entropy) or ``soft-margin`` (AAD eq. 10;
            see :func:`~attnguard.defenses.base.classification_loss`).
    """

    classification_loss: str = "ce"

    def __post_init__(self):
        self.classification_loss = check_classification_loss("defense.standard.classification_loss",
                                                             self.classification_loss)


class Standard(BaseObjective):
    """``L_c(f(x), y)``. No adversary, so no attention regularizer can be added."""

    name = "standard"
    needs_clean_logits = True
    fuses_clean = False  # no adversarial pass to fuse with
    Params = StandardParams

    def loss(self, ctx) -> torch.Tensor:
        ce = classification_loss(self.params.classification_loss, ctx.logits_clean, ctx.y)
        ctx.report("ce", ce)
        return ce
