"""Differentiable Grad-CAM (Selvaraju et al. 2017; AAD eq. 1-2) with a closed-form fast path.

``g(x) = ReLU(sum_k alpha_k^c A^k)``, ``alpha_k^c = mean_ij d y_c / d A^k_ij``  (AAD eq. 2).

When the attention layer feeds nothing but global average pooling and a linear classifier
``y = W GAP(A) + b``, then ``d y_c / d A^k_ij = W[c, k] / (h w)`` for every cell, so
``g(x) = ReLU(sum_k W[c, k] A^k) / (h w)`` exactly (this is CAM, Zhou et al. 2016). That path
needs no backward pass at all and is used automatically where it applies.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError, DataError
from .hooks import LayerRef, forward_with_activations, resolve_layer


def closed_form_classifier(model: nn.Module, layer: LayerRef | None) -> Optional[nn.Linear]:
    """The linear classifier if the closed-form CAM is exact for ``layer`` of ``model``, else None.

    attnguard models record this in their registry entry (``model.classifier``); other models
    never take the fast path.
    """
    cls_name = getattr(model, "classifier", None)
    att_name = getattr(model, "attention_layer", None)
    if cls_name is None or att_name is None:
        return None
    if resolve_layer(model, layer) is not model.get_submodule(att_name):
        return None
    fc = model.get_submodule(cls_name)
    return fc if isinstance(fc, nn.Linear) else None


def _targets(logits: torch.Tensor, target) -> torch.Tensor:
    if target is None:
        return logits.argmax(1)
    if isinstance(target, int):
        return torch.full((logits.shape[0],), target, dtype=torch.long, device=logits.device)
    target = torch.as_tensor(target, device=logits.device).long()
    if target.shape != (logits.shape[0],):
        raise ConfigError(f"target must hold one class index per example ({logits.shape[0]}), got shape "
                         f"{tuple(target.shape)}")
    return target


def cam_from_activation(
    logits: torch.Tensor,
    activation: torch.Tensor,
    target: torch.Tensor,
    *,
    classifier: Optional[nn.Linear] = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Grad-CAM ``[B, h, w]`` from a forward pass already made (logits and the layer's output).

    With ``classifier`` given, uses the closed form (exact, no backward pass). Otherwise
    differentiates the target scores w.r.t. ``activation``; ``create_graph=True`` keeps that
    derivative in the graph so the map can be trained through (second-order terms included).
    """
    if activation.dim() != 4:
        raise ValueError(f"Grad-CAM needs a [B, C, h, w] feature map, got shape {tuple(activation.shape)}")
    h, w = activation.shape[-2:]
    # The map is built in float32 even under bf16/fp16 autocast: the regularizers difference two
    # maps of similar values, where bf16's 8-bit mantissa costs 1-2% (the forward stays in autocast).
    with fp32_region(activation):
        act = activation.float()
        if classifier is not None:
            weights = classifier.weight[target].float()  # [B, C]
            cam = torch.einsum("bc,bchw->bhw", weights, act) / (h * w)
            return torch.relu(cam)
        score = logits.gather(1, target[:, None]).float().sum()
        (grads,) = torch.autograd.grad(score, activation, create_graph=create_graph, retain_graph=True)
        alpha = grads.float().mean(dim=(2, 3), keepdim=True)
        return torch.relu((alpha * act).sum(1))


def fp32_region(tensor: torch.Tensor):
    """A block where autocast is off for ``tensor``'s device, so float32 inputs give float32 math.

    Attention terms (Grad-CAM maps, AFM distances, AAD preservation) are computed inside it from
    ``.float()`` inputs; outside autocast it changes nothing.
    """
    kind = tensor.device.type
    available = getattr(torch.amp, "is_autocast_available", lambda _k: kind in ("cpu", "cuda"))
    return torch.autocast(kind, enabled=False) if available(kind) else nullcontext()


def grad_cam(
    model: nn.Module,
    layer: LayerRef | None,
    x: torch.Tensor,
    target=None,
    create_graph: bool = False,
    *,
    closed_form: Optional[bool] = None,
    return_logits: bool = False,
):
    """Grad-CAM maps ``[B, h, w]`` of ``layer`` for inputs ``x`` (AAD eq. 1-2), unnormalized.

    Args:
        model: any classifier returning logits; attnguard models take [0, 1] pixels.
        layer: the module or its dotted name; ``None`` means the model's attention layer.
        x: inputs ``[B, C, H, W]``.
        target: class indices ``[B]`` or one int; default the predicted class. Pass the true
            labels to explain the true class.
        create_graph: keep the map differentiable w.r.t. the parameters (and ``x``, if it
            requires grad). Training and the A3 attack use this. Otherwise the map is detached.
        closed_form: ``None`` uses the exact closed form when the layer feeds only GAP and a
            linear classifier; ``False`` forces the gradient path; ``True`` requires the closed form.
        return_logits: also return the logits of the same forward pass.

    Use :func:`normalize_cam` and :func:`upsample_cam` for display.
    """
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise DataError(f"grad_cam needs images [B, C, H, W], got {shape}")
    fc = closed_form_classifier(model, layer)
    if closed_form is True and fc is None:
        raise ConfigError("closed-form CAM needs an attnguard model whose attention layer feeds GAP + linear")
    if closed_form is False:
        fc = None
    # the closed form of a detached map needs no autograd graph at all
    with torch.enable_grad() if create_graph or fc is None else torch.no_grad():
        if not create_graph and fc is None and not x.requires_grad:
            x = x.detach().requires_grad_(True)  # makes A require grad even for frozen models
        logits, (act,) = forward_with_activations(model, x, [resolve_layer(model, layer)])
        cam = cam_from_activation(logits, act, _targets(logits, target), classifier=fc,
                                  create_graph=create_graph)
    if not create_graph:
        cam, logits = cam.detach(), logits.detach()
    return (cam, logits) if return_logits else cam


def class_activation_feature(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer: LayerRef | None = None,
                             create_graph: bool = True) -> torch.Tensor:
    """AFM eq. 3: the ReLU'd, unnormalized true-class CAM of the penultimate conv layer, ``[B, h, w]``.

    The AFM paper drops CAM's [0, 1] normalization on purpose (it would rescale the features
    being matched), so none is applied here.
    """
    return grad_cam(model, layer, x, target=y, create_graph=create_graph)


def normalize_cam(cam: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalize each map of ``[B, h, w]`` to [0, 1] (for display and comparisons)."""
    flat = cam.flatten(1)
    lo = flat.min(1, keepdim=True).values
    hi = flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(eps)).view_as(cam)


def upsample_cam(cam: torch.Tensor, size) -> torch.Tensor:
    """Bilinear upsampling of ``[B, h, w]`` maps to ``size`` (H, W)."""
    return torch.nn.functional.interpolate(cam[:, None], size=tuple(size), mode="bilinear",
                                           align_corners=False)[:, 0]
