"""Defense settings: which objective, whether its forward pass is fused, and one section per part.

The trainer's ``RunConfig`` embeds :class:`DefenseConfig` as its ``defense:`` section::

    defense:
      preset: madry+aad
      standard: {classification_loss: ce}
      madry: {classification_loss: ce}          # ce | soft-margin (AAD eq. 10's L_c)
      alp: {lambda: 0.5, classification_loss: ce}
      trades: {beta: 6.0}
      aad: {alpha: 0.01, beta: 0.01, kappa: mean}
      at: {beta: 1.0, power: 2.0, p: 2.0}
      afm: {lambda1: 10.0, lambda2: 0.01}
      fused_forward: true

Each section is the part's own ``Params`` dataclass (declared in the part's file), and there is
one for every registered part, read from the registries when the config is built, so a part
registered later gets its section too. The flat keys of earlier versions (``aad_alpha``,
``alp_lambda``, ...) are aliases: config files and ``--set`` still accept them.

Imports go one way: this module reads the registries and presets; no part imports it.
"""

from __future__ import annotations

from typing import Dict, Iterator, Tuple

from ..errors import ConfigError
from .adversary import ADVERSARY_NORMS, BN_MODES, AdversaryConfig  # noqa: F401  (re-exported)
from .params import NoParams, check_bool, params_from_dict, params_to_dict, unknown_keys_error
from .presets import parse_preset
from .registry import BASES, REGULARIZERS

# The flat keys of earlier versions -> (part, key in its section). Every config.yaml written
# before the sections existed uses them, so they must keep resolving to the same values.
FLAT_ALIASES: Dict[str, Tuple[str, str]] = {
    "alp_lambda": ("alp", "lambda"),
    "trades_beta": ("trades", "beta"),
    "aad_alpha": ("aad", "alpha"),
    "aad_beta": ("aad", "beta"),
    "aad_kappa": ("aad", "kappa"),
    "at_beta": ("at", "beta"),
    "at_power": ("at", "power"),
    "at_p": ("at", "p"),
    "afm_lambda1": ("afm", "lambda1"),
    "afm_lambda2": ("afm", "lambda2"),
}


def part_params() -> Iterator[Tuple[str, type]]:
    """``(name, Params class)`` of every registered part: bases, then regularizers, in registration order."""
    for entry in (*BASES.entries(), *REGULARIZERS.entries()):
        yield entry.name, getattr(entry.builder, "Params", NoParams)


def normalize_defense_section(d: dict) -> dict:
    """A ``defense:`` mapping with the flat aliases moved into their sections (``aad_alpha`` -> ``aad: {alpha}``).

    Returns a new dict; anything that is not an alias is kept as is (unknown keys are for
    :meth:`DefenseConfig.from_dict` to report). An alias and the key it stands for, both given,
    raise :class:`ConfigError`: which one was meant cannot be told.
    """
    if not isinstance(d, dict):
        return d
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items() if k not in FLAT_ALIASES}
    for flat, (part, key) in FLAT_ALIASES.items():
        if flat not in d:
            continue
        if out.get(part) is None:
            out[part] = {}
        section = out[part]
        if not isinstance(section, dict) or key in section:
            raise ConfigError(f"defense.{flat} is the old spelling of defense.{part}.{key}, and both are given; "
                              f"keep defense.{part}.{key}")
        section[key] = d[flat]
    return out


class DefenseConfig:
    """Which objective to train, and the settings of its parts.

    Attributes:
        preset: a defense name (``attnguard list defenses``), e.g. ``madry``, ``alp+aad``, ``at+alp``.
        fused_forward: for a base whose own practice is the mixed clean+adversarial batch
            (``fuses_clean``: alp, as Kannan et al.'s 50/50 mixed batches; trades), run both halves
            through the model in one forward pass (one ``torch.cat`` batch; BatchNorm in train mode
            then uses the mixed batch's statistics). It never applies to madry: a regularizer does
            not change what its base computes, so madry's batch is adversarial only and a clean pass
            that a regularizer needs runs apart with BN running statistics frozen.
        alp, trades, aad, at, afm, ...: one section per registered part, that part's ``Params``
            dataclass (e.g. ``cfg.aad.alpha``); :meth:`params` gets one by name.

    Sections are given as keywords, each a mapping in config spelling or a ``Params`` instance:
    ``DefenseConfig(preset="alp+aad", alp={"lambda": 0.7}, aad=AADParams(alpha=0.1))``. The flat
    aliases work here too (``DefenseConfig(aad_alpha=0.1)``). Every value is checked when the
    object is built, so a bad config fails before any training starts.
    """

    def __init__(self, preset: str = "madry", fused_forward: bool = True, **sections):
        self._build(preset, fused_forward, sections, "defense")

    def _build(self, preset, fused_forward, sections: dict, path: str) -> None:
        if not isinstance(preset, str):
            raise ConfigError(f"{path}.preset must be a defense name, got {preset!r}")
        parse_preset(preset)
        self.preset = preset
        self.fused_forward = check_bool(f"{path}.fused_forward", fused_forward)
        sections = normalize_defense_section(sections)
        classes = dict(part_params())
        unknown = [k for k in sections if k not in classes]
        if unknown:
            raise _unknown(unknown, path, classes)
        self._sections = {name: _section(cls, sections.get(name), f"{path}.{name}") for name, cls in classes.items()}

    def params(self, name: str):
        """The section of part ``name`` (its ``Params``); defaults for a part registered after this config was built."""
        if name in self._sections:
            return self._sections[name]
        classes = dict(part_params())
        if name not in classes:
            raise _unknown([name], "defense", classes)
        return classes[name]()

    def __getattr__(self, name: str):
        # only called for names that are not ordinary attributes: the sections
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self.__dict__.get("_sections", {}) or any(n == name for n, _ in part_params()):
            return self.params(name)
        raise AttributeError(f"'DefenseConfig' object has no attribute '{name}'")

    @classmethod
    def from_dict(cls, data, path: str = "defense") -> "DefenseConfig":
        """Build from a config section (nested sections or flat aliases); unknown keys raise
        :class:`ConfigError` on one line listing the valid ones."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must be a mapping of keys to values, got {type(data).__name__}")
        data = normalize_defense_section(data)
        classes = dict(part_params())
        unknown = [k for k in data if k not in ("preset", "fused_forward") and k not in classes]
        if unknown:
            raise _unknown(unknown, path, classes)
        sections = {k: v for k, v in data.items() if k in classes}
        self = cls.__new__(cls)
        self._build(data.get("preset", "madry"), data.get("fused_forward", True), sections, path)
        return self

    def to_dict(self) -> dict:
        """``preset``, the sections with parameters in registration order, then ``fused_forward``."""
        out = {"preset": self.preset}
        for name, params in self._sections.items():
            section = params_to_dict(params)
            if section:  # parts without parameters (standard, madry) have nothing to record
                out[name] = section
        out["fused_forward"] = self.fused_forward
        return out

    def __eq__(self, other) -> bool:
        if not isinstance(other, DefenseConfig):
            return NotImplemented
        return (self.preset, self.fused_forward, self._sections) == (other.preset, other.fused_forward,
                                                                     other._sections)

    def __repr__(self) -> str:
        sections = ", ".join(f"{n}={p!r}" for n, p in self._sections.items() if params_to_dict(p))
        return f"DefenseConfig(preset={self.preset!r}, fused_forward={self.fused_forward!r}, {sections})"


def _section(cls, value, path: str):
    if value is None or isinstance(value, dict):
        return params_from_dict(cls, value, path)
    if isinstance(value, cls):
        return value
    raise ConfigError(f"{path} must be a mapping of keys to values (or a {cls.__name__}), got {value!r}")


def _unknown(unknown, path: str, classes) -> ConfigError:
    return unknown_keys_error(unknown, path, ["preset", *classes, "fused_forward"], FLAT_ALIASES)
