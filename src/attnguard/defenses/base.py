"""What every defense part shares: the base-objective and regularizer interfaces.

A training objective is one *base* (standard, madry, alp, trades: what the model is trained to
classify, and how ``x_adv`` is crafted) plus any number of *regularizers* (aad, at, afm: extra
terms pairing clean and adversarial examples). Both read a shared
:class:`~attnguard.defenses.context.Context`, which holds one forward pass's logits and
activations, so no part runs the model again for what another part already computed.

Each part declares its settings as a ``Params`` dataclass (:mod:`~attnguard.defenses.params`),
which becomes its ``defense.<name>`` config section; a part receives only its own section.

Naming: ``model`` is the model as the caller passes it (possibly a DDP or ``torch.compile``
wrapper); ``inner`` is the unwrapped model (:func:`unwrap`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List, Optional

import torch
from torch import nn

from ..attacks.base import Attack
from ..utils.modes import eval_mode
from .adversary import AdversaryConfig
from .params import NoParams

# The base a spelling without one gets, unless its regularizers name another (``default_base``).
DEFAULT_BASE = "madry"


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


class BaseObjective:
    """A base objective: what the model is trained to classify, and the adversary that crafts ``x_adv``.

    Subclasses set ``name``, ``needs_clean_logits`` (whether :meth:`loss` reads ``ctx.logits_clean``),
    ``Params`` (their parameter dataclass; :class:`NoParams` when they have none) and implement
    :meth:`make_attack` (``None``: no adversary) and :meth:`loss`.
    """

    name = "base"
    needs_clean_logits = True
    Params = NoParams

    def __init__(self, params=None, adversary: Optional[AdversaryConfig] = None):
        self.params = params if params is not None else self.Params()
        self.adversary = adversary if adversary is not None else AdversaryConfig()
        self.attack: Optional[Attack] = self.make_attack(self.adversary)

    @property
    def has_adversary(self) -> bool:
        return self.attack is not None

    def make_attack(self, adversary: AdversaryConfig) -> Optional[Attack]:
        return None

    def craft(self, inner: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        """``x_adv`` for the batch (detached), crafted on ``inner``, the unwrapped model; None without an adversary."""
        if self.attack is None:
            return None
        with crafting_mode(inner, self.adversary.bn_mode):
            return self.attack(inner, x, y)

    def loss(self, ctx) -> torch.Tensor:
        """The base loss from the context's logits; report unweighted parts with ``ctx.report``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r}, attack={self.attack!r})"


class Regularizer:
    """An attention regularizer: extra terms on the pair (x, x_adv).

    Subclasses set ``name``, ``Params`` (their parameter dataclass), ``default_base`` (the base a
    spelling without one uses, e.g. ``afm`` alone means ``alp+afm``) and implement :meth:`layers`
    (activations to capture during the main forward pass; called with the unwrapped model) and
    :meth:`__call__` (weighted contributions, summed into the total loss; the unweighted values go
    to ``ctx.report``). A term whose weight is 0 is skipped, not computed.
    """

    name = "regularizer"
    Params = NoParams
    default_base = DEFAULT_BASE

    def __init__(self, params=None):
        self.params = params if params is not None else self.Params()

    def layers(self, inner: nn.Module) -> List[str]:
        return []

    def __call__(self, ctx) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"
