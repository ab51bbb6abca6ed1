"""Defense names: presets as the papers name them, and ``base+regularizer[+regularizer]`` spellings.

Any order parses (``aad+alp`` = ``alp+aad``). Without a base, the base is the one the regularizers
name as their ``default_base``: ``madry`` for most, ``alp`` for ``afm``, ``afm-cam``, ``fm-single`` and
``fm-multi`` (AFM eq. 6 builds on ALP, eq. 2). ``at`` alone is AT+ALP's "Our AT" (PGD-AT + attention
pairing); ``at+alp`` is their AT+ALP.
"""

from __future__ import annotations

import difflib
from typing import Dict, Tuple

from ..errors import ConfigError, UnknownNameError
from .base import DEFAULT_BASE
from .registry import BASES, REGULARIZERS

PRESETS: Dict[str, str] = {
    "standard": "standard training on clean examples (no defense)",
    "madry": "PGD adversarial training (Madry et al. 2018)",
    "madry+aad": "PGD-AT + AAD attention rectification and preservation (AAD Table 6 'AAD')",
    "alp": "adversarial logit pairing on PGD examples (Kannan et al. 2018)",
    "alp+aad": "ALP + AAD attention rectification and preservation (AAD Table 6 'ALP+AAD')",
    "at": "PGD-AT + attention-map pairing ('Our AT' of AT+ALP Table 1)",
    "at+alp": "ALP + attention-map pairing (AT+ALP, Li, Goodman et al. 2022)",
    "afm": "ALP + CAM feature matching and norm decay (AFM eq. 6, Li, Feng et al. 2020)",
    "afm-cam": "AFM on the CAM at Zhou et al.'s scale (h*w x Grad-CAM; AFM as written is inert on MNIST LeNet)",
    "fm-single": "ALP + raw feature matching at the last conv layer (AFM Fig. 7 (c), the paper's rejected variant)",
    "fm-multi": "ALP + raw feature matching summed over the group layers (AFM Fig. 7 (b), the paper's rejected variant)",
    "trades": "TRADES: clean CE + beta KL to PGD-KL examples (Zhang et al. 2019)",
    "trades+aad": "TRADES + AAD attention rectification and preservation",
    "stepll-at": "StepLL adversarial training, mixed clean/adversarial batches (Kurakin et al. 2017; AAD Fig. 11)",
    "ensemble": "ensemble adversarial training on examples from static models (Tramer et al. 2018; AAD Fig. 10)",
}


def _valid_listing() -> str:
    return (f"bases: {', '.join(BASES.names())}; regularizers: {', '.join(REGULARIZERS.names())}; "
            f"presets: {', '.join(PRESETS)}")


def _unknown(token: str, name: str) -> UnknownNameError:
    err = UnknownNameError("defense", token, [*BASES.names(), *REGULARIZERS.names(), *PRESETS])
    close = difflib.get_close_matches(token, [*BASES.names(), *REGULARIZERS.names()], n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    where = f" in '{name}'" if token != name else ""
    err.args = (f"unknown defense part '{token}'{where}.{hint} Valid {_valid_listing()}; "
                "combine one base with regularizers using '+'",)
    return err


def parse_preset(name: str) -> Tuple[str, Tuple[str, ...]]:
    """``(base, regularizers)`` for a defense name; regularizers in registry (alphabetical) order.

    Raises :class:`UnknownNameError` for an unknown part and :class:`ConfigError` for two bases,
    a repeated regularizer, or ``standard`` with a regularizer.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a defense name is required; valid {_valid_listing()}")
    tokens = [t.strip().lower() for t in name.split("+")]
    bases, regs = [], []
    for t in tokens:
        if not t:
            raise ConfigError(f"empty part in defense '{name}'; valid {_valid_listing()}")
        if t in BASES:
            bases.append(t)
        elif t in REGULARIZERS:
            if t in regs:
                raise ConfigError(f"regularizer '{t}' appears twice in defense '{name}'")
            regs.append(t)
        else:
            raise _unknown(t, name)
    if len(bases) > 1:
        raise ConfigError(f"defense '{name}' names {len(bases)} bases ({', '.join(bases)}); use one of "
                          f"{', '.join(BASES.names())} plus any of {', '.join(REGULARIZERS.names())}")
    base = bases[0] if bases else _default_base(name, regs)
    if base == "standard" and regs:
        raise ConfigError(f"defense '{name}': the regularizers ({', '.join(regs)}) pair clean and adversarial "
                          "examples, and 'standard' makes no adversarial examples; use madry, alp or trades")
    order = REGULARIZERS.names()
    return base, tuple(sorted(regs, key=order.index))


def _default_base(name: str, regs) -> str:
    """The base the regularizers ask for; ``DEFAULT_BASE`` (madry) is the fallback any other request overrides."""
    wanted = sorted({getattr(REGULARIZERS.get(r), "default_base", DEFAULT_BASE) for r in regs} - {DEFAULT_BASE})
    if len(wanted) > 1:
        raise ConfigError(f"defense '{name}': its regularizers default to different bases ({', '.join(wanted)}); "
                          f"name one, e.g. '{wanted[0]}+{name}'")
    base = wanted[0] if wanted else DEFAULT_BASE
    if base not in BASES:
        raise ConfigError(f"defense '{name}': a regularizer's default_base '{base}' is not a base; valid bases: "
                          f"{', '.join(BASES.names())}")
    return base


def canonical_name(name: str) -> str:
    """The one spelling of a defense: ``base[+regularizer...]`` (e.g. ``at`` -> ``madry+at``, ``aad+alp`` -> ``alp+aad``)."""
    base, regs = parse_preset(name)
    return "+".join((base, *regs))
