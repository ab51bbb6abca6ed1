"""Sanity checks of an evaluation, after Carlini et al. 2019, "On Evaluating Adversarial Robustness".

Each check returns ``{"check", "status", "detail"}`` with status ``pass``, ``warn`` or ``skip``
and the numbers in ``detail``. A ``warn`` means the evaluation may overstate robustness
(typically gradient masking, sec. 4 and appendix of the paper); it is not proof of it.

Checks that need extra attacks run them on the first ``n_sub`` examples to stay affordable;
results of attacks already in the evaluation are reused on those examples.

* iterative vs single-step: PGD must not do worse than FGSM (sec. 5.2, "iterative attacks
  should perform better than single-step attacks");
* more steps / restarts must not help the model (sec. 5.2, "increase the number of iterations
  and restarts until convergence");
* accuracy must not rise with eps (sec. 5.5, "verify that increasing the distortion bound
  increases attack success");
* at an unbounded eps accuracy must reach chance or below (sec. 5.5, "unbounded attacks should
  reach 100% success");
* black-box attacks must not beat white-box ones (sec. 4.7 / 5.4), counted per example;
* the CE gradient w.r.t. the input must not vanish (sec. 5.3, gradient masking / shattered gradients);
* within AutoAttack, Square (black-box) must find little that APGD-CE, APGD-T and FAB-T missed
  (the authors' own flag, ``check_square_sr`` in ``fra31/auto-attack``; it needs no extra attack,
  so :func:`~attnguard.evaluation.core.evaluate` reports it even without ``sanity``).
"""

from __future__ import annotations

import math
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

from .blocks import PerExample, _frac, attack_correct

ZERO_GRAD_THRESHOLD = 0.01  # warn when more than 1% of examples have an all-zero input gradient
BLACK_BOX_THRESHOLD = 0.02  # warn when black-box attacks alone fool more than 2% of the examples
EPS_SWEEP = (0.25, 0.5, 1.0, 2.0)


def _tol(n: int) -> float:
    """Tolerance for accuracy comparisons on ``n`` examples: 1 point, or one example if that is more."""
    return max(0.01, 1.0 / n)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _line(check: str, ok: bool, detail: str) -> dict:
    return {"check": check, "status": "pass" if ok else "warn", "detail": detail}


def _skip(check: str, why: str) -> dict:
    return {"check": check, "status": "skip", "detail": why}


class _Runner:
    """Accuracy of named attacks on the subsample, cached, reusing the main evaluation's results."""

    def __init__(self, model, x, y, eps, per: PerExample, *, norm, seed, device, batch_size, num_classes,
                 progress):
        self.model, self.x, self.y, self.eps, self.norm = model, x, y, eps, norm
        self.opts = dict(seed=seed, num_classes=num_classes, norm=norm, device=device)
        self.device, self.batch_size, self.progress = device, batch_size, progress
        n = x.shape[0]
        # an attack run on fewer examples than the checks use (autoattack@100) is run again on all of them
        self.cache: Dict[tuple, torch.Tensor] = {(k, eps): v[:n] for k, v in per.attacks.items()
                                                 if per.named.get(k) and v.numel() >= n}
        self.clean = per.clean[:n]

    def correct(self, name: str, eps: float) -> torch.Tensor:
        from ..attacks.registry import build_attack

        key = (name, eps)
        if key not in self.cache:
            attack = build_attack(name, eps, **self.opts)
            res = attack_correct(self.model, [(name, attack)], self.x, self.y, eps, norm=self.norm,
                                 batch_size=self.batch_size, device=self.device, progress=self.progress,
                                 desc=f"sanity {name}")
            self.cache[key] = res.attacks[name]
        return self.cache[key]

    def acc(self, name: str, eps: float) -> float:
        return float(self.correct(name, eps).float().mean())


def check_iterative(r: _Runner, where: str) -> dict:
    name = "iterative beats single-step"
    if r.eps == 0:
        return _skip(name, "eps is 0")
    n = r.x.shape[0]
    fgsm, pgd = r.acc("fgsm", r.eps), r.acc("pgd-20", r.eps)
    return _line(name, pgd <= fgsm + _tol(n),
                 f"fgsm {_pct(fgsm)}, pgd-20 {_pct(pgd)}; PGD should be <= FGSM (tolerance {_pct(_tol(n))}, {where})")


def check_more_iterations(r: _Runner, where: str) -> dict:
    name = "more steps and restarts do not help the model"
    if r.eps == 0:
        return _skip(name, "eps is 0")
    n = r.x.shape[0]
    base = r.acc("pgd-10", r.eps)
    more = {k: r.acc(k, r.eps) for k in ("pgd-50", "pgd-10x5")}
    worse = [k for k, v in more.items() if v > base + _tol(n)]
    detail = (f"pgd-10 {_pct(base)}, " + ", ".join(f"{k} {_pct(v)}" for k, v in more.items())
              + f"; stronger attacks should not raise accuracy (tolerance {_pct(_tol(n))}, {where})")
    return _line(name, not worse, detail)


def check_eps_sweep(r: _Runner, where: str) -> dict:
    name = "accuracy falls as eps grows"
    if r.eps == 0:
        return _skip(name, "eps is 0")
    n = r.x.shape[0]
    cap = 1.0 if r.norm == "linf" else math.inf
    grid = sorted({min(r.eps * f, cap) for f in EPS_SWEEP})
    accs = [float(r.clean.float().mean())] + [r.acc("pgd-20", e) for e in grid]
    epss = [0.0] + grid
    rises = [(epss[i], epss[i + 1]) for i in range(len(accs) - 1) if accs[i + 1] > accs[i] + _tol(n)]
    detail = ("pgd-20 at eps " + ", ".join(f"{e:.4g}: {_pct(a)}" for e, a in zip(epss, accs))
              + f" ({where})" + (f"; rises between eps {rises}" if rises else ""))
    return _line(name, not rises, detail)


def check_large_eps(r: _Runner, where: str, num_classes: int) -> dict:
    name = "unbounded eps reaches chance"
    n = r.x.shape[0]
    # L-inf eps 1 (or an L2 ball holding the whole [0, 1] cube) lets the attack reach any image.
    big = 1.0 if r.norm == "linf" else math.sqrt(r.x[0].numel())
    acc = r.acc("pgd-20", big)
    chance = 1.0 / num_classes
    return _line(name, acc <= chance + _tol(n),
                 f"pgd-20 at eps {big:.4g}: {_pct(acc)}, chance {_pct(chance)}; should be at or below chance "
                 f"(tolerance {_pct(_tol(n))}, {where})")


def check_black_box(per: PerExample) -> dict:
    name = "black-box not stronger than white-box"
    black = [k for k, b in per.black_box.items() if b]
    white = [k for k, b in per.black_box.items() if not b]
    if not black or not white:
        from ..attacks.registry import attack_families

        missing = f"black-box ({', '.join(attack_families(uses_gradients=False))})" if not black else "white-box"
        return _skip(name, f"needs a {missing} attack in the evaluation's list")
    # per example, so on the examples every attack ran on (attacks may have run on a prefix: square@100)
    n = per.n_worst
    clean = per.clean[:n]
    fooled_black = clean.clone() & False
    for k in black:
        fooled_black |= clean & ~per.attacks[k][:n]
    survives_white = clean.clone()
    for k in white:
        survives_white &= per.attacks[k][:n]
    count = int((fooled_black & survives_white).sum())
    share = count / n
    where = "all examples" if n == per.clean.numel() else f"first {n} examples"
    return _line(name, share <= BLACK_BOX_THRESHOLD,
                 f"{count} of {n} examples ({_pct(share)}) fooled by {', '.join(black)} but by none of "
                 f"{', '.join(white)} (threshold {_pct(BLACK_BOX_THRESHOLD)}, {where})")


SQUARE_CHECK = "AutoAttack's Square finds little the gradient attacks missed"


def check_components_square(per: PerExample) -> List[dict]:
    """One line per attack with components (AutoAttack) whose last component is ``square``: warn when
    Square fools more than :data:`BLACK_BOX_THRESHOLD` of the examples that every white-box component
    before it left robust. The authors flag the same pattern (at 0.2 points) as a sign that the
    evaluation may be unreliable (gradient masking)."""
    out = []
    for label, comps in per.components.items():
        names = list(comps)
        if len(names) < 2 or names[-1] != "square":
            continue
        before, after = comps[names[-2]], comps["square"]
        count, n = int((before & ~after).sum()), before.numel()
        share = count / n
        out.append(_line(SQUARE_CHECK, share <= BLACK_BOX_THRESHOLD,
                         f"{label}: Square fooled {count} of {n} examples ({_pct(share)}) that "
                         f"{', '.join(names[:-1])} left robust (robust after {names[-2]} {_pct(_frac(before))}, "
                         f"after square {_pct(_frac(after))}; threshold {_pct(BLACK_BOX_THRESHOLD)}, all examples; "
                         f"more suggests gradient masking)"))
    return out


def zero_gradient_mask(model, x, y, *, batch_size: int, device) -> torch.Tensor:
    """Per example: is the gradient of the CE loss w.r.t. the input exactly zero everywhere?"""
    out = []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size].to(device).requires_grad_(True)
        yb = y[s:s + batch_size].to(device)
        with torch.enable_grad():
            loss = F.cross_entropy(model(xb).float(), yb, reduction="sum")
            (g,) = torch.autograd.grad(loss, xb)
        out.append((g.flatten(1).abs().amax(1) == 0).cpu())
    return torch.cat(out)


def check_zero_gradients(model, x, y, *, batch_size, device, where: str) -> dict:
    zero = zero_gradient_mask(model, x, y, batch_size=batch_size, device=device)
    count, n = int(zero.sum()), zero.numel()
    share = count / n
    return _line("input gradients are not zero", share <= ZERO_GRAD_THRESHOLD,
                 f"{count} of {n} examples ({_pct(share)}) have an all-zero CE input gradient "
                 f"(threshold {_pct(ZERO_GRAD_THRESHOLD)}, {where}); zero gradients mean gradient masking")


def run_sanity(model, images, labels, eps, per: PerExample, *, norm, seed, device, batch_size, num_classes,
               n_sub: int = 200, progress: bool = False) -> List[dict]:
    """All checks, in order; the model must already be in eval mode on ``device``."""
    n_sub = max(1, min(int(n_sub), images.shape[0]))
    x, y = images[:n_sub], labels[:n_sub]
    where = f"first {n_sub} examples"
    r = _Runner(model, x, y, eps, per, norm=norm, seed=seed, device=device, batch_size=batch_size,
                num_classes=num_classes, progress=progress)
    checks = [
        lambda: check_iterative(r, where),
        lambda: check_more_iterations(r, where),
        lambda: check_eps_sweep(r, where),
        lambda: check_large_eps(r, where, num_classes),
        lambda: check_black_box(per),
        lambda: check_zero_gradients(model, x, y, batch_size=batch_size, device=device, where=where),
    ]
    out = []
    for check in checks:
        t0 = time.perf_counter()
        line = check()
        line["detail"] += f" [{time.perf_counter() - t0:.1f}s]"
        out.append(line)
    return out
