"""``BatchLoader``: batches from a split held on the device, augmented on the device.

No DataLoader and no per-example Python: the split's uint8 tensor is moved to the device once,
each batch is a gather, and augmentation (random crop with 4-pixel zero padding, horizontal
flip) is done for the whole batch with tensor indexing.

Determinism: the order of an epoch comes from a generator seeded with ``(seed, epoch)``, and
each example's augmentation from draws made for the whole split at the start of the epoch and
indexed by the example's position in the split. So a batch depends only on
``(seed, epoch, batch index)``: a run resumed in the middle of an epoch sees exactly the
batches an uninterrupted run sees, and with ``world_size`` ranks (torchrun) the union of the
ranks' batches ``i`` is the single-process batch ``i``, augmentation included.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from ..errors import DataError
from .base import AUGMENTS, Split

PAD = 4


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (SplitMix64-style), so nearby epochs get unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def augment_batch(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: Optional[torch.Tensor], crop: bool,
                  pad: int = PAD) -> torch.Tensor:
    """Random crop (zero padding ``pad``, offsets ``dx, dy`` in [0, 2*pad]) and horizontal flip.

    Output pixel ``(i, j)`` of example ``b`` is padded pixel ``(dy + i, dx + j)``, or
    ``(dy + i, dx + w - 1 - j)`` when ``flip[b]`` (crop, then mirror). Both are folded into one
    flat index per example and done with a single ``gather``, for any dtype.
    """
    b, c, h, w = x.shape
    p = pad if crop else 0
    src = F.pad(x, (p, p, p, p)) if p else x
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    cols = ar_w.expand(b, w)
    if flip is not None:
        cols = torch.where(flip.view(b, 1), w - 1 - ar_w, ar_w)
    rows = ar_h.expand(b, h)
    if p:
        rows, cols = rows + dy.view(b, 1), cols + dx.view(b, 1)
    index = (rows.unsqueeze(2) * (w + 2 * p) + cols.unsqueeze(1)).view(b, 1, h * w)
    return src.reshape(b, c, -1).gather(2, index.expand(b, c, h * w)).view(b, c, h, w)


class BatchLoader:
    """Batches ``(x float32 in [0, 1], y int64)`` on ``device`` from an in-memory :class:`Split`.

    Args:
        split: the examples.
        batch_size: examples per batch (per rank).
        shuffle: a new order every epoch (``set_epoch``).
        augment: ``"none"``, ``"crop-flip"`` (CIFAR) or ``"crop"`` (SVHN).
        device: where the split lives and batches are made (and augmented).
        target: where batches go (default ``device``). A split kept in host memory for a GPU run
            (``train.gpu_resident=off``) has ``device="cpu"``, ``target="cuda"``: each batch is made on
            the host and sent as uint8 (a quarter of float32's bytes) from pinned memory without
            blocking, then converted to [0, 1] floats on the target.
        seed: seeds order and augmentation together with the epoch.
        drop_last: drop the last, smaller batch.
        rank, world_size: torchrun shard (strided slices of one shared permutation, cut to equal
            length so every rank runs the same number of steps).
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool = False, augment: str = "none",
                 device="cpu", seed: int = 0, drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 target=None):
        if augment not in AUGMENTS:
            raise DataError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} outside world_size {world_size}")
        self.device = torch.device(device)
        self.target = torch.device(target) if target is not None else self.device
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.n = len(split)
        self.batch_size = int(batch_size)
        self.shuffle, self.augment, self.seed = shuffle, augment, int(seed)
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.per_rank = self.n // world_size if world_size > 1 else self.n
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out
        self._pinned = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (its order and augmentation) and the batch the next ``iter`` starts at."""
        if not 0 <= int(start_batch) <= len(self):
            raise DataError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self.epoch, self.position = int(epoch), int(start_batch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's example indices for ``epoch`` (CPU)."""
        if self.shuffle:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(_mix(self.seed, epoch)))
        else:
            perm = torch.arange(self.n)
        if self.world_size > 1:
            perm = perm[: self.per_rank * self.world_size][self.rank::self.world_size]
        return perm

    def _draws(self, epoch: int):
        if self.augment == "none":
            return None
        g = torch.Generator().manual_seed(_mix(self.seed, epoch, 0xA06))
        off = torch.randint(0, 2 * PAD + 1, (2, self.n), generator=g)
        flip = torch.rand(self.n, generator=g) < 0.5
        return off[0], off[1], flip

    def _to_device(self, *tensors):
        """CPU -> device once per epoch; on CUDA from pinned memory without blocking the host."""
        if self.device.type != "cuda":
            return tuple(t.to(self.device) for t in tensors)
        pinned = tuple(t.pin_memory() for t in tensors)
        self._pinned = pinned  # keep the sources alive while the asynchronous copies run
        return tuple(t.to(self.device, non_blocking=True) for t in pinned)

    def iter_from(self, start_batch: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start_batch, start_batch + 1, ...`` of the current epoch."""
        draws = self._draws(self.epoch)
        perm, *draws = self._to_device(self.order(self.epoch), *(draws or ()))
        crop = self.augment in ("crop-flip", "crop")
        for b in range(int(start_batch), len(self)):
            idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[idx]
            if draws:  # crop/flip move uint8 pixels (a quarter of the bytes of float32)
                dx, dy, flip = (t[idx] for t in draws)
                x = augment_batch(x, dx, dy, flip if self.augment == "crop-flip" else None, crop)
            y = self.labels[idx]
            if self.target != self.device:
                x, y = self._send(x), self._send(y)
            self.position = b + 1
            yield x.float().div_(255.0), y

    def _send(self, t: torch.Tensor) -> torch.Tensor:
        """A host batch to ``target``: pinned and asynchronous for CUDA (the caching host allocator
        keeps the pinned block until the copy has finished, so nothing here must hold on to it)."""
        if self.target.type == "cuda" and t.device.type == "cpu":
            return t.pin_memory().to(self.target, non_blocking=True)
        return t.to(self.target)

    def __iter__(self):
        """The current epoch from ``position`` (set by ``set_epoch`` / ``load_state_dict``); an
        epoch that was run to the end is run again from its start, as ``DistributedSampler`` does
        until ``set_epoch`` moves on."""
        return self.iter_from(self.position if self.position < len(self) else 0)

    def state_dict(self) -> dict:
        """``epoch`` and ``position`` (batches of it already handed out): resuming from this state
        yields exactly the batches an uninterrupted run would see next."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "batch_size": self.batch_size, "n": self.n, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "batch_size", "n", "world_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise DataError(f"loader state was saved with {key}={state[key]} but this loader has "
                                f"{key}={getattr(self, key)}: its batches would differ")
        self.set_epoch(int(state["epoch"]), int(state.get("position", 0)))
