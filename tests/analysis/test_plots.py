"""Robustness plots: accuracy vs PGD iterations / eps, loss landscape, t-SNE, training curves."""

import json

import pytest
import torch
import torch.nn.functional as F

import attnguard
from attnguard.analysis import (accuracy_vs_eps, accuracy_vs_iterations, loss_landscape, penultimate_features,
                                read_metrics, training_curves, tsne_features)
from attnguard.attacks import PGD
from attnguard.errors import DataError
from _support import is_png, load_mnist


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def data(request):
    return load_mnist(getattr(request.config, "cache", None))


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    x, y = data
    model = attnguard.create_model("lenet", width=0.25)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(2):
        for i in range(0, 1000, 50):
            loss = F.cross_entropy(model(x[i:i + 50]), y[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def test_accuracy_vs_iterations(trained, data, tmp_path):
    x, y = data[0][4000:4060], data[1][4000:4060]
    r = accuracy_vs_iterations(trained, x, y, eps=0.2, steps=(1, 3, 10), out=tmp_path / "it.png")
    assert is_png(tmp_path / "it.png") and r["steps"] == [1, 3, 10] and r["alpha"] == pytest.approx(0.05)
    assert r["clean"] > 0.7 and all(0 <= a <= r["clean"] for a in r["accuracy"])
    assert r["accuracy"][-1] <= r["accuracy"][0] + 0.02  # more iterations: a stronger attack
    both = accuracy_vs_iterations({"a": trained, "b": trained}, x[:20], y[:20], eps=0.2, steps=(1, 2),
                                  out=tmp_path / "it2.png")
    assert both["models"]["a"] == both["models"]["b"]  # same seed: same random start, same numbers


def test_accuracy_vs_eps_is_non_increasing(trained, data, tmp_path):
    x, y = data[0][4000:4060], data[1][4000:4060]
    eps = [0.0, 0.05, 0.1, 0.2, 0.3]
    r = accuracy_vs_eps(trained, x, y, eps, attack="pgd-5", out=tmp_path / "eps.png")
    assert is_png(tmp_path / "eps.png") and r["eps"] == eps
    with torch.no_grad():
        clean = (trained(x).argmax(1) == y).float().mean().item()
    assert r["accuracy"][0] == pytest.approx(clean)
    for a, b in zip(r["accuracy"], r["accuracy"][1:]):
        assert b <= a + 0.02
    assert r["accuracy"][-1] < r["accuracy"][0]


@pytest.mark.parametrize("kind", ["surface", "contour"])
def test_loss_landscape(trained, data, tmp_path, kind):
    x, y = data[0][4000], data[1][4000]
    r = loss_landscape(trained, x, y, span=0.2, steps=9, kind=kind, out=tmp_path / "l.png")
    assert is_png(tmp_path / "l.png")
    z = torch.tensor(r["loss"])
    assert z.shape == (9, 9) and len(r["a"]) == 9 and r["a"][4] == pytest.approx(0.0)
    with torch.no_grad():
        centre = F.cross_entropy(trained(x[None]), y[None]).item()
    assert z[4, 4].item() == pytest.approx(centre, rel=1e-4) == r["center_loss"]
    assert z[-1, 4] > z[4, 4]  # stepping along sign(grad) raises the loss
    with pytest.raises(ValueError, match="surface"):
        loss_landscape(trained, x, y, kind="wire", out=tmp_path / "x.png")


def test_tsne_of_penultimate_features(trained, data, tmp_path):
    x, y = data[0][4000:4040], data[1][4000:4040]
    feats, logits = penultimate_features(trained, x)
    assert feats.shape == (40, trained.net.fc2.in_features) and logits.shape == (40, 10)
    assert not trained.net.fc2._forward_pre_hooks  # the hook is removed again
    r = tsne_features(trained, x, y, PGD(0.2, steps=5, seed=0), out=tmp_path / "t.png", perplexity=10)
    assert is_png(tmp_path / "t.png")
    assert len(r["embedding"]) == 80 and all(len(p) == 2 for p in r["embedding"])
    assert r["adversarial"] == [False] * 40 + [True] * 40 and r["labels"][:40] == y.tolist()
    assert sum(r["correct"][40:]) < sum(r["correct"][:40])  # the attack fools the model on some


def test_training_curves_from_metrics_jsonl(tmp_path):
    rows = [{"epoch": 1, "step": 1, "split": "train", "loss": 2.0, "acc_clean": 0.2, "acc_adv": 0.1, "lr": 0.1},
            {"epoch": 1, "step": 2, "split": "train", "loss": 1.0, "acc_clean": 0.4, "acc_adv": 0.3, "lr": 0.1},
            {"epoch": 1, "split": "val", "loss": 1.2, "acc_clean": 0.5, "acc_adv": 0.25},
            {"epoch": 2, "step": 3, "split": "train", "loss": 0.5, "acc_clean": 0.8, "acc_adv": 0.5},
            {"epoch": 2, "split": "val", "loss": 0.9, "acc_clean": 0.7, "acc_adv": 0.4}]
    text = "\n".join(json.dumps(r) for r in rows) + '\n{"epoch": 3, "spl'  # a line cut short by a kill
    (tmp_path / "metrics.jsonl").write_text(text)
    r = training_curves(tmp_path, out=tmp_path / "c.png")
    assert is_png(tmp_path / "c.png") and r["skipped_lines"] == 1
    assert r["train"]["epoch"] == [1, 2] and r["train"]["loss"] == [1.5, 0.5]
    assert r["train"]["acc_clean"] == [pytest.approx(0.3), 0.8]
    assert r["val"] == {"epoch": [1, 2], "loss": [1.2, 0.9], "acc_clean": [0.5, 0.7], "acc_adv": [0.25, 0.4]}
    with pytest.raises(DataError, match="no metrics file"):
        read_metrics(tmp_path / "nope")
