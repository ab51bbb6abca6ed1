"""Standard training: cross-entropy on clean examples only (the undefended baseline)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import BaseObjective


class Standard(BaseObjective):
    """``CE(f(x), y)``. No adversary, so no attention regularizer can be added; no parameters."""

    name = "standard"
    needs_clean_logits = True

    def loss(self, ctx) -> torch.Tensor:
        ce = F.cross_entropy(ctx.logits_clean.float(), ctx.y)
        ctx.report("ce", ce)
        return ce
