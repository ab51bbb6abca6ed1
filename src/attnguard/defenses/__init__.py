"""Training objectives: the papers' defenses as one base plus attention regularizers.

Paper map:
    Madry et al. 2018 / AT+ALP eq. 1  PGD-AT                      madry.py
    Kannan et al. 2018 / AT+ALP eq. 3 logit pairing               alp.py
    Zhang et al. 2019                 TRADES                       trades.py
    AAD eq. 7-10                      rectification, preservation  aad.py
    AT+ALP eq. 4                      attention-map pairing        at.py
    AFM eq. 3-6                       CAM matching, norm decay     afm.py
    AAD eq. 10, AT+ALP eq. 2, AFM eq. 6  base + weighted terms     objective.py

Usage::

    defense = DefenseConfig(preset="alp+aad", aad={"alpha": 0.1})   # one section per part
    objective = build_objective(defense, AdversaryConfig(eps=8/255, step_size=2/255, steps=10))
    loss, parts = objective(model, x, y)   # parts: detached 0-dim tensors, no host sync
    loss.backward()
"""

from .adversary import AdversaryConfig
from .base import DEFAULT_BASE, BaseObjective, Regularizer, crafting_mode, unwrap
from .config import DefenseConfig, normalize_defense_section
from .context import Context
from .objective import Objective, build_objective
from .params import NoParams
from .presets import PRESETS, canonical_name, parse_preset
from .registry import BASES, REGULARIZERS

__all__ = [
    "AdversaryConfig", "DefenseConfig", "normalize_defense_section", "Objective", "build_objective", "PRESETS",
    "canonical_name", "parse_preset", "BASES", "REGULARIZERS", "BaseObjective", "Regularizer", "NoParams",
    "DEFAULT_BASE", "Context", "unwrap", "crafting_mode",
]
