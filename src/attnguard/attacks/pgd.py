"""Projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks").

L-inf steps ``x <- Proj(x + alpha * sign(grad))``; L2 steps ``x <- Proj(x + alpha * grad / ||grad||_2)``.
With ``loss="cw"`` this is the papers' "CW-k" attack (k steps of PGD on the CW margin loss).
The loop has no host synchronization: no ``.item()``, no data-dependent branching. The exception is
``early_stop`` (the evaluation's setting): it drops the examples an iterate has fooled from the later
steps, which needs their number on the host once per step.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import ConfigError
from .base import Attack, project
from .losses import make_loss


class PGD(Attack):
    """PGD with random start, restarts and a choice of loss.

    Args:
        eps: radius (pixel units in [0, 1]).
        alpha: step size; default ``2.5 * eps / steps`` (Madry et al.).
        steps: iterations per restart (>= 1).
        norm: ``"linf"`` or ``"l2"``.
        random_start: start from a uniform point in the ball (L-inf) or a random point in it (L2).
        restarts: independent runs; per example the worst case is kept (the first run that
            fools the model, otherwise the run with the highest final loss).
        loss: ``"ce"``, ``"cw"`` or a loss object (see ``attacks.losses``).
        targeted: ``y`` passed to the call holds target classes; the attack pulls towards them.
        skip_misclassified, seed: see :class:`~attnguard.attacks.base.Attack`.
        early_stop: once an iterate fools an example (misclassified; the target class when
            targeted), keep that iterate as the example's result and run the later steps (and
            restarts) on the examples still standing only. Every example some iterate fooled is
            returned fooled, and the others follow the same path as without it, so this is at least
            as strong as judging the last iterate (torchattacks, Madry et al.'s evaluation) and
            cheaper; the evaluation turns it on (:func:`~attnguard.evaluation.blocks.evaluation_variant`).
            Off by default: a training adversary (Madry et al.'s PGD-AT) trains on the last
            iterate of the whole batch. Needs a loss whose state is per example (``None`` or
            tensors along the batch dimension), as every built-in loss has.
    """

    name = "pgd"
    # Optional observer of the iterates, ``on_iterate(step, x_adv)``: step 0 is the start point, then
    # 1..steps after each projected step, once per restart, on the examples being attacked. It sees a
    # detached view (it must not modify it) and changes nothing the attack computes (AAD Fig. 2/12:
    # the ``attack-rounds`` study draws each round's attention).
    on_iterate = None

    def __init__(self, eps: float, alpha: Optional[float] = None, steps: int = 10, *, norm: str = "linf",
                 random_start: bool = True, restarts: int = 1, loss="ce", targeted: bool = False,
                 skip_misclassified: bool = True, seed: Optional[int] = None, early_stop: bool = False):
        super().__init__(eps, norm=norm, skip_misclassified=skip_misclassified and not targeted, seed=seed)
        self.early_stop = bool(early_stop)
        if int(steps) < 1 or int(restarts) < 1:
            raise ConfigError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.alpha = float(alpha) if alpha is not None else 2.5 * self.eps / self.steps
        self.random_start = random_start
        self.targeted = targeted
        self.loss = make_loss(loss, targeted)

    def _start(self, x, gen):
        if not self.random_start:
            return x.clone()
        if self.norm == "linf":
            noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
            return project(x + noise * self.eps, x, self.eps, self.norm)
        d = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        r = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=gen, device=x.device, dtype=x.dtype)
        return project(x + d * r * self.eps, x, self.eps, self.norm)

    def _step(self, x_adv, grad):
        if self.norm == "linf":
            return x_adv + self.alpha * grad.sign()
        n = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
        return x_adv + self.alpha * grad / n

    def run_once(self, model, x, y, state, gen, score: bool = True):
        """One restart: returns ``(x_adv, final per-example loss, final logits)``.

        With ``score=False`` the last loss/logits pass is skipped (one forward less per batch)
        and ``(x_adv, None, None)`` is returned: a single restart has nothing to compare.
        """
        x_adv = self._start(x, gen)
        if self.on_iterate is not None:
            self.on_iterate(0, x_adv.detach())
        for step in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss, _ = self.loss(model, x_adv, y, state)
                (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            x_adv = project(self._step(x_adv.detach(), grad), x, self.eps, self.norm)
            if self.on_iterate is not None:
                self.on_iterate(step + 1, x_adv.detach())
        if not score:
            return x_adv.detach(), None, None
        with torch.no_grad():
            loss, logits = self.loss(model, x_adv, y, state)
        return x_adv.detach(), loss.detach(), logits.detach()

    def success(self, logits, y):
        pred = logits.argmax(1)
        return pred == y if self.targeted else pred != y

    def perturb(self, model, x, y):
        gen = self.generator(x.device)
        state = self.loss.setup(model, x, y)
        if self.early_stop:
            return self._perturb_early_stop(model, x, y, state, gen)
        best, best_loss, best_logits = self.run_once(model, x, y, state, gen, score=self.restarts > 1)
        for _ in range(self.restarts - 1):
            cand, loss, logits = self.run_once(model, x, y, state, gen)
            done = self.success(best_logits, y)
            better = ~done & (self.success(logits, y) | (loss > best_loss))
            m = better.view(-1, *([1] * (x.dim() - 1)))
            best = torch.where(m, cand, best)
            best_loss = torch.where(better, loss, best_loss)
            best_logits = torch.where(better[:, None], logits, best_logits)
        return best

    def run_early_stop(self, model, x, y, state, gen, score: bool = True):
        """One restart with ``early_stop``: returns ``(x_adv, fooled [B], final loss [B] or None)``.

        ``x_adv`` holds, per example, the first iterate that fooled it, else the last iterate;
        ``fooled`` says which were fooled (by an iterate before the last, or, with ``score``, by the last).
        An example fooled by iterate ``t`` (``t = 0``: the start) leaves from step ``t + 1`` on: its
        gradient at ``t`` was already part of the batch's backward pass. With ``score`` the last
        iterates of the examples still standing get one more forward (their loss, ``-inf`` for the
        fooled ones, picks the best restart); without it the caller judges the returned points.
        """
        out = self._start(x, gen)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        active = torch.arange(x.shape[0], device=x.device)
        xa, xo, ya, sa = out, x, y, state
        if self.on_iterate is not None:
            self.on_iterate(0, out.detach())
        for step in range(self.steps):
            if active.numel() > 0:
                xa = xa.detach().requires_grad_(True)
                with torch.enable_grad():
                    loss, logits = self.loss(model, xa, ya, sa)
                    (grad,) = torch.autograd.grad(loss.sum(), xa)
                xa = xa.detach()
                hit = self.success(logits.detach(), ya)
                if bool(hit.any()):  # the one host sync per step: the size of the next, smaller batch
                    gone = active[hit]
                    fooled[gone] = True
                    out[gone] = xa[hit]
                    keep = (~hit).nonzero().flatten()
                    active, xa, xo, ya, grad = active[keep], xa[keep], xo[keep], ya[keep], grad[keep]
                    sa = _take(sa, keep)
                xa = project(self._step(xa, grad), xo, self.eps, self.norm)
            if self.on_iterate is not None:
                out[active] = xa
                self.on_iterate(step + 1, out.detach())
        out[active] = xa
        if not score:
            return out, fooled, None
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        if active.numel() > 0:
            with torch.no_grad():
                loss, logits = self.loss(model, xa, ya, sa)
            best_loss[active] = loss.detach().to(best_loss.dtype)
            fooled[active[self.success(logits, ya)]] = True
        return out, fooled, best_loss

    def _perturb_early_stop(self, model, x, y, state, gen):
        # A restart attacks only the examples no earlier restart fooled; of the rest, each keeps the
        # restart with the highest final loss (as without early stop).
        multi = self.restarts > 1
        best, fooled, best_loss = self.run_early_stop(model, x, y, state, gen, score=multi)
        for _ in range(self.restarts - 1):
            left = (~fooled).nonzero().flatten()
            if left.numel() == 0:
                break
            cand, hit, loss = self.run_early_stop(model, x[left], y[left], _take(state, left), gen)
            better = hit | (loss > best_loss[left])
            take = left[better]
            best[take] = cand[better]
            best_loss[take] = loss[better]
            fooled[left[hit]] = True
        return best

    def __repr__(self) -> str:
        return (f"PGD(eps={self.eps:g}, alpha={self.alpha:g}, steps={self.steps}, restarts={self.restarts}, "
                f"norm={self.norm}, loss={getattr(self.loss, 'name', self.loss)}"
                + (", early_stop=True" if self.early_stop else "") + ")")


def _take(state, idx):
    """The loss state of the examples ``idx``: tensors are indexed along the batch dimension,
    tuples and lists element-wise, anything else (``None``) is kept."""
    if isinstance(state, torch.Tensor):
        return state[idx]
    if isinstance(state, (tuple, list)):
        return type(state)(_take(s, idx) for s in state)
    return state
