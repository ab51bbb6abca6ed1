"""Ensemble adversarial training (Tramèr et al. 2018, "Ensemble Adversarial Training: Attacks and
Defenses", ICLR; AAD's ref. 41).

AAD sec. 5.5 / Fig. 10 analyses "adversarial training on an ensemble of four attack methods [41]".
Tramèr et al.'s method is not a mix of attack methods: it trains on adversarial examples
*transferred* from fixed, separately trained models, which decouples crafting from the model being
trained. Their released ImageNet model "Step L.L. on ensemble of 4 models" (ens4-adv-Inception-v3)
is most likely what AAD's "ensemble of four" names. So this base implements Tramèr et al.'s reading:

* **The sources**: ``defense.ensemble.sources``, run directories, ``.pt`` checkpoints or
  ``.safetensors`` files of separately trained models, loaded once with :func:`attnguard.load_model`
  (eval mode, parameters frozen, moved once to the training device). A missing file is a one-line
  :class:`~attnguard.errors.ConfigError` when the objective is built, before training starts.
* **The source of each batch**: Tramèr et al. alternate per batch between the model being trained
  and the static models (``include_self``). We rotate in a fixed round robin,
  ``[current model, source 1, ..., source n]``, so that a run is reproducible from its config;
  their released MNIST code (ftramer/ensemble-adv-training, ``tf_train``) draws the source uniformly
  at random per batch, which gives each source the same share on average. :meth:`EnsembleAT.seek`
  sets the position (a resumed run at step ``s`` calls ``seek(s)`` to continue the sequence).
* **The attack**: single-step, ``stepll`` (their ImageNet models; AAD eq. 4) or ``fgsm`` (their
  MNIST code), at ``adversary.eps``, every example attacked. FGSM uses the source's predicted
  label rather than the true one (their code's "training" loss; Kurakin et al.'s label leaking fix).
* **The loss**: Kurakin et al.'s mixed-batch loss (:func:`~attnguard.defenses.stepll_at.kurakin_loss`)
  on the B clean and B adversarial examples of a step, ``(sum CE(f(x)) + lambda sum CE(f(x_adv))) /
  (B + lambda B)``; ``lambda = 1`` is the released code's ``0.5 (CE clean + CE adv)``. Clean and
  adversarial halves are one batch (``fuses_clean``), as in Kurakin et al.'s mixed minibatches.

Not implemented: the other reading of AAD's sentence (a mix of four attack methods crafted on the
model itself). With no sources the base trains on single-step examples of the current model alone
(Tramèr et al.'s "adversarial training" baseline, their ``train_adv`` without static models) and warns.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.fgsm import FGSM
from ..attacks.stepll import StepLL
from ..errors import ConfigError
from .adversary import AdversaryConfig
from .base import BaseObjective, crafting_mode
from .params import check_bool, check_weight
from .stepll_at import kurakin_loss

ENSEMBLE_ATTACKS = ("stepll", "fgsm")
SELF = "self"  # the schedule's name for the model being trained


@dataclass
class EnsembleParams:
    """The ``defense.ensemble`` section.

    Attributes:
        sources: paths of the static models (run directories, ``.pt`` or ``.safetensors``).
        attack: the single-step attack crafted on each source: ``stepll`` or ``fgsm``.
        include_self: whether the model being trained is one of the rotating sources (Tramèr et al.).
        weight: ``lambda``, the weight of the adversarial half in the loss
            (``defense.ensemble.lambda``; 1 = the released code's equal halves).
    """

    sources: List[str] = field(default_factory=list)
    attack: str = "stepll"
    include_self: bool = True
    weight: float = field(default=1.0, metadata={"key": "lambda"})

    def __post_init__(self):
        if isinstance(self.sources, (str, Path)):
            self.sources = [self.sources]
        if not isinstance(self.sources, (list, tuple)) or not all(isinstance(s, (str, Path)) for s in self.sources):
            raise ConfigError(f"defense.ensemble.sources must be a list of paths, got {self.sources!r}")
        self.sources = [str(s) for s in self.sources]
        if self.attack not in ENSEMBLE_ATTACKS:
            raise ConfigError(f"defense.ensemble.attack must be one of {', '.join(ENSEMBLE_ATTACKS)}, "
                              f"got {self.attack!r}")
        check_bool("defense.ensemble.include_self", self.include_self)
        self.weight = check_weight("defense.ensemble.lambda", self.weight)
        if not self.include_self and not self.sources:
            raise ConfigError("defense.ensemble: include_self is false and there are no sources; "
                              "list static models in defense.ensemble.sources")


def load_static_model(path: str) -> nn.Module:
    """A source model: loaded on the CPU, eval mode, every parameter frozen (requires_grad False)."""
    from ..rundir import load_model  # rundir is the layer above the defenses

    if not Path(path).exists():
        raise ConfigError(f"defense.ensemble.sources: {path} does not exist (give a run directory, "
                          ".pt checkpoint or .safetensors file of a trained model)")
    model = load_model(path, "cpu").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _fact(model: nn.Module, attr: str):
    """A model fact (``num_classes``, ``input_size``) in a comparable form, or None."""
    value = getattr(model, attr, None)
    return tuple(value) if isinstance(value, (list, tuple, torch.Size)) else value


class EnsembleAT(BaseObjective):
    """Tramèr et al.'s ensemble adversarial training: single-step examples from a rotating source.

    Attributes:
        static: the frozen source models (in ``sources`` order).
        schedule: the round robin, e.g. ``["self", 0, 1, 2]`` (indices into ``static``).
        position: how many batches have been crafted (the next source is ``schedule[position % n]``).
        last_source: the schedule entry of the last batch.
    """

    name = "ensemble"
    needs_clean_logits = True
    fuses_clean = True
    Params = EnsembleParams

    def __init__(self, params=None, adversary: Optional[AdversaryConfig] = None):
        super().__init__(params, adversary)
        self.static = [load_static_model(p) for p in self.params.sources]
        self.schedule: List[Union[str, int]] = ([SELF] if self.params.include_self else []) + list(range(len(self.static)))
        self.position = 0
        self.last_source: Optional[Union[str, int]] = None
        self._placed = [False] * len(self.static)
        if not self.static:
            warnings.warn("defense 'ensemble' without defense.ensemble.sources trains on the current model's "
                          "single-step examples alone (no static models)", stacklevel=2)

    def make_attack(self, adversary: AdversaryConfig):
        if adversary.norm != "linf":
            raise ConfigError("ensemble crafts single-step L-inf examples (StepLL, FGSM); set adversary.norm: linf")
        if self.params.attack == "stepll":
            return StepLL(adversary.eps, skip_misclassified=False)
        return FGSM(adversary.eps, loss="ce", norm="linf", skip_misclassified=False)

    def seek(self, position: int) -> None:
        """Continue the round robin at batch ``position`` (a resumed run passes its step count)."""
        self.position = int(position)

    def source_at(self, position: int) -> Union[str, int]:
        return self.schedule[position % len(self.schedule)]

    def _static_on(self, i: int, inner: nn.Module, device) -> nn.Module:
        """Source ``i`` on the training device (moved once) after checking it fits the trained model."""
        model = self.static[i]
        if not self._placed[i]:
            for attr in ("num_classes", "input_size"):
                want, got = _fact(inner, attr), _fact(model, attr)
                if want is not None and got is not None and want != got:
                    raise ConfigError(f"defense.ensemble.sources: {self.params.sources[i]} has {attr} {got}, "
                                      f"the trained model {want}")
            self.static[i] = model = model.to(device)
            self._placed[i] = True
        return model

    def craft(self, inner, x: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        which = self.source_at(self.position)
        self.position += 1
        self.last_source = which
        if which == SELF:
            source, mode = inner, crafting_mode(inner, self.adversary.bn_mode)
        else:
            source, mode = self._static_on(which, inner, x.device), nullcontext()
        with mode:
            labels = y
            if self.params.attack == "fgsm":
                with torch.no_grad():
                    labels = source(x).argmax(1)
            return self.attack(source, x, labels)

    def loss(self, ctx) -> torch.Tensor:
        ce_clean = F.cross_entropy(ctx.logits_clean.float(), ctx.y, reduction="none")
        ce_adv = F.cross_entropy(ctx.logits_adv.float(), ctx.y, reduction="none")
        loss = kurakin_loss(ce_clean, ce_adv, self.params.weight)
        ctx.report("ce", loss)
        ctx.report("ce_clean", ce_clean.mean())
        ctx.report("ce_adv", ce_adv.mean())
        return loss
