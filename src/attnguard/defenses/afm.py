"""Adversarial feature matching (Li, Feng et al. 2020, "Towards Adversarial Robustness via Feature Matching").

The reading implemented here (AFM sec. III-A and III-B):

* eq. 3: ``phi = ReLU(sum_k g(d y_c / d A^k) A^k)``, g the global average pool over the h x w
  cells, c the true class, A the penultimate conv layer: the true-class Grad-CAM, unnormalized
  (the paper drops CAM's [0, 1] scaling on purpose) and differentiable. The extracted text of
  eq. 3 lost the ``A^k`` factor; the sentence before it ("the combination of k feature maps ...
  followed by the Global Average Pooling g") and refs. [15], [16] fix it.
* eq. 4: ``D = ||phi(x) - phi(x_adv)||_2^2 / (C_j H_j W_j)``, "C_j x H_j x W_j the shape of the
  feature map" phi_j being compared (Johnson et al.'s feature reconstruction loss). phi_CAM is one
  h x w map, so C_j = 1 and D is the mean squared difference over the h * w cells, averaged over
  the batch. The authors' released code computes the same (a mean squared error over the B*h*w
  CAM cells). Dividing by the channels of A as well (an earlier reading) is not eq. 4: the channels
  are summed away in eq. 3.
* eq. 6: adds ``lambda1 * D + lambda2 * L_norm``, ``L_norm = ||phi(x)||_2 + ||phi(x_adv)||_2``, to
  the ALP loss (eq. 2); lambda1 = 10 (sec. IV-E, Fig. 9). The paper gives no lambda2, and the
  authors' code has no L_norm term: lambda2 = 0.01 is ours.

Not taken from the authors' code: their Grad-CAM weights differentiate the batch mean of
``logits * onehot`` over a ``[2B, K]`` tensor, which multiplies phi by ``1 / (2 B K)`` and makes it
depend on the batch size; eq. 3 differentiates ``y_c`` itself.

Scale: with ``g`` averaging the gradients over the cells, phi is ``1 / (h w)`` of the CAM of Zhou
et al. On the default run's MNIST LeNet its cells peak near 0.01, and at lambda1 = 10 ``lambda1 * D``
moves the parameter gradient by 3e-5 of the rest (tests/defenses/test_fidelity_alive.py; 8e-7 dividing by
the 32 channels too, 2e-12 with the authors' 1 / (2 B K)): every faithful reading is inert there,
and ``afm`` trains as ALP (the norm decay at 0.01: 8e-4). ``afm-cam``
(:mod:`~attnguard.defenses.afm_cam`) matches the CAM at Zhou et al.'s scale instead (share 1.1 at
lambda1 = 10), so the paper's claim can be tested both ways.

Which layer (``defense.afm.layer``, AFM sec. III-A-1 and IV-D-2, Fig. 8, Table 3): by default the
model's attention layer, "the penultimate layer (i.e., the nearest convolution layer to the fully
connected layer)", whose CAM :meth:`Context.cam` shares with AAD; any other layer of the model that
outputs a ``[B, C, h, w]`` map can be named for the paper's layer study. Its Grad-CAM takes the
gradient path (the closed form holds only at the layer that feeds GAP + linear); with a fused batch
and BatchNorm after that layer, its weights include the batch statistics' cross-example terms, as any
train-mode Grad-CAM of such a layer does.

All terms are computed in float32 (from float32 maps, also under autocast).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..attention import cam_from_activation
from ..errors import ConfigError
from .base import Regularizer
from .params import check_layer_name, check_weight


def feature_distance(phi_clean: torch.Tensor, phi_adv: torch.Tensor,
                     feature_size: Optional[int] = None) -> torch.Tensor:
    """AFM eq. 4: ``mean_b ||phi(x) - phi(x_adv)||_2^2 / feature_size``, in float32.

    ``feature_size`` is ``C_j H_j W_j`` of the compared features; default: the number of values of
    one example's ``phi`` (``h * w`` for a ``[B, h, w]`` CAM, whose C_j is 1).
    """
    d = (phi_clean.float() - phi_adv.float()).pow(2).flatten(1)
    return d.sum(1).mean() / (d.shape[1] if feature_size is None else feature_size)


def norm_decay(phi_clean: torch.Tensor, phi_adv: torch.Tensor) -> torch.Tensor:
    """AFM eq. 6 ``L_norm``: ``mean_b (||phi(x)||_2 + ||phi(x_adv)||_2)``, in float32."""
    return (phi_clean.float().flatten(1).norm(dim=1) + phi_adv.float().flatten(1).norm(dim=1)).mean()


def feature_layer(inner: nn.Module, layer: Optional[str], key: str) -> str:
    """The dotted name of the layer a matching term reads: ``layer``, or (None) the model's attention layer.

    The attention layer is AFM's "penultimate layer", the last conv feature map (sec. III-A-1). A name
    the model lacks is a one-line :class:`ConfigError` naming ``key`` and listing the model's layers.
    """
    if layer is None:
        return inner.attention_layer
    try:
        inner.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in inner.named_modules() if n]
        close = difflib.get_close_matches(layer, names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        arch = getattr(inner, "arch", type(inner).__name__)
        raise ConfigError(f"{key}: model {arch} has no layer '{layer}'.{hint} Its layers: {', '.join(names)}") from None
    return layer


def layer_cams(ctx, layer: str, key: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """True-class Grad-CAMs ``(g(x), g(x_adv))`` of ``layer`` (AFM eq. 3 at a layer of the layer study), differentiable.

    :meth:`Context.cam` serves the attention layer only, so the map of another layer is built here,
    on the gradient path: one gradient call over the fused batch when the forward was fused (the
    halves of a fused batch are views that the logits were not computed from), one per pass otherwise.
    """
    a_clean, a_adv = ctx.activations(layer)
    if a_adv.dim() != 4:
        raise ConfigError(f"{key}: layer '{layer}' outputs shape {tuple(a_adv.shape)}, not a [B, C, h, w] feature "
                          f"map; a class activation map needs a conv layer (default: {ctx.inner.attention_layer})")
    joint = getattr(ctx, "_joint", None)  # (logits, {layer: activation}) of the fused batch, else None
    if joint is not None and layer in joint[1]:
        logits, acts = joint
        g = cam_from_activation(logits, acts[layer], torch.cat([ctx.y, ctx.y]), create_graph=True)
        b = ctx.y.shape[0]
        return g[:b], g[b:]
    return (cam_from_activation(ctx.logits_clean, a_clean, ctx.y, create_graph=True),
            cam_from_activation(ctx.logits_adv, a_adv, ctx.y, create_graph=True))


@dataclass
class AFMParams:
    """The ``defense.afm`` section.

    Attributes:
        lambda1: weight of the CAM feature distance D (AFM eq. 6; the paper uses 10).
        lambda2: weight of the norm decay (AFM eq. 6; no value in the paper, 0.01 is ours).
        layer: the layer whose class activation map is matched (AFM Fig. 8, Table 3); None (not
            written to config.yaml): the model's attention layer, the paper's penultimate conv layer.
    """

    lambda1: float = 10.0
    lambda2: float = 0.01
    layer: Optional[str] = field(default=None, metadata={"omit_none": True})

    section = "afm"  # the config section named in error messages (a class attribute, not a field)

    def __post_init__(self):
        self.lambda1 = check_weight(f"defense.{self.section}.lambda1", self.lambda1)
        self.lambda2 = check_weight(f"defense.{self.section}.lambda2", self.lambda2)
        self.layer = check_layer_name(f"defense.{self.section}.layer", self.layer)


class AFM(Regularizer):
    """``lambda1 * D + lambda2 * L_norm`` (AFM eq. 6; lambda1 = 10 in the paper, lambda2 = 0.01 ours).

    Parts: ``afm`` (D) and ``afm_norm`` (L_norm), unweighted. AFM eq. 6 adds these terms to the
    ALP loss (eq. 2), so ``afm`` alone means ``alp+afm``. Subclasses change the scale of phi
    through :meth:`cam_scale` (and name their parts after themselves).
    """

    name = "afm"
    reads_cam = True  # the trainer asks: torch.compile cannot serve a gradient-path Grad-CAM
    Params = AFMParams
    default_base = "alp"

    def layers(self, inner: nn.Module) -> List[str]:
        return [feature_layer(inner, self.params.layer, f"defense.{self.name}.layer")]

    def cam_scale(self, h: int, w: int) -> float:
        """The factor on the shared Grad-CAM that gives phi: 1, AFM eq. 3 as written."""
        return 1.0

    def features(self, ctx) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(phi(x), phi(x_adv))``, each ``[B, h, w]``: the matched layer's true-class Grad-CAMs x :meth:`cam_scale`.

        ReLU is positively homogeneous, so scaling the map equals scaling the Grad-CAM weights.
        """
        layer = self.layers(ctx.inner)[0]
        if layer == ctx.inner.attention_layer:
            g_clean, g_adv = ctx.cam()  # shared with AAD, closed form where exact
        else:
            g_clean, g_adv = layer_cams(ctx, layer, f"defense.{self.name}.layer")
        scale = self.cam_scale(*g_clean.shape[-2:])
        return (g_clean, g_adv) if scale == 1.0 else (scale * g_clean.float(), scale * g_adv.float())

    def __call__(self, ctx) -> Dict[str, torch.Tensor]:
        cfg = self.params
        if cfg.lambda1 <= 0 and cfg.lambda2 <= 0:
            return {}
        phi_clean, phi_adv = self.features(ctx)
        part = self.name.replace("-", "_")
        out: Dict[str, torch.Tensor] = {}
        if cfg.lambda1 > 0:
            d = feature_distance(phi_clean, phi_adv)
            ctx.report(part, d)
            out[part] = cfg.lambda1 * d
        if cfg.lambda2 > 0:
            n = norm_decay(phi_clean, phi_adv)
            ctx.report(f"{part}_norm", n)
            out[f"{part}_norm"] = cfg.lambda2 * n
        return out
