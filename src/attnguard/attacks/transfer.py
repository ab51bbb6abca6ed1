"""Transfer (black-box) attack: craft on a source model, evaluate on the target.

This is the black-box setting of the AT+ALP and AFM papers: the adversary has no access to the
target model and attacks a substitute, whose adversarial examples are then fed to the target.
"""

from __future__ import annotations

import copy

from torch import nn

from ..errors import ConfigError
from .base import Attack


class Transfer(Attack):
    """Adversarial examples crafted on ``source_model`` by ``base_attack``, for a target model.

    The call keeps the attack signature ``attack(model, x, y)``: ``model`` is the *target*, used
    only to skip examples it already misclassifies (when ``base_attack.skip_misclassified`` is
    set). The target's outputs and gradients are never used to craft the perturbation, so
    ``uses_gradients = False`` (with respect to the target). The base attack runs on the source
    with ``skip_misclassified=False`` (a copy; the user's object is not modified): an example
    the source already gets wrong is still perturbed, since it may fool the target.

    The source model is used in the mode it is in (put it in eval mode for evaluation); its mode
    and parameter ``.grad`` are restored by the base attack, the target's by this one.

    Args:
        source_model: the substitute model (takes [0, 1] pixels, on the same device as the inputs).
        base_attack: any attnguard attack (FGSM, PGD, A3, ...); its eps and norm define the threat
            model, and its ``skip_misclassified`` and ``seed`` apply to the target.
    """

    name = "transfer"
    uses_gradients = False

    def __init__(self, source_model: nn.Module, base_attack: Attack):
        if not isinstance(source_model, nn.Module):
            raise ConfigError(f"source_model must be a torch module, got {type(source_model).__name__}")
        if not isinstance(base_attack, Attack):
            raise ConfigError(f"base_attack must be an attnguard attack, got {type(base_attack).__name__}")
        super().__init__(base_attack.eps, norm=base_attack.norm, skip_misclassified=base_attack.skip_misclassified,
                         seed=base_attack.seed)
        self.source_model = source_model
        self.base_attack = base_attack
        self._on_source = copy.copy(base_attack)
        self._on_source.skip_misclassified = False

    def perturb(self, model, x, y):
        return self._on_source(self.source_model, x, y)

    def __repr__(self) -> str:
        return f"Transfer({self.base_attack!r}, source={type(self.source_model).__name__})"
