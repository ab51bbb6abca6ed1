"""``synthetic-boxes``: generated shapes with known boxes and masks on cluttered backgrounds.

Built for the attention-vs-box analyses (AAD Tables 1-2 measure how much Grad-CAM attention
falls inside the object's box; AT+ALP Table 3 compares attention maps): the true object
region is known exactly for every image, which real classification datasets do not give.

Each RGB image holds one object of one of six shape classes (square, disk, triangle, cross,
ring, bar) of random colour, size (30-60 % of the side) and position, drawn over clutter:
a random background colour, random line segments, small distractor blobs (ellipses much
smaller than any object, so they are not class shapes) and pixel noise. The object colour
differs from the background colour by at least 0.35 in every channel, so the object is always
visible; distractors and lines use unrelated random colours.

Everything is generated at once with tensor ops from one CPU ``torch.Generator``, so the
dataset is bitwise deterministic from ``seed`` (about 0.5 s for 5,000 images at 32x32).
"""

from __future__ import annotations

from typing import Tuple

import torch

from ..errors import DataError
from .base import Split

SHAPES = ("square", "disk", "triangle", "cross", "ring", "bar")


def _shape_masks(dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor, vertical: torch.Tensor) -> torch.Tensor:
    """Boolean masks ``[S, N, H, W]`` of every shape class centred at the origin of ``dx, dy``.

    ``r`` is the half-size ``[N, 1, 1]``; ``vertical`` flips the bar's orientation.
    """
    ax, ay = dx.abs(), dy.abs()
    d2 = dx * dx + dy * dy
    arm = 0.3 * r
    square = (ax <= r * 0.9) & (ay <= r * 0.9)  # a bit smaller so its area matches the disk's
    disk = d2 <= r * r
    # Upright isosceles triangle: apex at the top (dy = -r), base of width 2r at dy = r.
    triangle = (dy >= -r) & (dy <= r) & (ax <= (dy + r) * 0.5)
    cross = ((ax <= r) & (ay <= arm)) | ((ax <= arm) & (ay <= r))
    ring = disk & (d2 >= (0.55 * r) ** 2)
    long_, short = torch.where(vertical, ay, ax), torch.where(vertical, ax, ay)
    bar = (long_ <= r) & (short <= 0.35 * r)
    return torch.stack([square, disk, triangle, cross, ring, bar])


def _boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight pixel-edge boxes ``(x0, y0, x1, y1)`` of boolean masks ``[N, H, W]`` (non-empty)."""
    n, h, w = masks.shape
    cols, rows = masks.any(1), masks.any(2)  # [N, W], [N, H]
    ar_w = torch.arange(w).expand(n, w)
    ar_h = torch.arange(h).expand(n, h)
    x0 = torch.where(cols, ar_w, w).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1) + 1
    y0 = torch.where(rows, ar_h, h).amin(1)
    y1 = torch.where(rows, ar_h, -1).amax(1) + 1
    return torch.stack([x0, y0, x1, y1], 1).to(torch.float32)


def _uniform(g, *shape, low=0.0, high=1.0):
    return torch.rand(*shape, generator=g) * (high - low) + low


def generate_boxes(n: int, size: int = 32, seed: int = 0, *, num_lines: int = 3, num_blobs: int = 4,
                   noise: float = 0.06, min_frac: float = 0.3, max_frac: float = 0.6) -> Split:
    """Generate ``n`` images ``[n, 3, size, size]`` with labels, boxes and masks.

    Labels are exactly balanced (``i % 6`` shuffled). Object side = ``min_frac..max_frac``
    of ``size``; the object lies entirely inside the image.
    """
    if n < 1 or size < 16:
        raise DataError(f"synthetic-boxes needs n >= 1 and size >= 16, got n={n}, size={size}")
    g = torch.Generator().manual_seed(int(seed))
    k = len(SHAPES)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=g)]

    coords = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    yy, xx = coords.view(1, size, 1), coords.view(1, 1, size)

    # Object geometry: half-size r, centre so that the whole shape stays in the image.
    r = _uniform(g, n, 1, 1, low=min_frac * size / 2, high=max_frac * size / 2)
    cx = r + _uniform(g, n, 1, 1) * (size - 2 * r)
    cy = r + _uniform(g, n, 1, 1) * (size - 2 * r)
    vertical = torch.rand(n, 1, 1, generator=g) < 0.5
    all_masks = _shape_masks(xx - cx, yy - cy, r, vertical)  # [K, N, H, W]
    obj = all_masks[labels, torch.arange(n)]  # [N, H, W]

    # Clutter and object are painted as layer ids into one int map, then coloured with a
    # single gather: layer 0 = background, then lines, blobs, and the object on top.
    # Painted by scattering into a flat map with one spare slot (index H*W) that swallows
    # pixels falling outside the image; one scatter per layer so later layers win.
    hw = size * size
    layer = torch.zeros(n, hw + 1, dtype=torch.long)

    def paint(px, py, keep, value):  # px, py: integer pixel coordinates [N, P]
        keep = keep & (px >= 0) & (px < size) & (py >= 0) & (py < size)
        layer.scatter_(1, torch.where(keep, py * size + px, hw), value)

    # Line segments (~1 px thick): 2*size samples along each segment, rounded to pixels.
    p = _uniform(g, n, num_lines, 4, high=float(size))
    s = torch.linspace(0, 1, 2 * size)
    for j in range(num_lines):
        ax_, ay_, bx, by = (p[:, j, i:i + 1] for i in range(4))
        px = (ax_ + s * (bx - ax_)).floor().long()
        py = (ay_ + s * (by - ay_)).floor().long()
        paint(px, py, torch.ones_like(px, dtype=torch.bool), 1 + j)

    # Distractor blobs: small ellipses (semi-axes 0.8-2.2 px), far smaller than any object,
    # rasterized in a 7x7 window around each centre.
    bc = _uniform(g, n, num_blobs, 2, high=float(size))
    bax = _uniform(g, n, num_blobs, 2, low=0.8, high=2.2)
    off = torch.arange(-3, 4)
    wy, wx = off.repeat_interleave(7), off.repeat(7)  # [49]
    for j in range(num_blobs):
        px = bc[:, j, 0:1].floor().long() + wx
        py = bc[:, j, 1:2].floor().long() + wy
        ex = (px + 0.5 - bc[:, j, 0:1]) / bax[:, j, 0:1]
        ey = (py + 0.5 - bc[:, j, 1:2]) / bax[:, j, 1:2]
        paint(px, py, ex * ex + ey * ey <= 1.0, 1 + num_lines + j)
    layer = layer[:, :hw].view(n, size, size)
    n_layers = 2 + num_lines + num_blobs
    layer.masked_fill_(obj, n_layers - 1)

    # Colours: the background is the object colour shifted by 0.35-0.65 per channel (mod 1),
    # so the two always differ by at least 0.35 in every channel; clutter colours are random.
    obj_col = _uniform(g, n, 1, 3)
    bg_col = (obj_col + _uniform(g, n, 1, 3, low=0.35, high=0.65)) % 1.0
    palette = torch.cat([bg_col, _uniform(g, n, num_lines + num_blobs, 3), obj_col], 1)  # [N, L, 3]
    img = torch.gather(palette, 1, layer.view(n, -1, 1).expand(-1, -1, 3))  # [N, H*W, 3]
    img = img.transpose(1, 2).reshape(n, 3, size, size)
    img = img + noise * torch.randn(n, 3, size, size, generator=g)
    images = img.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return Split(images, labels, _boxes_from_masks(obj), obj.to(torch.uint8))


def load_synthetic_boxes(n_train: int = 4000, n_test: int = 1000, size: int = 32,
                         seed: int = 0) -> Tuple[Split, Split, Tuple[str, ...]]:
    """Train and test splits from independent generator streams of the same seed."""
    train = generate_boxes(n_train, size, seed=2 * int(seed))
    test = generate_boxes(n_test, size, seed=2 * int(seed) + 1)
    return train, test, SHAPES

