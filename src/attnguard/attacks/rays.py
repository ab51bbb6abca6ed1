"""RayS (Chen & Gu, KDD 2020, "RayS: A Ray Searching Method for Hard-Label Adversarial Attack").

A hard-label L-inf attack: it sees only the predicted class ``argmax f(x)``. It searches over
sign directions ``d in {-1, +1}^D`` for the one whose decision boundary is nearest,

    r(d) = min { r >= 0 : argmax f(clip(x + r d)) != y },

with hierarchical block flipping: at stage ``s`` the flattened image (C*H*W order) is cut into
``2^s`` contiguous blocks; each block's signs are flipped in turn and the flip is kept when the
boundary radius shrinks. A flip is first checked with one query at the current best radius (the
paper's fast check: a direction that does not fool the model there is taken not to improve on the
best one), and only then binary-searched on [0, r_best]. After the last stage (blocks of one
coordinate) the search starts over at stage 0 from the current best direction (the authors' code
instead keeps cycling through one-coordinate blocks; the two differ only once every stage has
been tried).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..errors import ConfigError
from .base import Attack


class RayS(Attack):
    """RayS (Chen & Gu 2020), hard-label L-inf attack; ``uses_gradients = False`` and it never reads logit values.

    The initial direction is all +1 (as in the authors' code) and the block order is fixed, so the
    attack is deterministic; ``seed`` is accepted for a uniform interface. All examples of the batch
    step together; per-example radii, directions and query counts are kept with masks.

    Query accounting (per example, ``queries`` at most): one query to test a flipped block at the
    current best radius (at radius 1 while no boundary is known yet: after clipping to [0, 1],
    radii above 1 give the same image), then one per bisection step while the bracket is wider than
    ``tol = 1e-3 / sqrt(D)`` (the authors' tolerance of 1e-3 on the L2-normalized ray, expressed in
    L-inf units). A bisection cut short by the budget still keeps its upper end, which is a
    verified adversarial radius. Within a bisection the examples step together; a forward pass
    for an example whose bracket has already converged is computed but neither counted nor used.

    An example is successfully attacked when the L-inf distance of its best adversarial point
    ``clip(x + r d)`` is <= eps; ``early_stop`` stops its search then (which saves queries and
    leaves the success unchanged, but ``last_radius`` is then not the smallest radius). The
    returned point is ``clip(x + min(r, eps) d)``, inside the ball either way.

    Args:
        eps: L-inf radius ([0, 1] pixel units).
        queries: query budget per example (10000, the default of the authors' code; the AT+ALP
            paper does not state its budget).
        seed: unused (deterministic), kept for a uniform interface.
        skip_misclassified: leave already-misclassified examples unchanged.
        early_stop: stop an example's search once its distance is <= eps.

    After a call, ``last_queries`` ([B'] queries used) and ``last_radius`` ([B'] best L-inf
    distance, inf where no adversarial direction was found) describe the attacked examples.
    """

    name = "rays"
    uses_gradients = False
    # called (queries used so far by the most-queried example, budget) every few block flips, when set
    query_progress = None

    def __init__(self, eps: float, *, queries: int = 10000, seed: Optional[int] = 0,
                 skip_misclassified: bool = True, early_stop: bool = True):
        super().__init__(eps, norm="linf", skip_misclassified=skip_misclassified, seed=seed)
        if int(queries) < 1:
            raise ConfigError(f"queries must be >= 1, got {queries}")
        self.queries = int(queries)
        self.early_stop = early_stop
        self.last_queries: Optional[torch.Tensor] = None
        self.last_radius: Optional[torch.Tensor] = None

    def perturb(self, model, x, y):
        shape = x.shape
        b, dim = shape[0], x[0].numel()
        flat = x.reshape(b, dim)

        def fooled(rows, r, d):
            """The hard-label query for examples ``rows`` at radii ``r`` along directions ``d``."""
            with torch.no_grad():
                x_q = (flat[rows] + r[:, None] * d).clamp(0, 1).view(-1, *shape[1:])
                return model(x_q).argmax(1) != y[rows]

        tol = 1e-3 / math.sqrt(dim)
        sgn = torch.ones_like(flat)
        r_best = torch.full((b,), float("inf"), device=x.device, dtype=x.dtype)
        dist = r_best.clone()  # L-inf distance of clip(x + r_best * sgn), <= r_best
        used = torch.zeros(b, dtype=torch.long, device=x.device)
        level, block = 0, 0
        flips = 0
        while True:
            # a report reads used.max() (a host sync): every 16 block flips, against several per flip below
            if self.query_progress is not None and flips % 16 == 0:
                self.query_progress(min(int(used.max()), self.queries), self.queries)
            flips += 1
            active = used < self.queries
            if self.early_stop:
                active &= ~(dist <= self.eps)
            # A few host syncs per block flip: they shrink the batch to the examples still searching.
            rows = active.nonzero().flatten()
            if rows.numel() == 0:
                break
            size = math.ceil(dim / 2 ** level)
            start, end = block * size, min(dim, (block + 1) * size)
            attempt = sgn[rows].clone()
            attempt[:, start:end] *= -1

            # One query at the current best radius (at 1, the largest useful radius, while none is known).
            r_cur = r_best[rows]
            hi = torch.where(torch.isfinite(r_cur), r_cur, torch.ones_like(r_cur))
            ok = fooled(rows, hi, attempt)
            used[rows] += 1
            rows, attempt, hi, r_cur = rows[ok], attempt[ok], hi[ok], r_cur[ok]
            if rows.numel() > 0:
                lo = torch.zeros_like(hi)
                n_used = used[rows]
                for _ in range(max(0, math.ceil(math.log2(float(hi.max()) / tol)))):
                    step = (hi - lo > tol) & (n_used < self.queries)
                    mid = (lo + hi) / 2
                    ok = fooled(rows, mid, attempt)
                    n_used += step.long()
                    hi = torch.where(step & ok, mid, hi)
                    lo = torch.where(step & ~ok, mid, lo)
                used[rows] = n_used
                better = hi < r_cur  # hi is always a verified adversarial radius
                rows, hi, attempt = rows[better], hi[better], attempt[better]
                r_best[rows] = hi
                sgn[rows] = attempt
                dist[rows] = ((flat[rows] + hi[:, None] * attempt).clamp(0, 1) - flat[rows]).abs().amax(1)

            block += 1
            if block == 2 ** level or end == dim:
                level, block = level + 1, 0
                if 2 ** (level - 1) >= dim:  # the last stage had one-coordinate blocks: start over
                    level = 0
        self.last_queries, self.last_radius = used, dist
        if self.query_progress is not None:
            self.query_progress(min(int(used.max()), self.queries), self.queries)
        r = torch.where(torch.isfinite(r_best), r_best, torch.full_like(r_best, self.eps)).clamp(max=self.eps)
        return (flat + r[:, None] * sgn).clamp(0, 1).view(shape)

    def __repr__(self) -> str:
        return f"RayS(eps={self.eps:g}, queries={self.queries}, early_stop={self.early_stop})"
