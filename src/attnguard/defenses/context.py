"""The shared state of one training step: its forward passes, their logits, activations and CAMs.

Which passes run, and how, follows one rule: a regularizer never changes what its base computes.

* The base's own passes (:class:`~attnguard.defenses.base.BaseObjective`: the adversarial one,
  and the clean one when ``needs_clean_logits``) are training passes: BatchNorm normalizes with
  their batch statistics and updates its running statistics, exactly as the base alone does.
  A base that ``fuses_clean`` (alp, trades: Kannan et al.'s mixed clean/adversarial batches) runs
  both as one ``torch.cat([x, x_adv])`` batch when ``fused_forward`` is on: one forward, one set
  of hooks, one gradient call for both Grad-CAMs.
* A clean pass that only a regularizer reads (next to madry) runs on first use, through the
  unwrapped model, with the BatchNorm running statistics frozen
  (:func:`~attnguard.defenses.base.frozen_bn_statistics`): madry's loss, its batch statistics and
  the running statistics it leaves are those of madry alone.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import cam_from_activation, closed_form_classifier
from ..attention.hooks import forward_with_activations
from .base import frozen_bn_statistics, unwrap


def _run(caller: nn.Module, inner: nn.Module, inputs: torch.Tensor, layers: Sequence[str]):
    """Logits of ``caller(inputs)`` and the outputs of ``layers`` (hooked on ``inner``, the unwrapped model)."""
    return forward_with_activations(caller, inputs, list(layers), hooked=inner)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(1) == y).float().mean()


class Context:
    """Everything the base loss and the regularizers read for one batch.

    Args:
        model: the model as passed in (possibly a DDP or compile wrapper); only the main forward uses it.
        x, y, x_adv: the batch and its adversarial counterpart (``x_adv`` None without an adversary).
        fused_forward: run a base-owned clean pass and the adversarial pass as one ``cat([x, x_adv])``
            batch (the objective passes ``fused_forward and base.fuses_clean``).
        layers: activations to capture (the regularizers' ``layers()``).
        need_clean: the base reads the clean logits, so the clean pass is the base's own (run now,
            a training pass). False: only the adversarial pass is the base's; a clean pass runs
            the first time something reads the clean side, with BatchNorm running statistics frozen.

    Attributes:
        inner: the unwrapped model (metadata, hooks, extra forwards).
        logits_clean, logits_adv: ``[B, K]`` logits; when the clean pass is not the base's,
            reading ``logits_clean`` (or a clean activation, or the CAMs) runs it.
        fused: whether the clean and adversarial halves went through the model as one batch.
        parts: unweighted values reported so far (detached 0-dim tensors).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: Optional[torch.Tensor], *,
                 fused_forward: bool = True, layers: Sequence[str] = (), need_clean: bool = True):
        self.model = model
        self.inner = unwrap(model)
        self.x, self.y, self.x_adv = x, y, x_adv
        self.fused_forward = fused_forward
        self.layers: List[str] = list(dict.fromkeys(layers))
        self._logits_clean: Optional[torch.Tensor] = None
        self.logits_adv: Optional[torch.Tensor] = None
        self._acts_clean: Dict[str, torch.Tensor] = {}
        self._acts_adv: Dict[str, torch.Tensor] = {}
        self._joint: Optional[Tuple[torch.Tensor, Dict[str, torch.Tensor]]] = None
        self._cam: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._clean_pending = False
        # a clean pass run later (on first use) keeps the gradient mode of the step
        self._grad_enabled = torch.is_grad_enabled()
        self.parts: Dict[str, torch.Tensor] = {}
        self.fused = False
        self._forward(need_clean)

    def _forward(self, base_clean: bool) -> None:
        x, x_adv, layers = self.x, self.x_adv, self.layers
        if x_adv is None:
            if layers:
                raise ValueError("attention regularizers need adversarial examples (the base has no adversary)")
            self._logits_clean, _ = _run(self.model, self.inner, x, [])
            return
        if base_clean and self.fused_forward:
            b = x.shape[0]
            logits, acts = _run(self.model, self.inner, torch.cat([x, x_adv]), layers)
            self.fused = True
            self._joint = (logits, dict(zip(layers, acts)))
            self._logits_clean, self.logits_adv = logits[:b], logits[b:]
            self._acts_clean = {n: a[:b] for n, a in zip(layers, acts)}
            self._acts_adv = {n: a[b:] for n, a in zip(layers, acts)}
            return
        # Separate passes. The adversarial one is the main pass through the wrapper (so DDP sees
        # one forward per backward); it runs first, so it draws what the base alone draws from
        # the RNG (dropout), whatever runs after it.
        self.logits_adv, acts = _run(self.model, self.inner, x_adv, layers)
        self._acts_adv = dict(zip(layers, acts))
        if base_clean:
            self._clean_pass(frozen=False)
        else:
            self._clean_pending = True

    def _clean_pass(self, frozen: bool) -> None:
        """The clean forward through the unwrapped model; ``frozen``: BN running statistics untouched."""
        freeze = frozen_bn_statistics(self.inner) if frozen else nullcontext()
        with torch.set_grad_enabled(self._grad_enabled), freeze:
            self._logits_clean, acts = _run(self.inner, self.inner, self.x, self.layers)
        self._acts_clean = dict(zip(self.layers, acts))

    def _ensure_clean(self) -> None:
        if self._clean_pending:
            self._clean_pending = False
            self._clean_pass(frozen=True)

    @property
    def logits_clean(self) -> Optional[torch.Tensor]:
        self._ensure_clean()
        return self._logits_clean

    def activations(self, layer: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(clean, adversarial)`` outputs of a layer some regularizer listed in ``layers()``."""
        if layer not in self._acts_adv:
            raise KeyError(f"layer '{layer}' was not captured; a regularizer must list it in layers()")
        self._ensure_clean()
        return self._acts_clean[layer], self._acts_adv[layer]

    def cam(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """True-class Grad-CAMs ``(g(x), g(x_adv))``, each ``[B, h, w]``, of the attention layer; differentiable.

        Unnormalized and ReLU'd: AAD eq. 2 and AFM eq. 3 (phi_CAM) are the same map. Computed once
        per step and shared. Uses the exact closed form when the attention layer feeds only
        GAP + linear, else the gradient path with ``create_graph=True``: one gradient call for
        both halves when the forward was fused (examples do not interact after the attention
        layer in the models where that path is taken, which have no BatchNorm there), one per
        pass otherwise.
        """
        if self._cam is None:
            layer = self.inner.attention_layer
            fc = closed_form_classifier(self.inner, None)
            if self._joint is not None and layer in self._joint[1]:
                logits, acts = self._joint
                g = cam_from_activation(logits, acts[layer], torch.cat([self.y, self.y]), classifier=fc,
                                        create_graph=True)
                b = self.x.shape[0]
                self._cam = (g[:b], g[b:])
            else:
                a_clean, a_adv = self.activations(layer)
                self._cam = (
                    cam_from_activation(self.logits_clean, a_clean, self.y, classifier=fc, create_graph=True),
                    cam_from_activation(self.logits_adv, a_adv, self.y, classifier=fc, create_graph=True),
                )
        return self._cam

    def probabilities(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Softmax of the clean and adversarial logits (float32)."""
        return F.softmax(self.logits_clean.float(), 1), F.softmax(self.logits_adv.float(), 1)

    def report(self, name: str, value: torch.Tensor) -> None:
        """Record an unweighted value as a part (detached; no host sync)."""
        self.parts[name] = value.detach()

    def accuracy_parts(self) -> None:
        """``acc_clean`` / ``acc_adv`` of the passes that ran (reporting never runs a pending clean pass)."""
        if self._logits_clean is not None:
            self.parts["acc_clean"] = _accuracy(self.logits_clean, self.y)
        if self.logits_adv is not None:
            self.parts["acc_adv"] = _accuracy(self.logits_adv, self.y)
