"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020), with the authors' PyTorch code.

The attack is ``pyautoattack.square.SquareAttack`` (PyPI ``pyautoattack``, the code of
``fra31/auto-attack``, the implementation AutoAttack runs): the paper's initialization,
square-size schedule ``p``, margin loss and acceptance rule. Two details differ from the paper's
own numpy code (``max-andr/square-attack``): in each iteration the square's position and its
per-channel signs are drawn once and shared by all examples still being attacked (the paper's
code draws them per image), and a draw that would leave an image unchanged is not redrawn (the
paper's code redraws it). Both affect query efficiency slightly, not what the attack can find.
This module also holds the glue every component of the authors' package goes through.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..errors import ConfigError
from .base import Attack

REFERENCE_NORMS = {"linf": "Linf", "l2": "L2"}  # our norm names -> the authors'


def resolve_seed(seed: Optional[int]) -> int:
    """The seed to hand an attack of the authors' package: ``seed``, or one drawn from torch's global RNG.

    (Their own fallback for ``None`` is ``time.time()``, which would not be reproducible from
    torch's seed.)
    """
    if seed is None:
        return int(torch.randint(0, 2**31 - 1, ()).item())
    return int(seed)


def check_square_l2_size(shape, p_init: float = 0.8) -> None:
    """Refuse image sizes on which the authors' L2 Square fails.

    The L2 start tiles the image with ``n // (h // 5)`` squares of side ``h // 5`` per axis from
    offset ``(h - 5 * (h // 5)) // 2``; when the last square does not fit (e.g. 12x12 or 14x14
    images) the code fails with a shape error. The first random square has side about
    ``sqrt(p_init * h * w)``, which must fit too (it does not in some non-square images).
    28x28, 32x32 and 224x224 are fine.
    """
    h, w = int(shape[-2]), int(shape[-1])
    s, start = h // 5, (h - 5 * (h // 5)) // 2
    first = max(int(round(math.sqrt(p_init * h * w))), 3)
    first += 1 - first % 2
    if s < 1 or (s > 1 and (start + (h // s) * s > h or start + (w // s) * s > w)) or first > min(h, w):
        raise ConfigError(f"the L2 Square attack cannot tile {h}x{w} images (its initialization needs "
                          f"sizes such as 10, 28, 32 or 224)")


def run_reference(perturb, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``perturb(x, y)`` of an attack from the authors' package, without its side effect on torch's RNG.

    Their ``perturb`` seeds torch's *global* RNG (``torch.random.manual_seed`` and
    ``torch.cuda.random.manual_seed``, the current CUDA device); a forked RNG state keeps the
    caller's random stream as it was. Parameter ``.grad`` that FAB's ``backward`` calls accumulate
    is restored by :func:`~attnguard.attacks.base.preserved_state` around every attack call; the
    model's train/eval mode is never touched by their code.
    """
    devices = set()
    if x.device.type == "cuda":
        devices.add(x.device.index if x.device.index is not None else torch.cuda.current_device())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        devices.add(torch.cuda.current_device())
    with torch.random.fork_rng(devices=sorted(devices)):
        adv = perturb(x, y)
    return adv.detach().to(device=x.device, dtype=x.dtype)


QueryHook = Callable[[int, int], None]  # (queries used so far, query budget)


def counting_queries(predict, budget: int, hook: Optional[QueryHook], skip: int = 1):
    """``predict`` that reports, every ``budget // 50`` calls, how many queries the attack has used.

    For a query-progress display (``query_progress`` of :class:`Square`, AutoAttack's Square):
    the authors' ``SquareAttack.perturb`` makes ``skip`` bookkeeping calls (the clean check) before
    its search, whose start and iterations are one query each for every example still attacked,
    so calls after the first ``skip`` count the queries (at most ``budget``). Without a hook:
    ``predict`` itself, no cost.
    """
    if hook is None:
        return predict
    every = max(1, budget // 50)  # about 50 updates per batch: a Python call, no host sync
    calls = reported = 0

    def counted(x):
        nonlocal calls, reported
        calls += 1
        used = min(calls - skip, budget)
        if used > reported and (used % every == 0 or used == budget):
            reported = used
            hook(used, budget)
        return predict(x)

    return counted


class Square(Attack):
    """Square Attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial
    attack via random search"), a score-based black-box attack: it queries the model's logits (the
    margin loss), never its gradients.

    Random search over squares: start from vertical stripes of +-eps; each iteration changes one
    square window (side from the schedule of ``p``, which halves at iterations 10, 50, 200, 500,
    1000, 2000, 4000, 6000, 8000 of a 10000-query budget, rescaled to ``n_queries``) and keeps it if
    the margin loss decreases. One query per iteration and example, ``n_queries`` at most (plus one
    for the start), one restart. Via the authors' ``SquareAttack(loss="margin", resc_schedule=True)``.

    Args:
        eps: radius ([0, 1] pixel units).
        n_queries: query budget per example (the paper and AutoAttack use 5000 for L-inf/L2 eval).
        p_init: initial fraction of pixels changed per square (0.8 in the paper for L-inf).
        norm: ``"linf"`` or ``"l2"``.
        seed: seed of the random search (``None``: drawn from torch's global RNG).
        skip_misclassified: leave already-misclassified examples unchanged.
    """

    name = "square"
    uses_gradients = False
    query_progress: Optional[QueryHook] = None  # called (queries used, budget) every few queries, when set

    def __init__(self, eps: float, *, n_queries: int = 5000, p_init: float = 0.8, norm: str = "linf",
                 seed: Optional[int] = 0, skip_misclassified: bool = True):
        super().__init__(eps, norm=norm, skip_misclassified=skip_misclassified, seed=seed)
        if int(n_queries) < 1:
            raise ConfigError(f"n_queries must be >= 1, got {n_queries}")
        if not 0 < p_init <= 1:
            raise ConfigError(f"p_init must be in (0, 1], got {p_init}")
        self.n_queries = int(n_queries)
        self.p_init = float(p_init)

    def perturb(self, model, x, y):
        from pyautoattack.square import SquareAttack

        if self.norm == "l2":
            check_square_l2_size(x.shape, self.p_init)
        predict = counting_queries(model, self.n_queries, self.query_progress)
        atk = SquareAttack(predict, norm=REFERENCE_NORMS[self.norm], n_queries=self.n_queries, eps=self.eps,
                           p_init=self.p_init, n_restarts=1, seed=resolve_seed(self.seed), verbose=False,
                           loss="margin", resc_schedule=True, device=x.device)
        with torch.no_grad():  # a score-based attack: no graph needed anywhere
            return run_reference(atk.perturb, x, y)

    def __repr__(self) -> str:
        return f"Square(eps={self.eps:g}, n_queries={self.n_queries}, p_init={self.p_init:g}, norm={self.norm})"
