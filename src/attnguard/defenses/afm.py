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

All terms are computed in float32 (from float32 maps, also under autocast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .base import Regularizer
from .params import check_weight


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


@dataclass
class AFMParams:
    """The ``defense.afm`` section.

    Attributes:
        lambda1: weight of the CAM feature distance D (AFM eq. 6; the paper uses 10).
        lambda2: weight of the norm decay (AFM eq. 6; no value in the paper, 0.01 is ours).
    """

    lambda1: float = 10.0
    lambda2: float = 0.01

    section = "afm"  # the config section named in error messages (a class attribute, not a field)

    def __post_init__(self):
        self.lambda1 = check_weight(f"defense.{self.section}.lambda1", self.lambda1)
        self.lambda2 = check_weight(f"defense.{self.section}.lambda2", self.lambda2)


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
        return [inner.attention_layer]

    def cam_scale(self, h: int, w: int) -> float:
        """The factor on the shared Grad-CAM that gives phi: 1, AFM eq. 3 as written."""
        return 1.0

    def features(self, ctx) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(phi(x), phi(x_adv))``, each ``[B, h, w]``: the context's true-class Grad-CAMs times :meth:`cam_scale`.

        ReLU is positively homogeneous, so scaling the map equals scaling the Grad-CAM weights.
        """
        g_clean, g_adv = ctx.cam()
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
