"""Raw feature matching: the two alternatives AFM compares its CAM matching with (Li, Feng et al. 2020, Fig. 7).

AFM sec. III-A-2 names them before rejecting them: "the naive implement by directly matching the
feature maps in penultimate layer between the images is not effective, as the spatial structure
maintained in higher layers might be not class-specific. A simple alternative to the single-layer
scheme is matching the feature maps of multilayers. ... it still suffers from this problem at a
reduced level". Fig. 7 shows their loss surfaces: "(a) Standard; (b) multilayers; (c) single
layer, and (d) proposed method". The reading implemented here:

* ``fm-single`` (Fig. 7 (c)): phi_j is the feature map ``A`` itself, the output of the matched layer
  (``defense.fm-single.layer``; default the model's attention layer, the penultimate conv layer that
  AFM's CAM is built on), and the distance is eq. 4, Johnson et al.'s feature reconstruction loss:
  ``D = mean_b ||A(x) - A(x_adv)||_2^2 / (C_j H_j W_j)``, the mean squared difference over the
  layer's C_j x H_j x W_j values (a layer with a flat output counts as C_j x 1 x 1).
* ``fm-multi`` (Fig. 7 (b)): eq. 4 at each of several layers (``defense.fm-multi.layers``; default
  the model's group layers, e.g. LeNet's two conv blocks or ResNet's layer1..layer3, the last being
  the penultimate conv layer), summed over the layers; each term is normalized by its own
  C_j H_j W_j, so no layer weighs more for being larger, and ``fm-multi`` at the attention layer
  alone is ``fm-single``.
* AFM eq. 6 with ``D`` in place of ``D_CAM``: ``lambda1 * D`` on the ALP loss (eq. 2), so
  ``fm-single`` alone means ``alp+fm-single``; lambda1 = 10, the paper's value for its own term
  (Fig. 9), so that the three matching operations differ only in the feature they match. The paper
  does not say whether the variants kept the norm decay; it is a decay of phi_CAM, so it is left
  out: here lambda2 * L_norm belongs to ``afm``, whose norm decay is inert at its default weight anyway.

Scale (tests/defenses/test_fidelity_alive.py, the default run's LeNet, 64 test digits): at lambda1 = 10
the matching term moves the parameter gradient by 0.94 of the rest (``fm-single``) and 1.3
(``fm-multi``), the order of ``afm-cam``'s 1.1: unlike ``afm``, whose Grad-CAM carries 1 / (h w) per
cell (share 3e-5), raw feature maps sit on the scale of the activations, so the paper's weight acts
without rescaling.

Parts: ``fm_single`` and ``fm_multi`` (unweighted D). Computed in float32, also under autocast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from ..attention.gradcam import fp32_region
from .afm import feature_distance, feature_layer
from .base import Regularizer
from .params import check_layer_name, check_layer_names, check_weight


@dataclass
class FMSingleParams:
    """The ``defense.fm-single`` section.

    Attributes:
        lambda1: weight of the raw feature distance (AFM eq. 4 and 6 on A; 10, the paper's lambda1).
        layer: the matched layer; None (not written to config.yaml): the model's attention layer.
    """

    lambda1: float = 10.0
    layer: Optional[str] = field(default=None, metadata={"omit_none": True})

    section = "fm-single"

    def __post_init__(self):
        self.lambda1 = check_weight(f"defense.{self.section}.lambda1", self.lambda1)
        self.layer = check_layer_name(f"defense.{self.section}.layer", self.layer)


@dataclass
class FMMultiParams:
    """The ``defense.fm-multi`` section.

    Attributes:
        lambda1: weight of the summed raw feature distances (10, the paper's lambda1).
        layers: the matched layers (a list, or one string with commas); None (not written to
            config.yaml): the model's group layers.
    """

    lambda1: float = 10.0
    layers: Optional[List[str]] = field(default=None, metadata={"omit_none": True})

    section = "fm-multi"

    def __post_init__(self):
        self.lambda1 = check_weight(f"defense.{self.section}.lambda1", self.lambda1)
        self.layers = check_layer_names(f"defense.{self.section}.layers", self.layers)


def raw_feature_distance(ctx, layers: List[str]) -> torch.Tensor:
    """``sum_j D_feat^{A_j}(x, x_adv)`` over ``layers`` (AFM eq. 4 on each layer's output), float32."""
    total = None
    for layer in layers:
        a_clean, a_adv = ctx.activations(layer)
        with fp32_region(a_adv):
            d = feature_distance(a_clean, a_adv)
        total = d if total is None else total + d
    return total


class FMSingle(Regularizer):
    """``lambda1 * D_feat(A(x), A(x_adv))`` at one layer (AFM Fig. 7 (c)); part ``fm_single``."""

    name = "fm-single"
    Params = FMSingleParams
    default_base = "alp"  # AFM eq. 6 builds on ALP (eq. 2); Fig. 7 compares the matching operations alone

    def layers(self, inner: nn.Module) -> List[str]:
        return [feature_layer(inner, self.params.layer, f"defense.{self.name}.layer")]

    def __call__(self, ctx) -> Dict[str, torch.Tensor]:
        if self.params.lambda1 <= 0:
            return {}
        part = self.name.replace("-", "_")
        d = raw_feature_distance(ctx, self.layers(ctx.inner))
        ctx.report(part, d)
        return {part: self.params.lambda1 * d}


class FMMulti(FMSingle):
    """``lambda1 * sum_j D_feat(A_j(x), A_j(x_adv))`` over several layers (AFM Fig. 7 (b)); part ``fm_multi``."""

    name = "fm-multi"
    Params = FMMultiParams

    def layers(self, inner: nn.Module) -> List[str]:
        key = f"defense.{self.name}.layers"
        names = self.params.layers if self.params.layers is not None else list(inner.group_layers)
        return list(dict.fromkeys(feature_layer(inner, n, key) for n in names))
