"""Defense and in-training adversary settings: the one place their defaults live.

The trainer's ``RunConfig`` embeds these two dataclasses as its ``defense:`` and ``adversary:``
sections; the CLI and the YAML configs fill them through :meth:`from_dict`. Every value is
checked when the object is built, so a bad config fails before any training starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Union

from ..errors import ConfigError, check_range

ADVERSARY_NORMS = ("linf", "l2")
BN_MODES = ("eval", "train")


def _from_dict(cls, data, section: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"the '{section}' section must be a mapping, got {type(data).__name__}")
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))} in '{section}'; valid keys: "
                          + ", ".join(valid))
    return cls(**data)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


@dataclass
class DefenseConfig:
    """Which objective to train and the weights of its terms.

    Attributes:
        preset: a defense name (``attnguard list defenses``), e.g. ``madry``, ``alp+aad``, ``at+alp``.
        alp_lambda: weight of the logit pairing term (Kannan et al. 2018; AT+ALP eq. 2-3 alpha;
            AFM eq. 2 lambda). 0.5 follows Kannan et al.'s ALP setting.
        trades_beta: TRADES regularization weight beta (Zhang et al. 2019 use 6 on CIFAR-10).
        aad_alpha, aad_beta: weights of AAD's rectification and preservation losses (AAD eq. 10;
            the paper's sensitivity study, sec. 5.4, uses 0.01 for both).
        aad_kappa: AAD eq. 3 threshold, ``"mean"`` (each map's own mean, the paper's choice) or a number.
        at_beta: weight of AT+ALP's attention pairing (eq. 2 beta; the paper gives no value, 1.0 is ours).
        at_power: exponent of ``sum_c |A_c|^power`` in the attention map (Zagoruyko & Komodakis use 2).
        at_p: the norm of AT+ALP eq. 4 (the paper uses p = 2, a norm, not squared).
        afm_lambda1: weight of AFM's CAM feature distance (AFM eq. 6; the paper uses 10).
        afm_lambda2: weight of AFM's norm decay (AFM eq. 6; no value in the paper, 0.01 is ours).
        fused_forward: run clean and adversarial examples through the model in one forward pass
            (one ``torch.cat`` batch). With BatchNorm in train mode this computes batch statistics
            over the mixed batch, as Kannan et al.'s 50/50 mixed batches do.
    """

    preset: str = "madry"
    alp_lambda: float = 0.5
    trades_beta: float = 6.0
    aad_alpha: float = 0.01
    aad_beta: float = 0.01
    aad_kappa: Union[str, float] = "mean"
    at_beta: float = 1.0
    at_power: float = 2.0
    at_p: float = 2.0
    afm_lambda1: float = 10.0
    afm_lambda2: float = 0.01
    fused_forward: bool = True

    def __post_init__(self):
        from .presets import parse_preset  # presets import the registries, which import this module

        if not isinstance(self.preset, str):
            raise ConfigError(f"defense preset must be a name, got {self.preset!r}")
        parse_preset(self.preset)
        for name in ("alp_lambda", "trades_beta", "aad_alpha", "aad_beta", "at_beta", "afm_lambda1", "afm_lambda2"):
            setattr(self, name, float(check_range(f"defense.{name}", getattr(self, name), 0.0)))
        kappa = self.aad_kappa
        if isinstance(kappa, str):
            if kappa != "mean":
                raise ConfigError(f"defense.aad_kappa must be 'mean' or a number, got {kappa!r}")
        elif isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or kappa != kappa:
            raise ConfigError(f"defense.aad_kappa must be 'mean' or a number, got {kappa!r}")
        else:
            self.aad_kappa = float(kappa)
        self.at_power = float(check_range("defense.at_power", self.at_power, 1e-12))
        self.at_p = float(check_range("defense.at_p", self.at_p, 1.0))
        _check_bool("defense.fused_forward", self.fused_forward)

    @classmethod
    def from_dict(cls, data) -> "DefenseConfig":
        """Build from a config section; unknown keys raise :class:`ConfigError` listing the valid ones."""
        return _from_dict(cls, data, "defense")

    def to_dict(self) -> dict:
        return asdict(self)


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
        _check_bool("adversary.random_start", self.random_start)

    @classmethod
    def from_dict(cls, data) -> "AdversaryConfig":
        """Build from a config section; unknown keys raise :class:`ConfigError` listing the valid ones."""
        return _from_dict(cls, data, "adversary")

    def to_dict(self) -> dict:
        return asdict(self)
