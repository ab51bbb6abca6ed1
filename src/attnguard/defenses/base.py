"""What every defense part shares: the base-objective and regularizer interfaces.

A training objective is one *base* (standard, madry, alp, trades: what the model is trained to
classify, and how ``x_adv`` is crafted) plus any number of *regularizers* (aad, at, afm: extra
terms pairing clean and adversarial examples). Both read a shared
:class:`~attnguard.defenses.context.Context`, which holds the step's logits and activations,
so no part runs the model again for what another part already computed. A regularizer never
changes what its base computes: the base declares which forward passes are its own
(:class:`BaseObjective`), and any other pass leaves the BatchNorm running statistics alone.

Each part declares its settings as a ``Params`` dataclass (:mod:`~attnguard.defenses.params`),
which becomes its ``defense.<name>`` config section; a part receives only its own section.

Naming: ``model`` is the model as the caller passes it (possibly a DDP or ``torch.compile``
wrapper); ``inner`` is the unwrapped model (:func:`unwrap`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.base import Attack
from ..utils.modes import eval_mode
from .adversary import AdversaryConfig
from .params import CLASSIFICATION_LOSSES, NoParams

# The base a spelling without one gets, unless its regularizers name another (``default_base``).
DEFAULT_BASE = "madry"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside any nesting of wrappers, else the model itself.

    Strips DistributedDataParallel / DataParallel (``model.module``) and ``torch.compile``
    (``model._orig_mod``) in any order and depth: ``compile(DDP(m))``, ``DDP(compile(m))`` and
    ``compile(m)`` all give ``m``. Metadata (attention layer, group layers, classifier), hooks, the
    adversary and any extra forward pass use the inner module; only the one main forward runs
    through the wrapper, so DDP sees exactly one forward per backward.
    """
    while True:
        # _modules, not getattr: a compiled module forwards unknown attributes to the module it wraps
        children = getattr(model, "_modules", {})
        inner = children.get("_orig_mod", children.get("module"))
        if not isinstance(inner, nn.Module):
            return model
        model = inner


@contextmanager
def crafting_mode(model: nn.Module, bn_mode: str):
    """Put ``model`` in eval mode while crafting when ``bn_mode == "eval"``; restore every module's flag after."""
    if bn_mode != "eval":
        yield
        return
    with eval_mode(model):
        yield


@contextmanager
def frozen_bn_statistics(model: nn.Module):
    """BatchNorm layers in train mode normalize with batch statistics but leave their running statistics alone.

    For forward passes that are a training device rather than the base's own pass (a clean pass
    a regularizer needs next to madry's adversarial one; masked images): they must not shift the
    running statistics used at test time. Turning ``track_running_stats`` off for the block makes
    BN skip the update of ``running_mean``/``running_var`` and of ``num_batches_tracked`` (which
    a ``momentum=None`` layer reads as its averaging factor), with no in-place write to buffers
    an earlier forward saved for backward.
    """
    layers = [m for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


def classification_loss(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_c, averaged over the batch, of float32 ``logits [B, K]`` against the labels ``y [B]``.

    ``"ce"``: softmax cross-entropy. ``"soft-margin"``: AAD eq. 10's L_c, "the standard
    multi-label soft margin loss" with one-hot targets t,
    ``mean_b -(1/K) sum_k [t_k log sigmoid(z_k) + (1 - t_k) log sigmoid(-z_k)]``
    (``torch.nn.functional.multilabel_soft_margin_loss``).
    """
    logits = logits.float()
    if kind == "ce":
        return F.cross_entropy(logits, y)
    if kind == "soft-margin":
        target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        return F.multilabel_soft_margin_loss(logits, target)
    raise ValueError(f"classification loss must be one of {', '.join(CLASSIFICATION_LOSSES)}, got {kind!r}")


class BaseObjective:
    """A base objective: what the model is trained to classify, and the adversary that crafts ``x_adv``.

    Subclasses set ``name``, ``Params`` (their parameter dataclass; :class:`NoParams` when they
    have none), implement :meth:`make_attack` (``None``: no adversary) and :meth:`loss`, and
    declare which forward passes are their own (checked when the subclass is defined):

    * ``needs_clean_logits``: :meth:`loss` reads ``ctx.logits_clean``, so the clean pass is the
      base's own: it runs as a training pass (BatchNorm updates its running statistics).
      Otherwise the base owns only the adversarial pass, and a clean pass that a regularizer
      needs runs apart from it with BatchNorm running statistics frozen
      (:class:`~attnguard.defenses.context.Context`): a regularizer never changes what its base
      computes.
    * ``fuses_clean``: the base's practice is one batch ``cat([x, x_adv])`` (Kannan et al.'s
      mixed clean/adversarial minibatches), so with ``fused_forward`` on both halves go through
      the model together and BatchNorm sees mixed batch statistics. Requires ``needs_clean_logits``.
    """

    name = "base"
    Params = NoParams
    _DECLARED = ("needs_clean_logits", "fuses_clean")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for attr in BaseObjective._DECLARED:
            if not isinstance(getattr(cls, attr, None), bool):
                raise TypeError(f"base objective {cls.__name__} must declare {attr} = True or False "
                                "(which forward passes are its own; see BaseObjective)")
        if cls.fuses_clean and not cls.needs_clean_logits:
            raise TypeError(f"base objective {cls.__name__}: fuses_clean needs needs_clean_logits")

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
    reads_cam = False  # whether __call__ reads ctx.cam() (a double backward without the closed form)
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
