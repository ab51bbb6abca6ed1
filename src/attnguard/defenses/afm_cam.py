"""AFM with the CAM at the scale of Zhou et al. (2016): a named variant of :mod:`~attnguard.defenses.afm`.

AFM eq. 3 weights the feature maps with the *spatial mean* of ``d y_c / d A^k`` (Grad-CAM), which
puts a ``1 / (h w)`` factor on every cell; the squared distance of eq. 4 then carries
``1 / (h w)^2``, and on the MNIST LeNet ``lambda1 = 10`` moves the parameter gradient by a
negligible fraction (see ``afm.py``). This variant weights them with the *spatial sum* instead::

    phi = ReLU(sum_k (sum_ij d y_c / d A^k_ij) A^k) = h w * Grad-CAM

``sum_ij d y_c / d A^k_ij`` is ``d y_c / d GAP(A)_k`` when the layer feeds the classifier through
global average pooling, so for GAP + linear heads phi is exactly the class activation map of
Zhou et al., ``ReLU(sum_k W[c, k] A^k)``, whose cells average to the class score (before the
ReLU, less the bias): the features being matched sit on the scale of the logits that ALP pairs.
For other heads it is the same generalization Grad-CAM makes, without the mean. Eq. 4 (mean
over the cells), eq. 6 and the weights are AFM's; only the scale of phi differs.

Config section ``defense.afm-cam`` (``lambda1``, ``lambda2``); parts ``afm_cam`` and ``afm_cam_norm``;
``afm-cam`` alone means ``alp+afm-cam``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .afm import AFM, AFMParams


@dataclass
class AFMCAMParams(AFMParams):
    """The ``defense.afm-cam`` section: AFM's ``lambda1`` (10, the paper's) and ``lambda2`` (ours)."""

    section = "afm-cam"


class AFMCAM(AFM):
    """AFM eq. 6 on ``phi = h w * Grad-CAM`` (Zhou et al.'s CAM scale). Parts ``afm_cam``, ``afm_cam_norm``."""

    name = "afm-cam"
    Params = AFMCAMParams

    def cam_scale(self, h: int, w: int) -> float:
        return float(h * w)
