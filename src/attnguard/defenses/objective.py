"""A training objective: base loss + weighted regularizers (AAD eq. 10; AT+ALP eq. 2; AFM eq. 6).

``loss, parts = objective(model, x, y)``: ``loss`` is a differentiable scalar; ``parts`` maps names
to detached 0-dim tensors (``ce``, the base's classification loss L_c; ``alp``, ``trades_kl``,
``aad_rect``, ``aad_pres``, ``at``, ``afm``, ``afm_norm``, ``afm_cam``, ``afm_cam_norm``, ``acc_clean`` (when a clean pass ran),
``acc_adv``, ``loss``). The step has no host synchronization; reading the parts (``.item()``) is
the caller's choice, e.g. every N steps.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .adversary import AdversaryConfig
from .base import BaseObjective, Regularizer, unwrap
from .config import DefenseConfig
from .context import Context
from .presets import canonical_name, parse_preset
from .registry import BASES, REGULARIZERS


class Objective:
    """One base plus regularizers, sharing one forward pass per step.

    Args:
        base: the base objective (owns the adversary).
        regularizers: attention regularizers (require a base with an adversary).
        name: the canonical defense name.
        fused_forward: run clean and adversarial examples through the model in one forward pass,
            for a base that ``fuses_clean`` (alp, trades); madry's passes stay its own.
    """

    def __init__(self, base: BaseObjective, regularizers: List[Regularizer], name: str, *, fused_forward: bool = True):
        if regularizers and not base.has_adversary:
            raise ValueError(f"base '{base.name}' has no adversary; regularizers pair clean and adversarial examples")
        self.base = base
        self.regularizers = list(regularizers)
        self.name = name
        self.fused_forward = fused_forward

    @property
    def attack(self):
        """The in-training adversary (None for standard training)."""
        return self.base.attack

    def layers(self, model: nn.Module) -> List[str]:
        inner = unwrap(model)
        return list(dict.fromkeys(name for r in self.regularizers for name in r.layers(inner)))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``model`` as the caller has it (possibly a DDP or compile wrapper): its one main forward
        runs through it; crafting and metadata use the unwrapped model."""
        inner = unwrap(model)
        x_adv = self.base.craft(inner, x, y)
        # The passes are the base's: a regularizer adds at most a clean pass that leaves the base's
        # loss and BN running statistics alone (context.py), never a fused batch the base lacks.
        ctx = Context(model, x, y, x_adv, fused_forward=self.fused_forward and self.base.fuses_clean,
                      layers=self.layers(inner), need_clean=self.base.needs_clean_logits)
        loss = self.base.loss(ctx)
        for reg in self.regularizers:
            for term in reg(ctx).values():
                loss = loss + term
        ctx.accuracy_parts()
        parts = dict(ctx.parts)
        parts["loss"] = loss.detach()
        return loss, parts

    def __repr__(self) -> str:
        return f"Objective({self.name}: {self.base!r}, regularizers={self.regularizers!r})"


def build_objective(defense: Optional[DefenseConfig] = None, adversary: Optional[AdversaryConfig] = None) -> Objective:
    """The objective named by ``defense.preset``; each part gets its own section of ``defense``."""
    defense = defense if defense is not None else DefenseConfig()
    adversary = adversary if adversary is not None else AdversaryConfig()
    base_name, reg_names = parse_preset(defense.preset)
    base = BASES.build(base_name, defense.params(base_name), adversary)
    regs = [REGULARIZERS.build(n, defense.params(n)) for n in reg_names]
    return Objective(base, regs, canonical_name(defense.preset), fused_forward=defense.fused_forward)
