"""Activation-based attention maps (Zagoruyko & Komodakis 2017), as paired by AT+ALP eq. 4."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from .hooks import LayerRef, forward_with_activations


def attention_vector(activation: torch.Tensor, power: float = 2.0, eps: float = 1e-12) -> torch.Tensor:
    """``Q / ||Q||_2`` with ``Q = vec(sum_c |A_c|^power)`` for a ``[B, C, h, w]`` activation -> ``[B, h*w]``.

    This is the spatial attention map F(A) of AT+ALP eq. 4, vectorized and L2-normalized per
    example. ``eps`` guards against an all-zero map (dead ReLUs) without detaching anything.
    """
    if activation.dim() != 4:
        raise ValueError(f"activation attention needs [B, C, h, w], got shape {tuple(activation.shape)}")
    q = activation.abs().pow(power).sum(1).flatten(1)
    return q / q.norm(dim=1, keepdim=True).clamp_min(eps)


def attention_map(activation: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """The spatial map ``F(A) = sum_c |A_c|^power`` of a ``[B, C, h, w]`` activation -> ``[B, h, w]``.

    AT+ALP eq. 4 pairs this map vectorized and L2-normalized (:func:`attention_vector`); the
    studies draw it (AT+ALP Fig. 4) and measure it inside object boxes (Table 3).
    """
    if activation.dim() != 4:
        raise ValueError(f"activation attention needs [B, C, h, w], got shape {tuple(activation.shape)}")
    return activation.abs().pow(power).sum(1)


def activation_attention(
    model: nn.Module, x: torch.Tensor, layers: Optional[Sequence[LayerRef]] = None, power: float = 2.0
) -> List[torch.Tensor]:
    """AT+ALP attention vectors ``[B, h_j*w_j]`` for each layer (default: the model's group layers)."""
    if layers is None:
        layers = getattr(model, "group_layers", None)
        if not layers:
            raise ValueError("layers is required for models that are not attnguard models")
    _, acts = forward_with_activations(model, x, list(layers))
    return [attention_vector(a, power) for a in acts]
