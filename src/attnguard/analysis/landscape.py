"""Loss landscape around a test point (AFM Fig. 3; AT+ALP Fig. 6).

``z(a, b) = CE(f(clip(x + a * r1 + b * r2)), y)`` with ``r1 = sign(grad_x CE(f(x), y))`` (the
adversarial direction) and ``r2`` a Rademacher vector (entries +-1 with probability 1/2).
Points are clipped to the [0, 1] image domain, so the surface shows losses of valid images.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ._figures import new_figure, save_png, styled
from ._run import batched
from ..utils.modes import eval_mode


def _landscape(model, x: torch.Tensor, y: torch.Tensor, span: float, steps: int, seed: int, batch_size: int):
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x).float(), y)
        (grad,) = torch.autograd.grad(loss, x)
    r1 = grad.sign()
    gen = torch.Generator().manual_seed(int(seed))
    r2 = (torch.randint(0, 2, x.shape[1:], generator=gen) * 2 - 1).to(x.device, x.dtype)
    coords = torch.linspace(-span, span, steps, device=x.device, dtype=x.dtype)
    aa, bb = torch.meshgrid(coords, coords, indexing="ij")
    a, b = aa.flatten(), bb.flatten()
    losses = []
    with torch.no_grad():
        for s in batched(len(a), batch_size):
            pts = (x.detach() + a[s, None, None, None] * r1 + b[s, None, None, None] * r2).clamp(0, 1)
            logits = model(pts).float()
            losses.append(F.cross_entropy(logits, y.expand(len(pts)), reduction="none"))
    z = torch.cat(losses).view(steps, steps)
    return coords.cpu().numpy(), z.cpu().numpy(), float(loss.detach())


loss_grid = _landscape  # the grid without a figure, for figures of several models (studies/loss_surface.py)


@styled
def loss_landscape(model, x: torch.Tensor, y, span: float = 0.1, steps: int = 21, *, seed: int = 0,
                   kind: str = "surface", out="loss_landscape.png", title: Optional[str] = None,
                   batch_size: int = 256) -> dict:
    """Loss on a ``steps x steps`` grid of ``a, b in [-span, span]`` around one image ``x``.

    Args:
        x: one image ``[C, H, W]`` or ``[1, C, H, W]`` in [0, 1]; ``y`` its class.
        span: half-width of the grid (e.g. 2 * eps).
        kind: ``"surface"`` (3D, as in the papers) or ``"contour"``.

    Returns ``{"a": [...], "b": [...], "loss": [[z(a_i, b_j)]], "center_loss": ..., "path": ...}``.
    """
    if kind not in ("surface", "contour"):
        raise ValueError(f"kind must be 'surface' or 'contour', got {kind!r}")
    if int(steps) < 2 or not span > 0:
        raise ValueError(f"need steps >= 2 and span > 0, got steps={steps}, span={span}")
    x = x if x.dim() == 4 else x[None]
    if x.shape[0] != 1:
        raise ValueError(f"loss_landscape takes one image, got a batch of {x.shape[0]}")
    device = next(model.parameters()).device
    x = x.to(device).float()
    y = torch.as_tensor(y, device=device).long().view(1)
    with eval_mode(model):
        coords, z, center = _landscape(model, x, y, float(span), int(steps), seed, batch_size)
    A, B = np.meshgrid(coords, coords, indexing="ij")
    if kind == "surface":
        fig = new_figure(5.6, 4.6)
        ax = fig.add_subplot(projection="3d")
        ax.plot_surface(A, B, z, cmap="viridis", linewidth=0, antialiased=True, rcount=steps, ccount=steps)
        ax.set_zlabel("loss")
        ax.view_init(elev=28, azim=-128)
    else:
        fig = new_figure(5.0, 4.2)
        ax = fig.add_subplot()
        cs = ax.contourf(A, B, z, levels=20, cmap="viridis")
        fig.colorbar(cs, ax=ax, label="loss")
        ax.plot([0], [0], marker="+", color="white", ms=10)
        ax.grid(False)
    ax.set_xlabel("a: along sign(∇ₓ loss)")
    ax.set_ylabel("b: Rademacher direction")
    ax.set_title(title or "Loss landscape")
    path = save_png(fig, out)
    return {"a": coords.tolist(), "b": coords.tolist(), "loss": z.tolist(), "center_loss": center,
            "span": float(span), "path": str(path)}
