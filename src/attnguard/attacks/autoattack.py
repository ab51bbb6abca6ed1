"""AutoAttack, "standard" version (Croce & Hein, ICML 2020), run with the authors' own code.

The components are those of the authors' package (PyPI ``pyautoattack``, the code of
``fra31/auto-attack``): their ``AutoAttack`` object is built with ``version="standard"``, so every
setting is theirs, not a copy of it. Only the PyTorch modules of the package are imported
(``pyautoattack/__init__`` loads ``autoattack.py`` and the four PyTorch components; the
TensorFlow helpers ``utils_tf*.py`` and ``fab_tf.py`` are never imported).

Their ``run_standard_evaluation`` is not called: it only logs the robust accuracy after each
component, and it runs its own checks and batching. :meth:`AutoAttack.perturb` runs the same
sequence the same way (each component on the examples still robust, under ``torch.no_grad()``,
all with the same seed) and keeps, per example, whether it survived each component.
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Tuple

import torch

from ..errors import ConfigError
from .base import Attack, project
from .square import REFERENCE_NORMS, QueryHook, check_square_l2_size, counting_queries, resolve_seed, run_reference

COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")
STANDARD = dict(steps=100, n_queries=5000, n_target_classes=9)  # what version="standard" sets (checked in tests)


class AutoAttack(Attack):
    """AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks"), version ``"standard"``, with the authors' implementation.

    Components, run in this order, each on the examples still classified correctly (so the result
    is the per-example worst case: the first component that fools the model decides):

    1. APGD-CE: APGD on the cross-entropy, 100 iterations, 1 restart, ``rho = 0.75``.
    2. APGD-T: APGD on the targeted DLR loss towards each of the top-2 .. top-10 classes in turn,
       100 iterations each. Skipped for ``C < 4`` classes: the targeted DLR loss divides by
       ``z_1 - (z_3 + z_4) / 2`` and needs four logits (the authors' check says the same).
    3. FAB-T: targeted FAB, 100 iterations, 1 restart, the same 9 target classes.
    4. Square: 5000 queries, ``p_init = 0.8``, margin loss, no rescaled schedule.

    These are ``pyautoattack.AutoAttack(version="standard")``'s settings for L-inf and L2. One
    departure: with ``C <= 9`` classes APGD-T and FAB-T use ``C - 1`` target classes, where the
    authors' code would index past the last class. All components get the same seed, as in the
    reference. Every component's output is projected onto the eps-ball and [0, 1] before its
    success is checked, so a point counted as fooling is the point returned. Examples the model
    already misclassifies are left unchanged (the authors' robust flags start at clean accuracy).

    Args:
        eps: radius ([0, 1] pixel units).
        norm: ``"linf"`` or ``"l2"``.
        version: ``"standard"``; ``"custom"`` lets ``steps``, ``n_queries`` and
            ``n_target_classes`` be changed (for smoke tests; such runs are not AutoAttack numbers).
        num_classes: the model's number of classes ``C`` (checked against its logits).
        seed: seed of the components' random draws (``None``: drawn from torch's global RNG).
        verbose: print the robust accuracy after each component.
        steps, n_queries, n_target_classes: only with ``version="custom"``.

    After a call, for the batch given to it:

    * ``last_components`` maps each component that ran to a bool tensor ``[B]``: the example is
      classified correctly clean and still after this component (cumulative, so non-increasing);
    * ``last_robust`` maps each component to the number of such examples;
    * ``last_seconds`` maps each component to its wall-clock time.
    """

    name = "autoattack"
    query_progress: Optional[QueryHook] = None  # (queries used, budget) of the Square component, when set

    def __init__(self, eps: float, *, norm: str = "linf", version: str = "standard", num_classes: int = 10,
                 seed: Optional[int] = 0, verbose: bool = False, steps: Optional[int] = None,
                 n_queries: Optional[int] = None, n_target_classes: Optional[int] = None):
        # skip_misclassified=False: perturb sees the whole batch and starts from the clean robust flags
        # itself, so that its per-component outcomes cover every example of the call.
        super().__init__(eps, norm=norm, skip_misclassified=False, seed=seed)
        if version not in ("standard", "custom"):
            raise ConfigError(f"AutoAttack version must be 'standard' or 'custom', got {version!r}")
        overrides = dict(steps=steps, n_queries=n_queries, n_target_classes=n_target_classes)
        if version == "standard" and any(v is not None for v in overrides.values()):
            raise ConfigError("AutoAttack 'standard' uses fixed settings; pass version='custom' to change "
                              "steps, n_queries or n_target_classes")
        settings = {k: (STANDARD[k] if v is None else int(v)) for k, v in overrides.items()}
        for k, v in settings.items():
            if v < 1:
                raise ConfigError(f"AutoAttack {k} must be >= 1, got {v}")
        if int(num_classes) < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        self.version = version
        self.num_classes = int(num_classes)
        self.verbose = verbose
        self.steps = settings["steps"]
        self.n_queries = settings["n_queries"]
        self.n_target_classes = settings["n_target_classes"]
        self.last_components: Dict[str, torch.Tensor] = {}
        self.last_robust: Dict[str, int] = {}
        self.last_seconds: Dict[str, float] = {}

    def components(self, model, seed: int, device=None) -> List[Tuple[str, object]]:
        """``[(name, the authors' attack object)]`` in the order they run; each has ``perturb(x, y)``.

        Built fresh for every call from ``pyautoattack.AutoAttack(version="standard")``.
        """
        from pyautoattack import AutoAttack as Reference
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

        ref = Reference(model, eps=self.eps, norm=REFERENCE_NORMS[self.norm], seed=seed, version="standard",
                        device=device)
        apgd, apgdt, fab, square = ref.apgd, ref.apgd_targeted, ref.fab, ref.square
        apgd.loss = "ce"
        fab.targeted, fab.n_restarts = True, 1  # what the reference sets before running "fab-t"
        if self.version == "custom":
            # APGD derives its step-size checkpoints from n_iter in its constructor: rebuild it.
            common = dict(norm=apgd.norm, eps=apgd.eps, seed=seed, eot_iter=apgd.eot_iter, rho=apgd.thr_decr,
                          device=device, logger=apgd.logger, n_iter=self.steps)
            apgd = APGDAttack(model, n_restarts=apgd.n_restarts, loss="ce", **common)
            apgdt = APGDAttack_targeted(model, n_restarts=apgdt.n_restarts, **common)
            fab.n_iter = self.steps
            square.n_queries = self.n_queries
        targets = min(self.n_target_classes, self.num_classes - 1)
        apgdt.n_target_classes = fab.n_target_classes = targets
        out = [("apgd-ce", apgd)]
        if self.num_classes >= 4:
            out.append(("apgd-t", apgdt))
        out += [("fab-t", fab), ("square", square)]
        return out

    def perturb(self, model, x, y):
        with torch.no_grad():
            logits = model(x)
        if logits.shape[1] != self.num_classes:
            raise ConfigError(f"AutoAttack was built for num_classes={self.num_classes} but the model has "
                              f"{logits.shape[1]} outputs")
        clean = logits.argmax(1) == y
        if self.norm == "l2":
            check_square_l2_size(x.shape)  # fail before an hour of APGD/FAB, not after
        seed = resolve_seed(self.seed)
        x_adv = x.clone()
        robust = clean.clone()
        self.last_components, self.last_robust, self.last_seconds = {}, {}, {}
        for name, component in self.components(model, seed, device=x.device):
            t0 = time.perf_counter()
            idx = robust.nonzero().flatten()
            if name == "square":
                component.predict = counting_queries(component.predict, component.n_queries, self.query_progress)
            if idx.numel() > 0:
                with torch.no_grad():  # as the reference; APGD and FAB enable gradients where they need them
                    # contiguous: the reference flattens zeros_like(x)-shaped gradients with .view, which
                    # fails on the channels_last strides of the CPU evaluation's inputs
                    adv = run_reference(component.perturb, x[idx].contiguous(), y[idx])
                    adv = project(adv, x[idx], self.eps, self.norm)
                    fooled = model(adv).argmax(1) != y[idx]
                x_adv[idx[fooled]] = adv[fooled]
                robust[idx[fooled]] = False
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            self.last_seconds[name] = time.perf_counter() - t0
            self.last_components[name] = robust.clone()
            self.last_robust[name] = int(robust.sum())
            if self.verbose:
                print(f"AutoAttack {name}: {self.last_robust[name]}/{x.shape[0]} still robust "
                      f"({self.last_seconds[name]:.1f} s)")
        return x_adv

    def __repr__(self) -> str:
        extra = "" if self.version == "standard" else (f", steps={self.steps}, n_queries={self.n_queries}, "
                                                        f"n_target_classes={self.n_target_classes}")
        return f"AutoAttack(eps={self.eps:g}, norm={self.norm}, version={self.version}{extra})"
