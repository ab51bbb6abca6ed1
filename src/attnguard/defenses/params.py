"""Parameter sections: the small dataclasses that hold each defense part's settings.

Every base and regularizer declares a ``Params`` dataclass in its own file: field defaults are
the part's defaults, ``__post_init__`` checks the ranges. A field's YAML key is its name, unless
the field's metadata names another (``field(default=0.5, metadata={"key": "lambda"})``: ALP's
weight is ``lambda`` in the config, a Python keyword). These helpers turn such a dataclass into
its config section and back; they depend on nothing else in ``defenses/``.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import Field, dataclass, fields
from typing import Iterable, List, Optional

from ..errors import ConfigError, check_range


@dataclass
class NoParams:
    """The section of a part without parameters."""


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def check_weight(name: str, value) -> float:
    """A term weight: a number >= 0, as float (0 switches the term off)."""
    return float(check_range(name, value, 0.0))


# L_c, the classification loss of a base that classifies (``defense.<base>.classification_loss``):
# softmax cross-entropy, or AAD eq. 10's "standard multi-label soft margin loss" on one-hot targets.
CLASSIFICATION_LOSSES = ("ce", "soft-margin")


def check_classification_loss(name: str, value) -> str:
    """One of :data:`CLASSIFICATION_LOSSES`."""
    if value not in CLASSIFICATION_LOSSES:
        raise ConfigError(f"{name} must be one of {', '.join(CLASSIFICATION_LOSSES)}, got {value!r}")
    return value


def check_layer_name(name: str, value) -> Optional[str]:
    """A layer's dotted name, or None (the part's default layer, known once the model is)."""
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{name} must be a layer name of the model (e.g. net.block2) or null, got {value!r}")
    return None if value is None else value.strip()


def check_layer_names(name: str, value) -> Optional[List[str]]:
    """A list of dotted layer names (a list, or one string with commas), or None (the part's default layers)."""
    if isinstance(value, str):
        value = [v for v in value.split(",")]
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{name} must be a list of layer names of the model or null, got {value!r}")
    return [check_layer_name(name, v) for v in value]


def yaml_key(f: Field) -> str:
    return f.metadata.get("key", f.name)


def unknown_keys_error(unknown: Iterable[str], path: str, valid: Iterable[str],
                       aliases: Iterable[str] = ()) -> ConfigError:
    """One line: the unknown key(s) under ``path``, the closest valid key or alias, every valid key."""
    unknown, valid, aliases = list(unknown), list(valid), list(aliases)
    close = difflib.get_close_matches(str(unknown[0]), valid + aliases, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    names = ", ".join(repr(f"{path}.{k}") for k in unknown)
    also = f" (old flat names, still accepted: {', '.join(aliases)})" if aliases else ""
    return ConfigError(f"unknown key(s) {names}.{hint} Valid keys in {path}: {', '.join(valid)}{also}")


def _yaml_number(value, tp):
    # PyYAML (YAML 1.1) reads 1e-3, unlike 1.0e-3, as a string
    if tp is float and isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


def params_from_dict(cls, data: Optional[dict], path: str):
    """Build the section dataclass ``cls`` from its YAML mapping (keys as :func:`yaml_key` spells them).

    Unknown keys and values of the wrong type raise :class:`ConfigError` naming ``path``.
    """
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of keys to values, got {type(data).__name__}")
    by_key = {yaml_key(f): f for f in fields(cls)}
    unknown = [k for k in data if k not in by_key]
    if unknown:
        raise unknown_keys_error(unknown, path, by_key)
    hints = typing.get_type_hints(cls)
    kwargs = {by_key[k].name: _yaml_number(v, hints.get(by_key[k].name)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from None


def params_to_dict(params) -> dict:
    """The section as YAML writes it: ``{yaml key: value}`` in field order.

    A field with ``metadata={"omit_none": True}`` is left out while it is None (its default: e.g.
    ``defense.afm.layer``, the model's attention layer), so config.yaml files written before the
    field existed read back equal and a run that sets it records it.
    """
    return {yaml_key(f): getattr(params, f.name) for f in fields(params)
            if not (f.metadata.get("omit_none") and getattr(params, f.name) is None)}
