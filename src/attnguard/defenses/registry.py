"""The defense registries: bases (what is classified, how x_adv is made) and attention regularizers.

Adding a regularizer takes one file (a :class:`~attnguard.defenses.base.Regularizer` subclass
with its ``Params`` dataclass and ``default_base``) and one ``REGULARIZERS.add`` line here;
presets, parsing, the ``defense.<name>`` config section and ``attnguard list`` pick it up.
Registration order is the order of the sections in ``config.yaml``: bases, then regularizers.
This module imports the parts and nothing that imports it back.
"""

from __future__ import annotations

from ..registry import Registry
from .aad import AAD
from .afm import AFM
from .afm_cam import AFMCAM
from .alp import ALP
from .at import AT
from .ensemble_at import EnsembleAT
from .feature_match import FMMulti, FMSingle
from .madry import Madry
from .standard import Standard
from .stepll_at import StepLLAT
from .trades import Trades

BASES = Registry("base")
BASES.add("standard", Standard, "L_c (CE, or the multi-label soft margin of AAD eq. 10) on clean examples, no adversary")
BASES.add("madry", Madry, "PGD adversarial training: L_c (CE or soft margin) on PGD examples (Madry et al. 2018; AT+ALP eq. 1)")
BASES.add("alp", ALP, "adversarial logit pairing: mean clean/adv L_c + lambda mean_{b,k} (f(x) - f(x_adv))^2 (Kannan et al. 2018)")
BASES.add("trades", Trades, "TRADES: CE(f(x)) + beta KL(f(x) || f(x_adv)) with a KL adversary (Zhang et al. 2019)")
BASES.add("stepll-at", StepLLAT, "StepLL adversarial training: clean/StepLL mixed batch, lambda 0.3 (Kurakin et al. 2017)")
BASES.add("ensemble", EnsembleAT, "ensemble adversarial training: single-step examples from rotating static models (Tramer et al. 2018)")

REGULARIZERS = Registry("regularizer")
REGULARIZERS.add("aad", AAD, "Grad-CAM attention rectification + preservation (AAD eq. 7-10)")
REGULARIZERS.add("at", AT, "activation attention-map pairing over the group layers (AT+ALP eq. 4)")
REGULARIZERS.add("afm", AFM, "true-class CAM feature matching + norm decay (AFM eq. 3-6)")
REGULARIZERS.add("afm-cam", AFMCAM,
                 "AFM eq. 3-6 on the CAM at Zhou et al.'s scale (h*w x Grad-CAM): acts where afm is inert")
REGULARIZERS.add("fm-single", FMSingle, "raw feature-map matching at one layer, AFM eq. 4 on A (AFM Fig. 7c)")
REGULARIZERS.add("fm-multi", FMMulti, "raw feature-map matching summed over several layers, AFM eq. 4 (AFM Fig. 7b)")
