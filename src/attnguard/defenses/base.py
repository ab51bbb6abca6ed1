"""What every defense part shares: the base-objective and regularizer interfaces.

A training objective is one *base* (standard, madry, alp, trades: what the model is trained to
classify, and how ``x_adv`` is crafted) plus any number of *regularizers* (aad, at, afm: extra
terms pairing clean and adversarial examples). Both read a shared
:class:`~attnguard.defenses.context.Context`, which holds one forward pass's logits and
activations, so no part runs the model again for what another part already computed.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List, Optional

import torch
from torch import nn

from ..attacks.base import Attack
from ..utils.modes import eval_mode
from .config import AdversaryConfig, DefenseConfig


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper (``model.module``), else the model.

    Metadata (attention layer, group layers, classifier), hooks, the adversary and any extra
    forward pass use the inner module; only the one main forward runs through the wrapper, so DDP
    sees exactly one forward per backward.
    """
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


@contextmanager
def crafting_mode(model: nn.Module, bn_mode: str):
    """Put ``model`` in eval mode while crafting when ``bn_mode == "eval"``; restore every module's flag after."""
    if bn_mode != "eval":
        yield
        return
    with eval_mode(model):
        yield


class Base:
    """A base objective.

    Subclasses set ``name``, ``needs_clean_logits`` (whether :meth:`loss` reads ``ctx.logits_clean``)
    and implement :meth:`make_attack` (``None``: no adversary) and :meth:`loss`.
    """

    name = "base"
    needs_clean_logits = True

    def __init__(self, defense: DefenseConfig, adversary: AdversaryConfig):
        self.defense = defense
        self.adversary = adversary
        self.attack: Optional[Attack] = self.make_attack(adversary)

    @property
    def has_adversary(self) -> bool:
        return self.attack is not None

    def make_attack(self, adversary: AdversaryConfig) -> Optional[Attack]:
        return None

    def craft(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        """``x_adv`` for the batch (detached), crafted on the unwrapped model; None without an adversary."""
        if self.attack is None:
            return None
        with crafting_mode(net, self.adversary.bn_mode):
            return self.attack(net, x, y)

    def loss(self, ctx) -> torch.Tensor:
        """The base loss from the context's logits; report unweighted parts with ``ctx.report``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(attack={self.attack!r})"


class Regularizer:
    """An attention regularizer: extra terms on the pair (x, x_adv).

    Subclasses set ``name`` and implement :meth:`layers` (activations to capture during the main
    forward pass) and :meth:`__call__` (weighted contributions, summed into the total loss; the
    unweighted values go to ``ctx.report``). A term whose weight is 0 is skipped, not computed.
    """

    name = "regularizer"

    def __init__(self, defense: DefenseConfig):
        self.defense = defense

    def layers(self, model: nn.Module) -> List[str]:
        return []

    def __call__(self, ctx) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
