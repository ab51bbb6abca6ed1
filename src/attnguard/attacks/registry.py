"""Attack names, as the CLI and the evaluation spell them: ``build_attack("pgd-20", eps)``.

The registry holds one entry per *family*; its name is the pattern users write (``pgd-K``) and
its description says what the numbers mean. Each entry also carries the family's facts: how to
recognize its names (a regex with named groups, or a parse function for the names that contain
another attack name), whether the attack reads the target model's gradients, the settings a
name leaves unsaid, and one concrete example. :func:`parse_attack` tries the entries in
registration order; :func:`build_attack` builds the attack object.

Attack classes are imported inside the builders, so listing attacks imports no attack code
and a broken optional attack cannot break the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import AttnGuardError, ConfigError, UnknownNameError
from ..registry import Registry

DEFAULT_TRANSFER_ATTACK = "pgd-20"

# Named regex groups that hold counts, and how error messages call them.
NUMBER_GROUPS = {"steps": "K (steps)", "restarts": "R (restarts)", "queries": "Q (queries)"}

# An evaluation may run an attack on a prefix of its examples: ``autoattack@300``. The tail after
# the last "@" holds no path characters, so a transfer source such as ``transfer:runs/a@b/run``
# keeps its "@".
SUBSET_SUFFIX = re.compile(r"(?P<name>.+)@(?P<n>[^@/:\\]*)")


@dataclass(frozen=True)
class AttackSpec:
    """A parsed attack name: its family (a registry name), the settings the name carries (over the
    family's defaults) and the family's ``uses_gradients``."""

    name: str
    family: str
    params: Dict[str, Any] = field(default_factory=dict)
    uses_gradients: bool = True
    subset: Optional[int] = None  # ``name@N``: an evaluation runs it on its first N examples only

    @property
    def black_box(self) -> bool:
        """The attack never reads the target model's gradients (Square, RayS, transfer)."""
        return not self.uses_gradients

    def without_subset(self) -> "AttackSpec":
        return replace(self, subset=None)


def _whole(name: str, text: str, what: str, example: str) -> int:
    """``text`` as a whole number >= 1, else a ConfigError that says what is allowed."""
    if not re.fullmatch(r"[0-9]+", text or "") or int(text) < 1:
        raise ConfigError(f"attack '{name}': {what} must be a whole number >= 1 (e.g. {example}), got '{text}'")
    return int(text)


def _regex_parser(pattern: str, example: str) -> Callable:
    """A parse function for a family whose names match ``pattern`` (case-insensitive, whole name)."""
    rx = re.compile(pattern)

    def parse(name: str, defaults: dict) -> Optional[Tuple[str, dict]]:
        m = rx.fullmatch(name.lower())
        if m is None:
            return None
        params = {k: _whole(name, v, NUMBER_GROUPS[k], example) if k in NUMBER_GROUPS else v
                  for k, v in m.groupdict().items() if v is not None}
        return name.lower(), params

    return parse


class AttackRegistry(Registry):
    """The attack families. ``ATTACKS.add(pattern_name, builder, description, **facts)`` registers one:

    * ``pattern``: regex the whole lower-cased name must match; named groups become settings, and
      the groups ``steps``, ``restarts``, ``queries`` must be whole numbers >= 1. Default: the
      family name itself, for fixed names such as ``fgsm``.
    * ``parse``: instead of ``pattern``, ``parse(name, defaults) -> (canonical name, settings)``
      or None when the name is not this family's (for names holding another attack name).
    * ``example``: one concrete name (default: the family name); the typo suggestion and the tests use it.
    * ``uses_gradients``: False for black-box attacks that never read the target's gradients.
    * ``a3_base``: A3 can wrap it (an FGSM/PGD-type attack on a logit loss, AAD eq. 11-13).
    * ``default_options``: settings the name leaves unsaid (``spec.params`` starts from them).

    The builder is called ``builder(eps, spec, *, seed, num_classes, norm, device, step_size)``
    and returns the attack object. Families are tried in registration order: register the
    narrower pattern first where two overlap (``pgd-KxR`` before ``pgd-K``).
    """

    def add(self, name: str, builder: Callable, description: str, *, pattern: Optional[str] = None,
            parse: Optional[Callable] = None, example: Optional[str] = None, uses_gradients: bool = True,
            a3_base: bool = False, default_options: Optional[dict] = None) -> None:
        if pattern is not None and parse is not None:
            raise ValueError(f"attack family '{name}': give a pattern or a parse function, not both")
        if (pattern is not None or parse is not None) and not example:
            raise ValueError(f"attack family '{name}': give an example name, e.g. example='pgd-20'")
        example = example or name
        if parse is None:
            pattern = re.escape(name.lower()) if pattern is None else pattern
            parse = _regex_parser(pattern, example)
        super().add(name, builder, description, pattern=pattern, parse=parse, example=example,
                    uses_gradients=bool(uses_gradients), a3_base=bool(a3_base),
                    default_options=dict(default_options or {}))


ATTACKS = AttackRegistry("attack")


def attack_families(**facts) -> List[str]:
    """Family names, in registration order, whose facts equal ``facts`` (e.g. ``uses_gradients=False``)."""
    return [e.name for e in ATTACKS.entries() if all(e.meta.get(k) == v for k, v in facts.items())]


def split_subset(name: str) -> Tuple[str, Optional[int]]:
    """``("autoattack", 300)`` from ``"autoattack@300"``; ``(name, None)`` without a suffix.

    The one place the ``@N`` suffix is read (an evaluation runs such an attack on its first N
    examples); a suffix that is not a whole number >= 1 is a ConfigError.
    """
    m = SUBSET_SUFFIX.fullmatch(name.strip())
    if m is None:
        return name.strip(), None
    return m["name"].strip(), _whole(name, m["n"].strip(), "N (the first N examples)", "autoattack@300")


def parse_attack(name: str) -> AttackSpec:
    """The family and settings of an attack name; see :data:`ATTACKS` for the patterns.

    A suffix ``@N`` (``autoattack@300``) sets ``spec.subset``; ``spec.name`` is the name without it.
    """
    if not isinstance(name, str) or not name.strip():
        raise ATTACKS.unknown(str(name))
    name, subset = split_subset(name)
    if subset is not None:
        return replace(parse_attack(name), subset=subset)
    for entry in ATTACKS.entries():
        defaults = entry.meta["default_options"]
        hit = entry.meta["parse"](name, defaults)
        if hit is not None:
            canonical, params = hit
            return AttackSpec(canonical, entry.name, {**defaults, **params}, entry.meta["uses_gradients"])
    raise ATTACKS.unknown(name)


def spec_of(attack) -> Optional[AttackSpec]:
    """The parsed ``registry_name`` of an attack built by :func:`build_attack`; None for other objects."""
    name = getattr(attack, "registry_name", None)
    if not isinstance(name, str):
        return None
    try:
        return parse_attack(name)
    except AttnGuardError:
        return None  # a hand-made object that set its own label


def _a3_parser(prefix: str) -> Callable:
    """A parse function for ``<prefix>-<attack>`` and ``<prefix>s<sigma>-<attack>`` (the A3 families)."""

    def parse(name: str, defaults: dict) -> Optional[Tuple[str, dict]]:
        m = re.fullmatch(re.escape(prefix) + r"(s[^-]*)?-(.+)", name.lower())
        if m is None:
            return None
        params = {}
        if m[1]:
            if not re.fullmatch(r"s([0-9]+\.?[0-9]*|\.[0-9]+)", m[1]):
                raise ConfigError(f"attack '{name}': A3's sigma must be a number >= 0 "
                                  f"(e.g. {prefix}s1-pgd-20), got '{m[1][1:]}'")
            params["sigma"] = float(m[1][1:])
        base = parse_attack(name[len(m[0]) - len(m[2]):])
        if not ATTACKS.entry(base.family).meta["a3_base"]:
            raise ConfigError(f"attack '{name}': A3 wraps a gradient attack ("
                              f"{', '.join(attack_families(a3_base=True))}), got '{base.name}'")
        return name.lower(), {"base": base, **params}

    return parse


def _parse_transfer(name: str, defaults: dict) -> Optional[Tuple[str, dict]]:
    if not name.lower().startswith("transfer:"):
        return None
    rest = name[len("transfer:"):]
    path, base = rest, defaults["base"]
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
    return f"transfer:{path}:{base_spec.name}", {"path": path, "base": base_spec}


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
    if spec.subset is not None:
        raise ConfigError(f"attack '{spec.name}@{spec.subset}': '@N' (run on the first N examples) belongs in an "
                          f"evaluation's attack list (attnguard eval --attacks, eval.attacks), not here")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ConfigError(f"eps must be a number >= 0, got {eps!r}")
    if norm not in ("linf", "l2"):
        raise ConfigError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if step_size is not None and not step_size > 0:
        raise ConfigError(f"step size must be > 0, got {step_size!r}")
    opts = dict(seed=seed, num_classes=num_classes, norm=norm, device=device, step_size=step_size)
    attack = _build(spec, float(eps), **opts)
    attack.registry_name = spec.name
    return attack


def _build(spec: AttackSpec, eps: float, **opts):
    return ATTACKS.get(spec.family)(eps, spec, **opts)


def _linf_only(spec: AttackSpec, norm: str) -> None:
    if norm != "linf":
        raise ConfigError(f"attack '{spec.name}' is L-inf only, got norm={norm!r}")


# Builders: the name's settings -> the attack object (attack code imported only when built).

def _fgsm(eps, spec, *, seed, norm, **_):
    from .fgsm import FGSM

    return FGSM(eps, loss="ce", norm=norm, seed=seed)


def _stepll(eps, spec, *, seed, norm, **_):
    from .stepll import StepLL

    _linf_only(spec, norm)
    return StepLL(eps, seed=seed)


def _iter_stepll(eps, spec, *, seed, norm, step_size, **_):
    from .stepll import IterStepLL

    _linf_only(spec, norm)
    return IterStepLL(eps, alpha=step_size, steps=spec.params["steps"], seed=seed)


def _pgd(eps, spec, *, seed, norm, step_size, **_):
    from .pgd import PGD

    steps = spec.params["steps"]
    alpha = step_size if step_size is not None else 2.5 * eps / steps  # Madry et al. 2018
    return PGD(eps, alpha, steps, norm=norm, random_start=True, restarts=spec.params["restarts"],
               loss=spec.params["loss"], seed=seed)


def _a3(eps, spec, **opts):
    from .a3 import A3

    return A3(_build(spec.params["base"], eps, **opts), sigma=spec.params["sigma"], kappa="mean",
              normalized=spec.params["normalized"])


def _autoattack(eps, spec, *, seed, norm, num_classes, **_):
    from .autoattack import AutoAttack

    return AutoAttack(eps, norm=norm, version="standard", num_classes=num_classes, seed=seed)


def _square(eps, spec, *, seed, norm, **_):
    from .square import Square

    return Square(eps, n_queries=spec.params["queries"], norm=norm, seed=seed)


def _rays(eps, spec, *, seed, norm, **_):
    from .rays import RayS

    _linf_only(spec, norm)
    return RayS(eps, queries=spec.params["queries"], seed=seed)


def _transfer(eps, spec, *, device, **opts):
    from ..rundir import load_model
    from .transfer import Transfer

    source = load_model(spec.params["path"], device=device)
    return Transfer(source, _build(spec.params["base"], eps, device=device, **opts))


# One line per family. Order matters only where patterns overlap: pgd-KxR before pgd-K.
ATTACKS.add("fgsm", _fgsm, "FGSM, one signed-gradient step of size eps on the CE loss (Goodfellow et al. 2015)",
            a3_base=True)
ATTACKS.add("stepll", _stepll, "StepLL, one step towards the least-likely class (Kurakin et al. 2017; AAD eq. 4)",
            a3_base=True)
ATTACKS.add("iter-stepll-K", _iter_stepll, "Iter-StepLL, K steps towards the least-likely class, e.g. iter-stepll-10",
            pattern=r"iter-stepll-(?P<steps>.*)", example="iter-stepll-10", a3_base=True)
ATTACKS.add("pgd-KxR", _pgd, "PGD with R random restarts of K steps, worst case per example, e.g. pgd-100x5",
            pattern=r"pgd-(?P<steps>[0-9]+)x(?P<restarts>[0-9]+)", example="pgd-100x5", a3_base=True,
            default_options={"loss": "ce"})
ATTACKS.add("pgd-K", _pgd, "PGD, K steps on the CE loss, step 2.5*eps/K, random start (Madry et al. 2018), e.g. pgd-20",
            pattern=r"pgd-(?P<steps>.*)", example="pgd-20", a3_base=True,
            default_options={"loss": "ce", "restarts": 1})
ATTACKS.add("cw-K", _pgd, "CW-K, K PGD steps on the Carlini-Wagner margin loss (Carlini & Wagner 2017), e.g. cw-20",
            pattern=r"cw-(?P<steps>.*)", example="cw-20", a3_base=True, default_options={"loss": "cw", "restarts": 1})
ATTACKS.add("a3-ATTACK", _a3, "A3 as AAD eq. 11-13 write it: a gradient attack plus sigma * sum over cells of "
                              "|clean attention area - unnormalized Grad-CAM|, sigma 10 in the CAM's own units "
                              "(= a3n's sigma x h*w*(max g - min g)), e.g. a3-pgd-20, a3-iter-stepll-10; "
                              "a3s1-pgd-20 sets sigma 1",
            parse=_a3_parser("a3"), example="a3-pgd-20", default_options={"sigma": 10.0, "normalized": False})
ATTACKS.add("a3n-ATTACK", _a3, "A3 with attnguard's normalized deviation: sigma * mean over cells of |clean area - "
                               "min-max normalized Grad-CAM| (in [0, 1]), sigma 10, e.g. a3n-pgd-20; a3ns1-pgd-20 "
                               "sets sigma 1", parse=_a3_parser("a3n"), example="a3n-pgd-20",
            default_options={"sigma": 10.0, "normalized": True})
ATTACKS.add("autoattack", _autoattack, "AutoAttack standard, the authors' code: APGD-CE, APGD-T, FAB-T, Square "
                                       "(Croce & Hein 2020)")
ATTACKS.add("square", _square, "Square Attack, black-box random search, 5000 queries (Andriushchenko et al. 2020)",
            uses_gradients=False, default_options={"queries": 5000})
ATTACKS.add("square-Q", _square, "Square Attack with Q queries, e.g. square-1000",
            pattern=r"square-(?P<queries>.*)", example="square-1000", uses_gradients=False)
ATTACKS.add("rays", _rays, "RayS, hard-label black-box ray search, 10000 queries (Chen & Gu 2020)",
            uses_gradients=False, default_options={"queries": 10000})
ATTACKS.add("rays-Q", _rays, "RayS with Q queries, e.g. rays-2000",
            pattern=r"rays-(?P<queries>.*)", example="rays-2000", uses_gradients=False)
ATTACKS.add("transfer:PATH", _transfer, "transfer from a source model: transfer:<checkpoint or run dir>[:<attack>], "
                                        f"base attack {DEFAULT_TRANSFER_ATTACK} by default",
            parse=_parse_transfer, example="transfer:runs/std", uses_gradients=False,
            default_options={"base": DEFAULT_TRANSFER_ATTACK})


__all__ = ["ATTACKS", "AttackRegistry", "AttackSpec", "parse_attack", "split_subset", "build_attack", "attack_families",
           "spec_of"]
