"""The in-training adversary's settings: the one place their defaults live.

The trainer's ``RunConfig`` embeds :class:`AdversaryConfig` as its ``adversary:`` section. Every
value is checked when the object is built, so a bad config fails before any training starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ConfigError, check_range
from .params import check_bool, params_from_dict

ADVERSARY_NORMS = ("linf", "l2")
BN_MODES = ("eval", "train")


@dataclass
class AdversaryConfig:
    """The attack used inside training to craft ``x_adv``.

    Defaults follow the papers' MNIST setting (Madry et al. 2018: eps 0.3, step 0.01, 40 steps,
    random start); CIFAR configs set eps 8/255, step 2/255 and 7 or 10 steps.

    Attributes:
        eps: radius in [0, 1] pixel units (L-inf: at most 1; L2: any non-negative radius).
        step_size: PGD step size alpha.
        steps: PGD iterations (>= 1).
        random_start: Madry's uniform start in the ball. TRADES always starts from
            ``x + 0.001 N(0, 1)`` because its KL objective has zero gradient at ``x``.
        norm: ``"linf"`` or ``"l2"``.
        bn_mode: ``"eval"`` crafts with the model in eval mode (TRADES practice: BatchNorm uses and
            keeps its running statistics) and restores the previous modes; ``"train"`` crafts in
            train mode (Madry et al.'s practice; BN statistics are updated by the attack's passes).
    """

    eps: float = 0.3
    step_size: float = 0.01
    steps: int = 40
    random_start: bool = True
    norm: str = "linf"
    bn_mode: str = "eval"

    def __post_init__(self):
        if self.norm not in ADVERSARY_NORMS:
            raise ConfigError(f"adversary.norm must be one of {', '.join(ADVERSARY_NORMS)}, got {self.norm!r}")
        if self.bn_mode not in BN_MODES:
            raise ConfigError(f"adversary.bn_mode must be one of {', '.join(BN_MODES)}, got {self.bn_mode!r}")
        self.eps = float(check_range("adversary.eps", self.eps, 0.0, 1.0 if self.norm == "linf" else None))
        self.step_size = float(check_range("adversary.step_size", self.step_size, 0.0))
        self.steps = check_range("adversary.steps", self.steps, 1, integer=True)
        check_bool("adversary.random_start", self.random_start)

    @classmethod
    def from_dict(cls, data, path: str = "adversary") -> "AdversaryConfig":
        """Build from a config section; unknown keys raise :class:`ConfigError` listing the valid ones."""
        return params_from_dict(cls, data, path)

    def to_dict(self) -> dict:
        return asdict(self)
