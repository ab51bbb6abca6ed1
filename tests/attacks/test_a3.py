"""A3 (AAD sec. 4.3, eq. 11-13) in its two readings: ``a3-<attack>`` as the paper writes it (L1 summed
over the cells, unnormalized Grad-CAM) and ``a3n-<attack>`` (mean over the cells, min-max normalized
Grad-CAM). The shared checks (eq. 12-13 on StepLL, sigma 0, refusals) are in test_attacks.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnguard
from attnguard.attacks.a3 import A3, AttentionDeviationLoss
from attnguard.attacks.losses import CrossEntropyLoss, LogitLoss
from attnguard.attacks.pgd import PGD
from attnguard.attacks.registry import build_attack, parse_attack
from attnguard.attacks.stepll import StepLL
from attnguard.attention import attention_area, grad_cam, normalize_cam
from attnguard.errors import ConfigError, UnknownNameError
from attnguard.models import create_model

PAPER = AttentionDeviationLoss(CrossEntropyLoss(), sigma=10.0)
NORMALIZED = AttentionDeviationLoss(CrossEntropyLoss(), sigma=10.0, normalized=True)


def lenet(seed=0):
    torch.manual_seed(seed)
    return create_model("lenet", width=0.25, input_size=(1, 12, 12)).eval()


def batch(model, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 12, 12, generator=g)
    with torch.no_grad():
        return x, model(x).argmax(1)


class Zero(LogitLoss):
    name = "zero"

    def from_logits(self, logits, y):
        return logits.sum(1) * 0


def test_both_deviations_by_hand_per_example():
    # Two maps in one batch: each example keeps its own value (no sum or mean over the batch).
    att = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    cam = torch.tensor([[[0.5, 3.0], [1.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]]])
    # paper: |1-.5| + |1-3| + |0-1| + |0-0| = 3.5;  |0-2| + 0 + 0 + |1-0| = 3
    assert PAPER.deviation(cam, att).tolist() == pytest.approx([3.5, 3.0])
    # normalized: [[1/6, 1], [1/3, 0]] -> (5/6 + 0 + 1/3 + 0) / 4 = 7/24;  [[1, 0], [0, 0]] -> (1 + 1) / 4 = 0.5
    assert NORMALIZED.deviation(cam, att).tolist() == pytest.approx([7 / 24, 0.5])


@pytest.mark.parametrize("hw", [(1, 2), (2, 3), (4, 4), (7, 7), (8, 5)])
def test_the_sum_is_h_w_times_the_mean_when_g_is_already_normalized(hw):
    h, w = hw
    g = torch.Generator().manual_seed(h * 10 + w)
    att = (torch.rand(5, h, w, generator=g) > 0.5).float()
    cam = normalize_cam(torch.rand(5, h, w, generator=g) * 4)  # min 0, max 1 per map
    assert torch.allclose(PAPER.deviation(cam, att), h * w * NORMALIZED.deviation(cam, att), rtol=1e-5, atol=1e-6)
    # ...and only then: the paper's term sees the map's scale, the normalized one does not.
    assert torch.allclose(NORMALIZED.deviation(3 * cam, att), NORMALIZED.deviation(cam, att), atol=1e-6)
    assert not torch.allclose(PAPER.deviation(3 * cam, att), PAPER.deviation(cam, att))


@pytest.mark.parametrize("normalized", [False, True])
def test_the_attention_term_reaches_the_input(normalized):
    model = lenet()
    x, y = batch(model, n=4)
    loss = AttentionDeviationLoss(Zero(), sigma=1.0, normalized=normalized)
    state = loss.setup(model, x, y)
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    x_adv.requires_grad_(True)
    value, _ = loss(model, x_adv, y, state)
    (grad,) = torch.autograd.grad(value.sum(), x_adv)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert (grad.flatten(1).abs().sum(1) > 0).all()  # every example, not just one
    cam = grad_cam(model, None, x_adv.detach(), target=y)
    att = attention_area(grad_cam(model, None, x, target=y), "mean").float()
    expected = ((att - normalize_cam(cam)).abs().flatten(1).mean(1) if normalized
                else (att - cam).abs().flatten(1).sum(1))
    assert torch.allclose(value.detach(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalized", [False, True], ids=["a3-sum", "a3n-mean"])
def test_on_stepll_each_variant_is_eq_12_13(normalized):
    # eq. 12: T = CE(f(x), y_LL) - sigma * D; eq. 13: x_adv = x - eps * sign(grad_x T). D is ||Att(x) - g(x)||_1
    # over the cells with g unnormalized (a3), or the mean of |Att(x) - minmax(g)| (a3n).
    model = lenet()
    x, y = batch(model)
    sigma, eps = 10.0, 0.05
    with torch.no_grad():
        y_ll = model(x).argmin(1)
    att = attention_area(grad_cam(model, None, x, target=y)).float()
    xr = x.clone().requires_grad_(True)
    cam, logits = grad_cam(model, None, xr, target=y, create_graph=True, return_logits=True)
    d = ((att - normalize_cam(cam)).abs().flatten(1).mean(1) if normalized
         else (att - cam).abs().flatten(1).sum(1))
    total = nn.functional.cross_entropy(logits, y_ll, reduction="none") - sigma * d
    (g,) = torch.autograd.grad(total.sum(), xr)
    expected = (x - eps * g.sign()).clamp(0, 1)
    assert torch.allclose(A3(StepLL(eps), sigma=sigma, normalized=normalized)(model, x, y), expected, atol=1e-6)


def test_the_two_variants_craft_different_examples():
    model = lenet()
    x, y = batch(model)
    paper = A3(PGD(0.1, steps=3, seed=0))(model, x, y)
    normalized = A3(PGD(0.1, steps=3, seed=0), normalized=True)(model, x, y)
    assert not torch.equal(paper, normalized)


def test_names_select_the_variant_and_sigma():
    for name, normalized, sigma in [("a3-pgd-20", False, 10.0), ("a3s1-pgd-20", False, 1.0),
                                    ("a3n-pgd-20", True, 10.0), ("a3ns0.5-cw-10", True, 0.5),
                                    ("a3n-iter-stepll-3", True, 10.0)]:
        spec = parse_attack(name)
        assert spec.family == ("a3n-ATTACK" if normalized else "a3-ATTACK"), name
        a = build_attack(name, 0.1)
        assert type(a) is A3 and a.normalized is normalized and a.sigma == sigma and a.registry_name == name
        assert a.inner.loss.normalized is normalized
    with pytest.raises(ConfigError, match="a3ns1-pgd-20"):
        parse_attack("a3nsx-pgd-20")
    for nested in ("a3-a3n-pgd-10", "a3n-a3-pgd-10", "a3n-square"):
        with pytest.raises(ConfigError, match="A3 wraps a gradient attack"):
            parse_attack(nested)
    with pytest.raises(UnknownNameError):
        parse_attack("a3n")


def test_a3_and_a3n_run_through_evaluate():
    model = lenet()
    x, y = batch(model, n=8)
    names = ["pgd-3", "a3-pgd-3", "a3n-pgd-3", "a3s0-pgd-3", "a3ns0-pgd-3"]
    r = attnguard.evaluate(model, x, y, names, 0.1, progress=False)
    assert list(r["attacks"]) == names and r["clean"] == 1.0
    assert all(0 <= v <= r["clean"] for v in r["attacks"].values())
    # sigma 0 leaves the base attack (same seed, same random start): both variants reduce to PGD-3
    assert r["attacks"]["a3s0-pgd-3"] == r["attacks"]["pgd-3"] == r["attacks"]["a3ns0-pgd-3"]
