"""How much each attention term moves the training gradient at its default weight (its "share").

share = ||grad(objective) - grad(objective with that term's weight 0)|| / ||grad(objective with it 0)||,
with the same adversarial examples for both gradients (the training adversary, crafted once on the
model in train mode). A share below ``ALIVE`` means the defense trains as its base alone: the
"numerically inert" check of the guide's first principle. Used by tests/defenses/test_fidelity_alive.py
(the LeNet fixture) and tools/term_shares.py (any trained model, e.g. the CIFAR ResNet9s).
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from .adversary import AdversaryConfig
from .config import DefenseConfig
from .objective import build_objective

ALIVE = 1e-3

# (term, preset, (section, weight key), part it reports): every attention term with a preset of its own
TERMS = [
    ("aad rectification", "madry+aad", ("aad", "alpha"), "aad_rect"),
    ("aad preservation", "madry+aad", ("aad", "beta"), "aad_pres"),
    ("at", "madry+at", ("at", "beta"), "at"),
    ("afm matching", "afm", ("afm", "lambda1"), "afm"),
    ("afm norm decay", "afm", ("afm", "lambda2"), "afm_norm"),
    ("afm-cam matching", "afm-cam", ("afm-cam", "lambda1"), "afm_cam"),
    ("afm-cam norm decay", "afm-cam", ("afm-cam", "lambda2"), "afm_cam_norm"),
    ("fm-single matching", "fm-single", ("fm-single", "lambda1"), "fm_single"),
    ("fm-multi matching", "fm-multi", ("fm-multi", "lambda1"), "fm_multi"),
]


def default_weight(preset: str, section: str, key: str) -> float:
    return getattr(DefenseConfig(preset=preset).params(section), key)


class TermShares:
    """Gradient shares on one model and batch; a preset's default-weight gradient is computed once for all its terms."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, adversary: AdversaryConfig,
                 seed: int = 0):
        self.model, self.x, self.y, self.adversary = model.train(), x, y, adversary
        torch.manual_seed(seed)
        self.x_adv = build_objective(DefenseConfig(preset="madry"), adversary).base.craft(model, x, y)
        self._defaults: Dict[str, Tuple[torch.Tensor, dict]] = {}

    def gradient(self, preset: str, section: str, key: str, weight: float) -> Tuple[torch.Tensor, dict]:
        """The flat parameter gradient of the preset's objective with one weight set, and its parts."""
        cfg = DefenseConfig(preset=preset)
        setattr(cfg.params(section), key, weight)
        obj = build_objective(cfg, self.adversary)
        obj.base.craft = lambda *_: self.x_adv  # the same adversarial examples for every objective
        loss, parts = obj(self.model, self.x, self.y)
        grads = torch.autograd.grad(loss, list(self.model.parameters()))
        return torch.cat([g.flatten() for g in grads]), parts

    def share(self, preset: str, section: str, key: str) -> Tuple[float, float, dict]:
        """(share, default weight, the parts the default-weight objective reported)."""
        default = default_weight(preset, section, key)
        if preset not in self._defaults:
            self._defaults[preset] = self.gradient(preset, section, key, default)
        on, parts = self._defaults[preset]
        off, _ = self.gradient(preset, section, key, 0.0)
        return ((on - off).norm() / off.norm()).item(), default, parts
