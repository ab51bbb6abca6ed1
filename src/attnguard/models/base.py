"""The model wrapper every attnguard model shares: normalization inside, [0, 1] pixels outside."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn


class NormalizedModel(nn.Module):
    """``net((x - mean) / std)`` plus the metadata attention methods need.

    Attacks and defenses work on [0, 1] pixels, so the per-channel normalization lives here,
    inside the differentiable graph, rather than in the data pipeline.

    Attributes:
        arch: registry name of the architecture.
        attention_layer: dotted name (relative to this module) of the layer whose output is
            the Grad-CAM / CAM feature map (the last convolutional block).
        group_layers: dotted names of the group outputs used by attention pairing (AT+ALP eq. 4).
        classifier: dotted name of the final ``nn.Linear`` when ``attention_layer`` feeds
            nothing but global average pooling and that linear layer, which is the condition for
            the closed-form Grad-CAM. ``None`` otherwise.
        config: everything needed to rebuild the model (stored in checkpoints).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        arch: str,
        num_classes: int,
        input_size: Sequence[int],
        attention_layer: str,
        group_layers: Sequence[str],
        classifier: Optional[str],
        config: Optional[dict] = None,
    ):
        super().__init__()
        c = int(input_size[0])
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std need {c} values for {c}-channel inputs, got {len(mean)}/{len(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, c, 1, 1))
        self.net = net
        self.arch = arch
        self.num_classes = int(num_classes)
        self.input_size = tuple(int(s) for s in input_size)
        self.attention_layer = attention_layer
        self.group_layers = list(group_layers)
        self.classifier = classifier
        self.config = dict(config or {})
        for name in [attention_layer, *self.group_layers] + ([classifier] if classifier else []):
            self.get_submodule(name)  # fail at build time, not at the first attention call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))

    def extra_repr(self) -> str:
        return f"arch={self.arch}, num_classes={self.num_classes}, input_size={self.input_size}"
