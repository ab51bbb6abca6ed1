"""In-memory dataset containers: ``DatasetInfo``, ``Split``, ``Dataset`` and split helpers.

Every built-in dataset is small enough to hold as one uint8 tensor ``[N, C, H, W]`` (CIFAR-10's
train split is 150 MB), so a whole split can be moved to the GPU once and batched there by
:class:`attnguard.data.loader.BatchLoader` without a DataLoader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from ..errors import DataError

AUGMENTS = ("none", "crop-flip", "crop")


@dataclass
class Split:
    """One split held in memory.

    Attributes:
        images: uint8 ``[N, C, H, W]``.
        labels: int64 ``[N]``.
        boxes: optional float32 ``[N, 4]`` object boxes ``(x0, y0, x1, y1)`` in pixel-edge
            coordinates: the object covers columns ``x0 .. x1-1`` and rows ``y0 .. y1-1``.
        masks: optional uint8 ``[N, H, W]`` (1 on the object's pixels).
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: Optional[torch.Tensor] = None
    masks: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"split images must be uint8 [N, C, H, W], got {self.images.dtype} "
                            f"{list(self.images.shape)}")
        self.labels = self.labels.to(torch.int64)
        n = self.images.shape[0]
        for name in ("labels", "boxes", "masks"):
            t = getattr(self, name)
            if t is not None and t.shape[0] != n:
                raise DataError(f"split {name} has {t.shape[0]} rows for {n} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor) -> "Split":
        """The examples at ``index`` (a 1-D long tensor), boxes and masks included."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Split(self.images[index], self.labels[index], pick(self.boxes), pick(self.masks))

    def to(self, device) -> "Split":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Split(mv(self.images), mv(self.labels), mv(self.boxes), mv(self.masks))


@dataclass
class DatasetInfo:
    """What a model and a training run need to know about a dataset.

    ``mean`` / ``std`` are per-channel statistics of the train split on the [0, 1] scale;
    they become the normalization inside the model (:class:`attnguard.models.NormalizedModel`).
    ``augment`` is the training augmentation the papers use for this kind of data.
    """

    name: str
    num_classes: int
    input_size: Tuple[int, int, int]
    class_names: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    augment: str = "none"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.augment not in AUGMENTS:
            raise DataError(f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")


@dataclass
class Dataset:
    info: DatasetInfo
    train: Split
    test: Split

    def __repr__(self) -> str:
        i = self.info
        return (f"Dataset({i.name!r}, classes={i.num_classes}, input_size={i.input_size}, "
                f"train={len(self.train)}, test={len(self.test)}, augment={i.augment!r})")


def channel_stats(images: torch.Tensor) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std (population) of uint8 ``[N, C, H, W]`` images on the [0, 1] scale.

    Computed from each channel's 256-bin histogram, so it is exact (no float accumulation
    over millions of pixels, the same on every machine) and needs no float copy of the split
    (50k CIFAR images: ~0.5 s).
    """
    values = torch.arange(256, dtype=torch.float64)
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        m = (counts * values).sum() / counts.sum()
        s = ((counts * (values - m) ** 2).sum() / counts.sum()).sqrt() / 255.0
        mean.append(float(m / 255.0))
        std.append(float(s) if s > 1e-6 else 1.0)  # constant channel: do not divide by 0
    return tuple(mean), tuple(std)


def make_info(name: str, train: Split, class_names, augment: str, **extra) -> DatasetInfo:
    """Build a :class:`DatasetInfo` whose statistics come from ``train``."""
    mean, std = channel_stats(train.images)
    return DatasetInfo(name=name, num_classes=len(class_names), input_size=tuple(train.images.shape[1:]),
                       class_names=[str(c) for c in class_names], mean=mean, std=std, augment=augment,
                       extra=dict(extra))


def stratified_indices(labels: torch.Tensor, per_class: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pick ``per_class`` examples of every class (``(picked, rest)`` index tensors, sorted).

    Deterministic from ``seed``; each class is shuffled by its own generator draw so the
    choice does not depend on the order of the other classes.
    """
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        if idx.numel() < per_class:
            raise DataError(f"class {c} has {idx.numel()} examples, fewer than the {per_class} requested")
        picked.append(idx[torch.randperm(idx.numel(), generator=g)[:per_class]])
    picked = torch.cat(picked).sort().values
    keep = torch.ones(labels.numel(), dtype=torch.bool)
    keep[picked] = False
    return picked, torch.nonzero(keep).flatten()


def first_n(split: Split, n: Optional[int]) -> Split:
    """The first ``n`` examples of ``split`` (all of them when ``n`` is None or not smaller)."""
    if n is None or n >= len(split):
        return split
    return split.subset(torch.arange(n))


def split_holdout(split: Split, n_val: int, seed: int = 0) -> Tuple[Split, Split]:
    """Hold out ``n_val`` examples of ``split`` (a fixed random slice) for validation.

    Returns ``(train_split, val_split)``; both keep the original order of their examples,
    so the same ``(n_val, seed)`` always gives the same two splits.
    """
    n = len(split)
    if not 0 < n_val < n:
        raise DataError(f"n_val must be in [1, {n - 1}] for a split of {n} examples, got {n_val}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val = perm[:n_val].sort().values
    train = perm[n_val:].sort().values
    return split.subset(train), split.subset(val)
