"""The building blocks of an evaluation: input checks, attack resolution, per-example correctness.

Robust accuracy that can be trusted: eval mode, [0, 1] inputs, worst case over attacks per example.

An example counts as robust to an attack only if the model classifies it correctly both clean
and after the attack; it counts as robust overall (``worst_case``) only if it survives every
attack in the list (Carlini et al. 2019, "On Evaluating Adversarial Robustness", sec. 5: report
the per-example minimum over attacks, not the best single attack).
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..attacks.base import Attack
from ..errors import AttnGuardError, ConfigError, DataError
from ..utils.modes import eval_mode

NORMS = ("linf", "l2")
BALL_TOL = 1e-5  # float slack when checking that an attack stayed in the eps-ball and in [0, 1]


@dataclass
class PerExample:
    """Per-example correctness (CPU bool tensors) behind an evaluation's numbers.

    ``clean`` is ``[N]``. ``attacks[name][i]`` is True when example ``i`` is classified correctly
    clean *and* after the attack; it has ``N_a <= N`` entries, fewer for an attack run on the first
    ``N_a`` examples only (``autoattack@300``). ``black_box[name]`` says whether the attack never
    reads the model's gradients.
    """

    clean: torch.Tensor
    attacks: Dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)
    black_box: Dict[str, bool] = field(default_factory=dict)
    named: Dict[str, bool] = field(default_factory=dict)  # built from a registry name (so reusable by name)
    # Attacks made of components run in sequence (AutoAttack): components[name][component][i] is True
    # when example i is correct clean and still after that component (cumulative, so non-increasing).
    components: Dict[str, Dict[str, torch.Tensor]] = field(default_factory=dict)
    component_seconds: Dict[str, Dict[str, float]] = field(default_factory=dict)

    @property
    def n_worst(self) -> int:
        """The examples every attack ran on: the first ``min N_a`` (``N`` without attacks)."""
        return min([int(self.clean.numel())] + [int(ok.numel()) for ok in self.attacks.values()])

    @property
    def robust(self) -> torch.Tensor:
        """Correct clean and under every attack, on the first :attr:`n_worst` examples."""
        n = self.n_worst
        out = self.clean[:n].clone()
        for ok in self.attacks.values():
            out &= ok[:n]
        return out


def model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def check_eps(eps, norm: str = "linf") -> float:
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps != eps:
        raise ConfigError(f"eps must be a number, got {eps!r}")
    if eps < 0 or (norm == "linf" and eps > 1):
        bound = "[0, 1] (pixel units, e.g. 0.3 or 8/255)" if norm == "linf" else ">= 0"
        raise ConfigError(f"eps must be in {bound}, got {eps!r}")
    return float(eps)


def check_inputs(model: nn.Module, images, labels) -> Tuple[int, int]:
    """One-line DataError unless ``images`` is float [N, C, H, W] in [0, 1] and ``labels`` int64 [N] in range.

    Returns ``(N, num_classes)`` (num_classes from the model, else from one forward pass).
    """
    if not isinstance(images, torch.Tensor):
        raise DataError(f"images must be a torch tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise DataError(f"images must be a float tensor with values in [0, 1], got dtype {images.dtype}"
                        + (" (divide uint8 pixels by 255)" if images.dtype == torch.uint8 else ""))
    if images.dim() != 4:
        raise DataError(f"images must have shape [N, C, H, W], got {list(images.shape)}")
    n = images.shape[0]
    if n == 0:
        raise DataError("images is empty (N = 0)")
    expected = getattr(model, "input_size", None)
    if expected is not None and tuple(images.shape[1:]) != tuple(expected):
        raise DataError(f"images have shape [N, {', '.join(map(str, images.shape[1:]))}] but the model takes "
                        f"[N, {', '.join(map(str, expected))}]")
    if not bool(torch.isfinite(images).all()):
        raise DataError("images contain NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
        raise DataError(f"images must have values in [0, 1] (normalization happens inside the model), "
                        f"got values in [{lo:g}, {hi:g}]")
    if not isinstance(labels, torch.Tensor):
        raise DataError(f"labels must be a torch tensor, got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise DataError(f"labels must be int64 class indices, got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise DataError(f"labels must have shape [{n}] to match the images, got {list(labels.shape)}")
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        with torch.no_grad(), eval_mode(model):
            num_classes = int(model(images[:1].to(model_device(model))).shape[1])
    lmin, lmax = int(labels.min()), int(labels.max())
    if lmin < 0 or lmax >= num_classes:
        raise DataError(f"labels must be in [0, {num_classes - 1}] for a {num_classes}-class model, "
                        f"got labels in [{lmin}, {lmax}]")
    return n, int(num_classes)


def is_black_box(attack) -> bool:
    """True for attacks that never read the target model's gradients (Square, RayS, transfer).

    An attack built from a registry name answers with its family's registered ``uses_gradients``;
    any other object with its own ``uses_gradients`` attribute (True when absent, as on ``Attack``).
    """
    from ..attacks.registry import spec_of

    spec = spec_of(attack)
    if spec is not None:
        return spec.black_box
    return not getattr(attack, "uses_gradients", True)


def resolve_attacks(attacks, eps: float, *, norm: str, seed: int, num_classes: int, device) -> List[tuple]:
    """``[(label, attack object, N or None)]`` from names and/or attack objects; duplicate labels are refused.

    ``N`` comes from a name's ``@N`` suffix (``autoattack@300``, parsed by
    :func:`~attnguard.attacks.registry.parse_attack`): the attack runs on the first N examples only.
    """
    from ..attacks.registry import build_attack, parse_attack

    if isinstance(attacks, str) or callable(attacks):
        attacks = [attacks]
    out, seen = [], set()
    for a in attacks:
        subset = None
        if isinstance(a, str):
            spec = parse_attack(a)
            subset = spec.subset
            obj = build_attack(spec.without_subset(), eps, seed=seed, num_classes=num_classes, norm=norm,
                               device=device)
            label = obj.registry_name
        elif callable(a):
            obj = a
            label = getattr(a, "registry_name", None) or getattr(a, "name", None) or type(a).__name__
            a_eps = getattr(a, "eps", None)
            if a_eps is not None and abs(float(a_eps) - eps) > 1e-9:
                raise ConfigError(f"attack '{label}' has eps={a_eps:g} but the evaluation uses eps={eps:g}")
            a_norm = getattr(a, "norm", None)
            if a_norm is not None and a_norm != norm:
                raise ConfigError(f"attack '{label}' uses norm {a_norm} but the evaluation uses {norm}")
        else:
            raise ConfigError(f"attacks must be names or attack objects, got {type(a).__name__}")
        if label in seen:
            raise ConfigError(f"attack '{label}' is listed twice (give objects distinct registry_name)")
        seen.add(label)
        out.append((label, obj, subset))
    return out


def _check_adv(label: str, x_adv, x, eps: float, norm: str) -> None:
    # A point outside the threat model would understate robustness; refuse it rather than clip it.
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        raise AttnGuardError(f"attack '{label}' returned {getattr(x_adv, 'shape', type(x_adv).__name__)}, "
                             f"expected a tensor of shape {list(x.shape)}")
    d = (x_adv.detach() - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    worst, lo, hi = float(size.max()), float(x_adv.min()), float(x_adv.max())
    if worst > eps + BALL_TOL or lo < -BALL_TOL or hi > 1 + BALL_TOL:
        raise AttnGuardError(f"attack '{label}' left the threat model ({norm} distance {worst:.6g} > eps "
                             f"{eps:g}, or values outside [0, 1]: [{lo:.4g}, {hi:.4g}]); its accuracy would not count")


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def eval_channels_last(model: nn.Module, device) -> bool:
    """Whether the evaluation runs ``model`` in channels_last: on the CPU, for attnguard's registered
    architectures. channels_last is fp32 all the same (a different loop order, not a lower precision);
    measured on the default run's LeNet, PGD-10 on 512 digits: 1.2x faster evaluation (docs/PERFORMANCE.md,
    "PGD evaluation"). Registered models only, because they are known to run in it (the trainer trains
    them so); an arbitrary model may ``.view`` an activation, which fails on channels_last strides. On
    CUDA in fp32 (TF32 off) it has not been measured, so it stays off there."""
    from ..models import MODELS, NormalizedModel

    return (torch.device(device).type == "cpu" and isinstance(model, NormalizedModel)
            and getattr(model, "arch", None) in MODELS)


@contextmanager
def channels_last_weights(model: nn.Module, on: bool = True):
    """Inside: the model's 4-d parameters (convolution kernels) in channels_last, so its convolutions run
    in that format; on exit each parameter gets back its own tensor (bitwise, the same storage)."""
    saved = []
    if on:
        for p in model.parameters():
            if p.dim() != 4:
                continue
            # .to, not .contiguous: a kernel with one input channel ([C, 1, k, k], LeNet's first) counts as
            # contiguous in both formats, but only channels_last strides make its convolution run in it
            cl = p.data.to(memory_format=torch.channels_last)
            if cl.data_ptr() != p.data.data_ptr():
                saved.append((p, p.data))
                p.data = cl
    try:
        yield
    finally:
        for p, data in saved:
            p.data = data


def attack_correct(model, attacks: Sequence[tuple], images, labels, eps: float, *, norm: str, batch_size: int,
                   device, progress: bool = False, desc: str = "eval",
                   channels_last: Optional[bool] = None) -> PerExample:
    """Clean and per-attack correctness of every example (model already in eval mode, on ``device``).

    ``attacks`` holds ``(label, attack)`` or ``(label, attack, N)``: with ``N`` the attack runs on the
    first ``N`` examples only (all of them when ``N`` is None or at least their number).
    ``channels_last``: run the model in channels_last (None: :func:`eval_channels_last` decides).
    """
    if channels_last is None:
        channels_last = eval_channels_last(model, device)
    with channels_last_weights(model, channels_last):
        return _attack_correct(model, attacks, images, labels, eps, norm=norm, batch_size=batch_size,
                               device=device, progress=progress, desc=desc)


def _attack_correct(model, attacks, images, labels, eps, *, norm, batch_size, device, progress, desc) -> PerExample:
    n = images.shape[0]
    attacks = [(a[0], evaluation_variant(a[1]), min(n, a[2]) if len(a) > 2 and a[2] is not None else n)
               for a in attacks]
    clean, per = [], {label: [] for label, _, _ in attacks}
    seconds = {label: 0.0 for label, _, _ in attacks}
    parts: Dict[str, Dict[str, list]] = {}
    part_seconds: Dict[str, Dict[str, float]] = {}
    starts = range(0, n, batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        ticks = sum(-(-stop // batch_size) for _, _, stop in attacks) or len(starts)
        bar = tqdm(total=ticks, desc=desc, unit="batch", leave=False)
    try:
        for s in starts:
            x = images[s:s + batch_size].to(device, non_blocking=True)
            y = labels[s:s + batch_size].to(device, non_blocking=True)
            with torch.no_grad():
                ok = model(x).argmax(1) == y
            clean.append(ok.cpu())
            for label, attack, stop in attacks:
                if stop <= s:
                    continue
                xa, ya, oka = (x, y, ok) if stop >= s + x.shape[0] else (x[:stop - s], y[:stop - s], ok[:stop - s])
                _sync(device)
                t0 = time.perf_counter()
                with _query_bar(attack, label, progress):
                    # the clean pass above already knows which examples an Attack would skip
                    x_adv = attack(model, xa, ya, clean_correct=oka) if isinstance(attack, Attack) else \
                        attack(model, xa, ya)
                with torch.no_grad():
                    adv_ok = model(x_adv).argmax(1) == ya
                _sync(device)
                seconds[label] += time.perf_counter() - t0
                _check_adv(label, x_adv, xa, eps, norm)
                per[label].append((oka & adv_ok).cpu())
                _collect_components(label, attack, oka, parts, part_seconds)
                if bar is not None:
                    bar.update(1)
            if bar is not None and not attacks:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return PerExample(clean=torch.cat(clean), attacks={k: torch.cat(v) for k, v in per.items()}, seconds=seconds,
                      black_box={label: is_black_box(a) for label, a, _ in attacks},
                      named={label: getattr(a, "registry_name", None) == label for label, a, _ in attacks},
                      components={k: {c: torch.cat(m) for c, m in v.items()} for k, v in parts.items()},
                      component_seconds=part_seconds)


def evaluation_variant(attack):
    """The attack as the evaluation runs it: a PGD built from a name (``pgd-K``, ``pgd-KxR``, ``cw-K``)
    gets ``early_stop`` (an example leaves the later steps once an iterate fooled it; at least as strong
    as judging the last iterate, and cheaper: see :class:`~attnguard.attacks.pgd.PGD`), and so does the
    PGD inside a named ``a3-``/``a3n-`` attack, so that A3-PGD-k and PGD-k in one table are judged by
    the same rule. A copy is returned; objects the caller built keep their own settings."""
    from ..attacks.a3 import A3
    from ..attacks.pgd import PGD

    if not getattr(attack, "registry_name", None):
        return attack
    if type(attack) is PGD and not attack.early_stop:
        attack = copy.copy(attack)
        attack.early_stop = True
    elif isinstance(attack, A3) and type(attack.inner) is PGD and not attack.inner.early_stop:
        attack = copy.copy(attack)
        attack.inner = copy.copy(attack.inner)
        attack.inner.early_stop = True
    return attack


@contextmanager
def _query_bar(attack, label: str, progress: bool):
    """While a black-box attack runs on one batch: a progress bar of the queries it has used, out of
    its budget, fed by the attack's ``query_progress`` hook (Square, RayS, AutoAttack's Square).

    Only with the evaluation's ``progress`` on and stderr a terminal (tqdm's ``disable=None``), so a
    log file or CI gets no query lines; the attacks call the hook every few queries, not every one.
    """
    if not progress or not hasattr(attack, "query_progress"):
        yield
        return
    from tqdm.auto import tqdm

    bar = None

    def update(used: int, budget: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=budget, desc=f"{label} queries", unit="query", leave=False, disable=None)
        bar.update(max(0, min(used, budget) - bar.n))

    attack.query_progress = update
    try:
        yield
    finally:
        attack.query_progress = None
        if bar is not None:
            bar.close()


def _collect_components(label: str, attack, ok: torch.Tensor, parts: dict, part_seconds: dict) -> None:
    """Append the batch's per-component outcomes of an attack that reports them (``last_components``:
    component -> bool ``[B]``, as :class:`~attnguard.attacks.autoattack.AutoAttack`); others are ignored."""
    comps = getattr(attack, "last_components", None)
    if not isinstance(comps, dict) or not comps:
        return
    have = parts.setdefault(label, {})
    if have and list(have) != list(comps):
        raise AttnGuardError(f"attack '{label}' ran components {list(comps)} on one batch and {list(have)} on "
                             f"another; its breakdown would not add up")
    for name, mask in comps.items():
        have.setdefault(name, []).append((ok & mask.to(ok.device)).cpu())
    secs = part_seconds.setdefault(label, {})
    for name, s in (getattr(attack, "last_seconds", None) or {}).items():
        secs[name] = secs.get(name, 0.0) + float(s)


def _frac(t: torch.Tensor) -> float:
    return float(t.float().mean())
