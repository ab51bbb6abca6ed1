"""Unit tests of StepLL, Iter-StepLL, A3, AutoAttack, Square, RayS and Transfer: values on cases small
enough to compute by hand, the settings each attack claims, and its error messages."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnguard.attacks.a3 import A3, AttentionDeviationLoss
from attnguard.attacks.autoattack import AutoAttack
from attnguard.attacks.fgsm import FGSM
from attnguard.attacks.losses import CrossEntropyLoss, LogitLoss
from attnguard.attacks.pgd import PGD
from attnguard.attacks.rays import RayS
from attnguard.attacks.square import Square
from attnguard.attacks.stepll import IterStepLL, LeastLikelyLoss, StepLL, kurakin_alpha
from attnguard.attacks.transfer import Transfer
from attnguard.attention import attention_area, grad_cam
from attnguard.errors import ConfigError
from attnguard.models import create_model


class Linear(nn.Module):
    """``f(x) = W flatten(x) + b`` on 1x2x2 inputs."""

    def __init__(self, w, b=None):
        super().__init__()
        self.fc = nn.Linear(4, len(w))
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(w, dtype=torch.float32))
            self.fc.bias.copy_(torch.tensor(b if b is not None else [0.0] * len(w)))

    def forward(self, x):
        return self.fc(x.flatten(1))


def lenet(seed=0, **kw):
    torch.manual_seed(seed)
    return create_model("lenet", width=0.25, input_size=(1, 12, 12), **kw).eval()


def batch(model, n=6, seed=1, shape=(1, 12, 12)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    with torch.no_grad():
        return x, model(x).argmax(1)


# ---------------------------------------------------------------- StepLL / Iter-StepLL (AAD eq. 4)

def test_stepll_by_hand_on_a_linear_model():
    # logits (0.5, 0.2, -0.3): class 0 predicted, class 2 least likely. With p = softmax(logits),
    # grad_x CE(., 2) = W^T (p - e_2) = (p0, p1, 1 - p2, p2 - 1), whose sign is (+, +, +, -), so
    # AAD eq. 4 gives x - 0.1 * (1, 1, 1, -1).
    model = Linear([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 1]])
    x = torch.tensor([0.5, 0.2, 0.6, 0.3]).view(1, 1, 2, 2)
    x_adv = StepLL(0.1)(model, x, torch.tensor([0]))
    assert torch.allclose(x_adv.flatten(), torch.tensor([0.4, 0.1, 0.5, 0.4]), atol=1e-6)
    # the least-likely class comes from the clean prediction
    assert LeastLikelyLoss().setup(model, x, torch.tensor([0])).tolist() == [2]


def test_stepll_loss_is_minus_ce_towards_the_least_likely_class():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    expected = -(-1.0 - math.log(math.exp(2) + 1 + math.exp(-1)))
    assert LeastLikelyLoss().from_logits(logits, torch.tensor([2])).item() == pytest.approx(-expected, abs=1e-6)


def test_iter_stepll_one_full_step_is_stepll_and_y_ll_stays_fixed():
    model = lenet()
    x, y = batch(model)
    one = IterStepLL(0.1, alpha=0.1, steps=1)(model, x, y)
    assert torch.allclose(one, StepLL(0.1)(model, x, y))
    # y_LL is computed once, on the clean input: the loss's setup sees the clean batch only
    seen = []

    class Spy(LeastLikelyLoss):
        def setup(self, model, x, y):
            seen.append(x.clone())
            return super().setup(model, x, y)

    atk = IterStepLL(0.1, steps=3)
    atk.loss = Spy()
    atk(model, x, y)
    assert len(seen) == 1 and torch.equal(seen[0], x)


def test_iter_stepll_defaults_follow_kurakin():
    # Kurakin et al.: min(eps*255 + 4, 1.25 eps*255) steps of 1/255, i.e. total length min(eps + 4/255, 1.25 eps)
    assert kurakin_alpha(0.3, 10) == pytest.approx(min(0.3 + 4 / 255, 0.375) / 10)
    assert kurakin_alpha(4 / 255, 3) == pytest.approx(5 / 255 / 3)
    atk = IterStepLL(0.3)
    assert atk.steps == 10 and not atk.random_start and atk.norm == "linf"
    assert atk.alpha == pytest.approx(kurakin_alpha(0.3, 10))
    with pytest.raises(ConfigError, match="steps"):
        IterStepLL(0.3, steps=0)


# ---------------------------------------------------------------- A3 (AAD eq. 11-13)

def test_a3_deviation_by_hand():
    att = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    cam = torch.tensor([[[4.0, 2.0], [0.0, 2.0]]])
    # AAD eq. 11-12 (the default): |1-4| + |0-2| + |0-0| + |0-2| = 7, summed over the 4 cells
    assert AttentionDeviationLoss(CrossEntropyLoss(), sigma=10.0).deviation(cam, att).item() == pytest.approx(7.0)
    # normalized variant: g -> [[1, .5], [0, .5]]; |1-1| + |0-.5| + |0-0| + |0-.5| = 1, mean over 4 cells = 0.25
    loss = AttentionDeviationLoss(CrossEntropyLoss(), sigma=10.0, normalized=True)
    assert loss.deviation(cam, att).item() == pytest.approx(0.25)


class Zero(LogitLoss):
    name = "zero"

    def from_logits(self, logits, y):
        return logits.sum(1) * 0


@pytest.mark.parametrize("arch", ["lenet", "resnet9"])
def test_a3_attention_term_has_a_gradient_wrt_the_input(arch):
    # lenet: Grad-CAM through create_graph=True; resnet9: the closed-form CAM (GAP + linear head)
    torch.manual_seed(0)
    if arch == "lenet":
        model = lenet()
        x, y = batch(model, n=4)
    else:
        model = create_model("resnet9", width=1 / 16, input_size=(3, 16, 16)).eval()
        x, y = batch(model, n=4, shape=(3, 16, 16))
    loss = AttentionDeviationLoss(Zero(), sigma=1.0)
    state = loss.setup(model, x, y)
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    value, logits = loss(model, x_adv, y, state)
    (grad,) = torch.autograd.grad(value.sum(), x_adv)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()
    # the value is the deviation itself (sigma = 1, zero base loss): eq. 12's L1 sum, g unnormalized
    cam = grad_cam(model, None, x_adv.detach(), target=y)
    expected = (state[1] - cam).abs().flatten(1).sum(1)
    assert torch.allclose(value.detach(), expected, rtol=1e-5, atol=1e-5)


def test_a3_clean_area_is_the_binarized_true_class_cam():
    model = lenet()
    x, y = batch(model)
    _, att = AttentionDeviationLoss(CrossEntropyLoss(), 10.0).setup(model, x, y)
    assert torch.equal(att, attention_area(grad_cam(model, None, x, target=y), "mean").float())


def test_a3_with_sigma_zero_is_its_base():
    model = lenet()
    x, y = batch(model)
    for base in (PGD(0.1, steps=3, seed=0), IterStepLL(0.1, steps=3), FGSM(0.1), StepLL(0.1)):
        assert torch.allclose(A3(base, sigma=0.0)(model, x, y), base(model, x, y), atol=1e-6), base


def test_a3_copies_its_base_and_refuses_what_it_cannot_wrap():
    base = PGD(0.1, steps=3)
    loss = base.loss
    a = A3(base)
    assert base.loss is loss and a.inner is not base and a.inner.loss.base is loss
    assert (a.eps, a.norm, a.skip_misclassified) == (0.1, "linf", True)
    with pytest.raises(ConfigError, match="A3 wraps"):
        A3(Square(0.1))
    with pytest.raises(ConfigError, match="targeted"):
        A3(PGD(0.1, targeted=True))
    with pytest.raises(ConfigError, match="sigma"):
        A3(PGD(0.1), sigma=-1)
    with pytest.raises(ConfigError, match="kappa"):
        A3(PGD(0.1), kappa="median")


# ---------------------------------------------------------------- AutoAttack

def test_autoattack_runs_on_the_still_robust_examples_and_leaves_the_global_rng():
    model = lenet()
    x, y = batch(model, n=8)
    atk = AutoAttack(0.05, version="custom", steps=3, n_queries=5, n_target_classes=2)
    state = torch.get_rng_state()
    x_adv = atk(model, x, y)
    assert torch.equal(torch.get_rng_state(), state)
    robust = list(atk.last_robust.values())
    assert robust == sorted(robust, reverse=True)  # each component only attacks what is left
    with torch.no_grad():
        assert int((model(x_adv).argmax(1) == y).sum()) == robust[-1]


# ---------------------------------------------------------------- Square

def test_square_is_black_box_reproducible_and_leaves_the_global_rng():
    model = lenet()
    x, y = batch(model)
    atk = Square(0.1, n_queries=30, seed=3)
    assert not Square.uses_gradients
    state = torch.get_rng_state()
    a, b = atk(model, x, y), atk(model, x, y)
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(a, Square(0.1, n_queries=30, seed=4)(model, x, y))
    with pytest.raises(ConfigError, match="n_queries"):
        Square(0.1, n_queries=0)


def test_square_l2_refuses_sizes_the_library_cannot_tile():
    # the authors' L2 initialization fails with a shape error on e.g. 12x12 images: say so clearly
    model = lenet()
    x, y = batch(model)
    with pytest.raises(ConfigError, match="cannot tile 12x12"):
        Square(0.5, n_queries=5, norm="l2")(model, x, y)
    with pytest.raises(ConfigError, match="cannot tile 12x12"):
        AutoAttack(0.5, norm="l2", version="custom", steps=1, n_queries=1)(model, x, y)
    model28 = create_model("lenet", width=0.25).eval()
    x28, y28 = batch(model28, shape=(1, 28, 28))
    assert (Square(0.5, n_queries=5, norm="l2")(model28, x28, y28) - x28).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5


# ---------------------------------------------------------------- RayS

class HalfSpace(nn.Module):
    """Two classes: class 1 iff ``w . x + b > 0`` (logits ``(0, w.x + b)``)."""

    def __init__(self, w, b):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float32))
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, x):
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], 1)


def test_rays_finds_the_boundary_radius_of_a_half_space():
    # At x = 0.5 (no clipping for radii < 0.5) the nearest boundary point along a sign direction d
    # is at r(d) = -(w.x + b) / (w.d); the best sign direction is sign(w), giving -(w.x + b) / ||w||_1.
    w, b = [1.0, -2.0, 0.5, 3.0], -2.0
    model = HalfSpace(w, b)
    x = torch.full((1, 1, 2, 2), 0.5)
    r_star = -(0.5 * sum(w) + b) / sum(abs(v) for v in w)
    atk = RayS(0.01, queries=500, early_stop=False)
    x_adv = atk(model, x, torch.tensor([0]))
    assert atk.last_radius.item() == pytest.approx(r_star, abs=1e-3)
    assert int(atk.last_queries) <= 500
    # the radius exceeds eps: the returned point is x + eps * sign(w), on the ball's surface
    assert torch.allclose(x_adv.flatten(), 0.5 + 0.01 * torch.tensor(w).sign())
    # with a larger eps the attack succeeds and returns the boundary point itself
    big = RayS(0.3, queries=500)
    x_big = big(model, x, torch.tensor([0]))
    assert model(x_big).argmax(1).item() == 1 and (x_big - x).abs().max() <= 0.3 + 1e-6


def test_rays_uses_hard_labels_only_and_counts_queries():
    model = lenet()
    x, y = batch(model, n=5)

    class Scaled(nn.Module):  # same argmax, different logit values
        def forward(self, x):
            return 7.0 * model(x) + 3.0

    class OneHot(nn.Module):  # nothing but the label
        def forward(self, x):
            return nn.functional.one_hot(model(x).argmax(1), 10).float()

    calls = []

    class Counting(nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return model(x)

    atk = RayS(0.05, queries=120)
    ref = atk(model, x, y)
    assert torch.equal(atk(Scaled(), x, y), ref) and torch.equal(atk(OneHot(), x, y), ref)
    atk(Counting(), x, y)
    used = atk.last_queries
    assert (used <= 120).all() and (used >= 1).all()
    assert calls[0] == 5  # the base class's skip check
    assert sum(calls[1:]) >= int(used.sum())  # every counted query is a forward row
    assert not RayS.uses_gradients
    with pytest.raises(ConfigError, match="queries"):
        RayS(0.1, queries=0)


def test_rays_early_stop_stops_at_eps():
    model = lenet()
    x, y = batch(model, n=5)
    a = RayS(0.3, queries=400, early_stop=True)
    b = RayS(0.3, queries=400, early_stop=False)
    a(model, x, y), b(model, x, y)
    assert (a.last_queries <= b.last_queries).all()
    assert ((a.last_radius <= 0.3) | (a.last_queries == 400)).all()
    assert (b.last_radius <= a.last_radius + 1e-7).all()


# ---------------------------------------------------------------- Transfer

def test_transfer_crafts_on_the_source_only():
    target, source = lenet(0), lenet(7)
    x, y = batch(target, n=6)
    y = y.clone()
    y[0] = (y[0] + 1) % 10  # the target misclassifies example 0: it stays unchanged
    base = PGD(0.1, steps=3, seed=0)
    atk = Transfer(source, base)
    x_adv = atk(target, x, y)
    assert torch.equal(x_adv[0], x[0])
    on_source = PGD(0.1, steps=3, seed=0, skip_misclassified=False)(source, x[1:], y[1:])
    assert torch.allclose(x_adv[1:], on_source, atol=1e-6)
    assert base.skip_misclassified and not Transfer.uses_gradients
    with pytest.raises(ConfigError, match="base_attack"):
        Transfer(source, "pgd")

    # the target is only asked for its predictions once (the skip check), never differentiated
    class Watch(nn.Module):
        def __init__(self):
            super().__init__()
            self.n, self.grad = 0, False

        def forward(self, x):
            self.n += 1
            self.grad |= torch.is_grad_enabled()
            return target(x)

    w = Watch()
    atk(w, x, y)
    assert w.n == 1 and not w.grad
