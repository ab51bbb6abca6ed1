"""Attack names, as the CLI and the evaluation spell them: ``build_attack("pgd-20", eps)``.

The registry holds one entry per *family*; its name is the pattern users write (``pgd-K``) and
its description says what the numbers mean. :func:`parse_attack` maps a concrete name
(``pgd-100x5``) to its family and settings, :func:`build_attack` builds the attack object.

Attack classes are imported inside the builders, so listing attacks imports no attack code
and a broken optional attack cannot break the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from ..errors import ConfigError, UnknownNameError
from ..registry import Registry

ATTACKS = Registry("attack")

# Families whose attack is a gradient attack A3 can wrap (AAD eq. 11-13 adds its attention term
# to the loss of an FGSM/PGD-type attack).
GRADIENT_FAMILIES = ("fgsm", "stepll", "iter-stepll-K", "pgd-K", "pgd-KxR", "cw-K")
# Families that never read the target model's gradients.
BLACK_BOX_FAMILIES = ("square", "square-Q", "rays", "rays-Q", "transfer:PATH")

DEFAULT_TRANSFER_ATTACK = "pgd-20"


@dataclass(frozen=True)
class AttackSpec:
    """A parsed attack name: its family (a registry name) and the settings the name carries."""

    name: str
    family: str
    params: Dict[str, Any] = field(default_factory=dict)

    @property
    def black_box(self) -> bool:
        return self.family in BLACK_BOX_FAMILIES


def _whole(name: str, text: str, what: str, example: str) -> int:
    """``text`` as a whole number >= 1, else a ConfigError that says what is allowed."""
    if not re.fullmatch(r"[0-9]+", text or "") or int(text) < 1:
        raise ConfigError(f"attack '{name}': {what} must be a whole number >= 1 (e.g. {example}), got '{text}'")
    return int(text)


def parse_attack(name: str) -> AttackSpec:
    """The family and settings of an attack name; see :data:`ATTACKS` for the patterns."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownNameError("attack", str(name), ATTACKS.names())
    name = name.strip()
    low = name.lower()
    if low.startswith("transfer:"):
        return _parse_transfer(name)
    if low in ("fgsm", "stepll", "autoattack", "square", "rays"):
        return AttackSpec(low, low)
    m = re.fullmatch(r"a3(s[^-]*)?-(.+)", low)
    if m:
        params = {}
        if m[1]:
            if not re.fullmatch(r"s([0-9]+\.?[0-9]*|\.[0-9]+)", m[1]):
                raise ConfigError(f"attack '{name}': A3's sigma must be a number >= 0 "
                                  f"(e.g. a3s1-pgd-20), got '{m[1][1:]}'")
            params["sigma"] = float(m[1][1:])
        base = parse_attack(name[len(m[0]) - len(m[2]):])
        if base.family not in GRADIENT_FAMILIES:
            raise ConfigError(f"attack '{name}': A3 wraps a gradient attack ("
                              f"{', '.join(GRADIENT_FAMILIES)}), got '{base.name}'")
        return AttackSpec(low, "a3-ATTACK", {"base": base, **params})
    m = re.fullmatch(r"iter-stepll-(.*)", low)
    if m:
        return AttackSpec(low, "iter-stepll-K", {"steps": _whole(name, m[1], "K (steps)", "iter-stepll-10")})
    m = re.fullmatch(r"(pgd|cw)-(.*)", low)
    if m:
        kind, rest = m[1], m[2]
        ex = f"{kind}-20" if kind == "cw" else "pgd-20, pgd-100x5"
        kr = re.fullmatch(r"([0-9]+)x([0-9]+)", rest) if kind == "pgd" else None
        if kr:
            k, r = kr[1], kr[2]
            return AttackSpec(low, "pgd-KxR", {"steps": _whole(name, k, "K (steps)", ex),
                                               "restarts": _whole(name, r, "R (restarts)", ex)})
        return AttackSpec(low, f"{kind}-K", {"steps": _whole(name, rest, "K (steps)", ex)})
    m = re.fullmatch(r"(square|rays)-(.*)", low)
    if m:
        ex = f"{m[1]}-5000"
        return AttackSpec(low, f"{m[1]}-Q", {"queries": _whole(name, m[2], "Q (queries)", ex)})
    raise UnknownNameError("attack", name, ATTACKS.names())


def _parse_transfer(name: str) -> AttackSpec:
    rest = name[len("transfer:"):]
    path, base = rest, DEFAULT_TRANSFER_ATTACK
    if ":" in rest:
        head, tail = rest.rsplit(":", 1)
        try:
            spec = parse_attack(tail)
        except UnknownNameError:
            spec = None  # not an attack name: the colon belongs to the path
        if spec is not None:
            if spec.black_box:
                raise ConfigError(f"attack '{name}': the source attack must be a white-box attack, got '{tail}'")
            path, base = head, tail
    if not path:
        raise ConfigError(f"attack '{name}': give the source model, as transfer:<checkpoint or run dir>"
                          f"[:<attack>] (e.g. transfer:runs/std:pgd-20)")
    base_spec = parse_attack(base)
    return AttackSpec(f"transfer:{path}:{base_spec.name}", "transfer:PATH", {"path": path, "base": base_spec})


def build_attack(name: str, eps: float, *, seed: Optional[int] = 0, num_classes: int = 10, norm: str = "linf",
                 device="cpu", step_size: Optional[float] = None):
    """The attack object for a name (``attnguard list attacks`` shows the patterns).

    Args:
        name: e.g. ``fgsm``, ``pgd-20``, ``pgd-100x5``, ``cw-20``, ``a3-pgd-20``, ``square-1000``,
            ``transfer:runs/std`` or ``transfer:runs/std:fgsm``.
        eps: radius of the threat model, in [0, 1] pixel units.
        seed: seed of the attack's random draws (random starts, restarts, queries).
        num_classes: classes of the target model (AutoAttack's targeted components need it).
        norm: ``linf`` or ``l2`` (StepLL, Iter-StepLL and RayS are L-inf only).
        device: where a transfer attack loads its source model.
        step_size: PGD-type step size; default ``2.5 * eps / K`` (Madry et al. 2018) for PGD and CW,
            the attack's own default for Iter-StepLL.

    The built object carries ``registry_name`` (the canonical name), which the evaluation
    uses as its label.
    """
    spec = name if isinstance(name, AttackSpec) else parse_attack(name)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ConfigError(f"eps must be a number >= 0, got {eps!r}")
    if norm not in ("linf", "l2"):
        raise ConfigError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if step_size is not None and not step_size > 0:
        raise ConfigError(f"step size must be > 0, got {step_size!r}")
    opts = dict(seed=seed, num_classes=num_classes, norm=norm, device=device, step_size=step_size)
    attack = ATTACKS.get(spec.family)(float(eps), spec, **opts)
    attack.registry_name = spec.name
    return attack


def _linf_only(spec: AttackSpec, norm: str) -> None:
    if norm != "linf":
        raise ConfigError(f"attack '{spec.name}' is L-inf only, got norm={norm!r}")


@ATTACKS.register("fgsm", "FGSM, one signed-gradient step of size eps on the CE loss (Goodfellow et al. 2015)")
def _fgsm(eps, spec, *, seed, norm, **_):
    from .fgsm import FGSM

    return FGSM(eps, loss="ce", norm=norm, seed=seed)


@ATTACKS.register("stepll", "StepLL, one step towards the least-likely class (Kurakin et al. 2017; AAD eq. 4)")
def _stepll(eps, spec, *, seed, norm, **_):
    from .stepll import StepLL

    _linf_only(spec, norm)
    return StepLL(eps, seed=seed)


@ATTACKS.register("iter-stepll-K", "Iter-StepLL, K steps towards the least-likely class, e.g. iter-stepll-10")
def _iter_stepll(eps, spec, *, seed, norm, step_size, **_):
    from .stepll import IterStepLL

    _linf_only(spec, norm)
    return IterStepLL(eps, alpha=step_size, steps=spec.params["steps"], seed=seed)


def _pgd(eps, spec, *, seed, norm, step_size, loss="ce", **_):
    from .pgd import PGD

    steps = spec.params["steps"]
    alpha = step_size if step_size is not None else 2.5 * eps / steps  # Madry et al. 2018
    return PGD(eps, alpha, steps, norm=norm, random_start=True, restarts=spec.params.get("restarts", 1),
               loss=loss, seed=seed)


ATTACKS.add("pgd-K", _pgd, "PGD, K steps on the CE loss, step 2.5*eps/K, random start (Madry et al. 2018), e.g. pgd-20")
ATTACKS.add("pgd-KxR", _pgd, "PGD with R random restarts of K steps, worst case per example, e.g. pgd-100x5")
ATTACKS.add("cw-K", lambda eps, spec, **kw: _pgd(eps, spec, loss="cw", **kw),
            "CW-K, K PGD steps on the Carlini-Wagner margin loss (Carlini & Wagner 2017), e.g. cw-20")


@ATTACKS.register("a3-ATTACK", "A3, a gradient attack plus AAD's attention-deviation term (AAD eq. 11-13), "
                               "sigma 10, e.g. a3-pgd-20, a3-cw-20, a3-iter-stepll-10; a3s1-pgd-20 sets sigma 1")
def _a3(eps, spec, **opts):
    from .a3 import A3

    base = spec.params["base"]
    return A3(ATTACKS.get(base.family)(eps, base, **opts), sigma=spec.params.get("sigma", 10.0), kappa="mean")


@ATTACKS.register("autoattack", "AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square (Croce & Hein 2020)")
def _autoattack(eps, spec, *, seed, norm, num_classes, **_):
    from .autoattack import AutoAttack

    return AutoAttack(eps, norm=norm, version="standard", num_classes=num_classes, seed=seed)


def _square(eps, spec, *, seed, norm, **_):
    from .square import Square

    return Square(eps, n_queries=spec.params.get("queries", 5000), norm=norm, seed=seed)


ATTACKS.add("square", _square, "Square Attack, black-box random search, 5000 queries (Andriushchenko et al. 2020)")
ATTACKS.add("square-Q", _square, "Square Attack with Q queries, e.g. square-1000")


def _rays(eps, spec, *, seed, norm, **_):
    from .rays import RayS

    _linf_only(spec, norm)
    return RayS(eps, queries=spec.params.get("queries", 10000), seed=seed)


ATTACKS.add("rays", _rays, "RayS, hard-label black-box ray search, 10000 queries (Chen & Gu 2020)")
ATTACKS.add("rays-Q", _rays, "RayS with Q queries, e.g. rays-2000")


@ATTACKS.register("transfer:PATH", "transfer from a source model: transfer:<checkpoint or run dir>[:<attack>], "
                                   f"base attack {DEFAULT_TRANSFER_ATTACK} by default")
def _transfer(eps, spec, *, device, **opts):
    from ..io import load_model
    from .transfer import Transfer

    base = spec.params["base"]
    source = load_model(spec.params["path"], device=device)
    return Transfer(source, ATTACKS.get(base.family)(eps, base, device=device, **opts))


__all__ = ["ATTACKS", "AttackSpec", "parse_attack", "build_attack", "GRADIENT_FAMILIES", "BLACK_BOX_FAMILIES"]
