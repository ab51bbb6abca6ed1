"""AutoAttack, "standard" version (Croce & Hein, ICML 2020), assembled from torchattacks components.

torchattacks' own ``AutoAttack`` class leaves every component at 10 iterations, which is not the
standard evaluation; this class configures the components with the reference settings of
``fra31/auto-attack`` (``AutoAttack.set_version("standard")``) and runs them in sequence.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import ConfigError
from .base import Attack, project
from .square import TA_NORMS, check_square_l2_size, resolve_seed, run_torchattack

STANDARD = dict(steps=100, n_queries=5000, n_target_classes=9)


class AutoAttack(Attack):
    """AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks"), version ``"standard"``.

    Components, run in this order, each on the examples still classified correctly (so the result
    is the per-example worst case: the first component that fools the model decides):

    1. APGD-CE: ``torchattacks.APGD(loss="ce", steps=100, n_restarts=1, eot_iter=1, rho=0.75)``.
    2. APGD-T: ``torchattacks.APGDT(steps=100, n_restarts=1, eot_iter=1, rho=0.75)`` with
       ``n_target_classes = min(9, C - 1)`` (targeted DLR loss towards each of the top-2 .. top-10
       classes in turn). Skipped for ``C < 4`` classes: the targeted DLR loss divides by
       ``z_1 - (z_3 + z_4) / 2`` and needs four logits.
    3. FAB-T: ``torchattacks.FAB(multi_targeted=True, steps=100, n_restarts=1, alpha_max=0.1,
       eta=1.05, beta=0.9)`` with ``n_target_classes = min(9, C - 1)``.
    4. Square: ``torchattacks.Square(n_queries=5000, n_restarts=1, p_init=0.8, loss="margin",
       resc_schedule=False)``.

    These are the reference's standard settings for L-inf and L2 (``fra31/auto-attack``,
    ``set_version("standard")``: APGD 1 restart, APGD-T and FAB-T 9 target classes, 100 iterations
    each, Square 5000 queries without rescaled schedule). All components get the same seed, as in
    the reference. Every component's output is projected onto the eps-ball and [0, 1] before its
    success is checked, so a point counted as fooling is the point returned.

    Args:
        eps: radius ([0, 1] pixel units).
        norm: ``"linf"`` or ``"l2"``.
        version: ``"standard"``; ``"custom"`` lets ``steps``, ``n_queries`` and
            ``n_target_classes`` be changed (for smoke tests; such runs are not AutoAttack numbers).
        num_classes: the model's number of classes ``C`` (checked against its logits).
        seed: seed of the components' random draws (``None``: drawn from torch's global RNG).
        verbose: print the robust accuracy after each component.
        steps, n_queries, n_target_classes: only with ``version="custom"``.

    After a call, ``last_robust`` maps each component name to the number of attacked examples
    (the correctly classified ones) still robust after it.
    """

    name = "autoattack"

    def __init__(self, eps: float, *, norm: str = "linf", version: str = "standard", num_classes: int = 10,
                 seed: Optional[int] = 0, verbose: bool = False, steps: Optional[int] = None,
                 n_queries: Optional[int] = None, n_target_classes: Optional[int] = None):
        super().__init__(eps, norm=norm, skip_misclassified=True, seed=seed)
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
        self.last_robust: dict = {}

    def components(self, model, seed: int):
        """``[(name, torchattacks attack)]`` in the order they run."""
        import torchattacks

        norm, eps, c = TA_NORMS[self.norm], self.eps, self.num_classes
        targets = min(self.n_target_classes, c - 1)
        out = [("apgd-ce", torchattacks.APGD(model, norm=norm, eps=eps, steps=self.steps, n_restarts=1, seed=seed,
                                             loss="ce", eot_iter=1, rho=0.75))]
        if c >= 4:
            apgdt = torchattacks.APGDT(model, norm=norm, eps=eps, steps=self.steps, n_restarts=1, seed=seed,
                                       eot_iter=1, rho=0.75, n_classes=c)
            apgdt.n_target_classes = targets  # torchattacks would use C - 1 (99 on CIFAR-100)
            out.append(("apgd-t", apgdt))
        fab = torchattacks.FAB(model, norm=norm, eps=eps, steps=self.steps, n_restarts=1, alpha_max=0.1, eta=1.05,
                               beta=0.9, seed=seed, multi_targeted=True, n_classes=c)
        fab.n_target_classes = targets
        out.append(("fab-t", fab))
        out.append(("square", torchattacks.Square(model, norm=norm, eps=eps, n_queries=self.n_queries, n_restarts=1,
                                                  p_init=0.8, loss="margin", resc_schedule=False, seed=seed)))
        return out

    def perturb(self, model, x, y):
        with torch.no_grad():
            n_out = model(x[:1]).shape[1]
        if n_out != self.num_classes:
            raise ConfigError(f"AutoAttack was built for num_classes={self.num_classes} but the model has "
                              f"{n_out} outputs")
        if self.norm == "l2":
            check_square_l2_size(x.shape)  # fail before an hour of APGD/FAB, not after
        seed = resolve_seed(self.seed)
        x_adv = x.clone()
        robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        self.last_robust = {}
        for name, atk in self.components(model, seed):
            idx = robust.nonzero().flatten()
            if idx.numel() > 0:
                adv = project(run_torchattack(atk, x[idx], y[idx]), x[idx], self.eps, self.norm)
                with torch.no_grad():
                    fooled = model(adv).argmax(1) != y[idx]
                x_adv[idx[fooled]] = adv[fooled]
                robust[idx[fooled]] = False
            self.last_robust[name] = int(robust.sum())
            if self.verbose:
                print(f"AutoAttack {name}: {self.last_robust[name]}/{x.shape[0]} still robust")
        return x_adv

    def __repr__(self) -> str:
        extra = "" if self.version == "standard" else (f", steps={self.steps}, n_queries={self.n_queries}, "
                                                        f"n_target_classes={self.n_target_classes}")
        return f"AutoAttack(eps={self.eps:g}, norm={self.norm}, version={self.version}{extra})"
