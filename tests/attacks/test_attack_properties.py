"""Properties every attack must have, checked with hypothesis on tiny models and random batches:
the result lies in the eps-ball and in [0, 1]; the model's modes and its parameters' .grad are as
they were; the same seed gives the same result; already-misclassified examples are unchanged."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnguard.attacks.a3 import A3
from attnguard.attacks.autoattack import AutoAttack
from attnguard.attacks.fgsm import FGSM
from attnguard.attacks.pgd import PGD
from attnguard.attacks.rays import RayS
from attnguard.attacks.square import Square
from attnguard.attacks.stepll import IterStepLL, StepLL
from attnguard.attacks.transfer import Transfer
from attnguard.models import create_model

SHAPE = (1, 10, 10)


def tiny(seed: int):
    torch.manual_seed(seed)
    return create_model("lenet", width=0.25, input_size=SHAPE)


SOURCE = tiny(11).eval()

# Few steps and queries: these tests check contracts, not strength.
ATTACKS = {
    "fgsm": lambda eps: FGSM(eps),
    "fgsm-l2": lambda eps: FGSM(eps, norm="l2"),
    "pgd-linf": lambda eps: PGD(eps, steps=3, seed=0),
    "pgd-l2": lambda eps: PGD(eps, steps=3, norm="l2", seed=0),
    "pgd-cw": lambda eps: PGD(eps, steps=3, loss="cw", seed=0),
    "pgd-targeted": lambda eps: PGD(eps, steps=3, targeted=True, seed=0),
    "pgd-restarts": lambda eps: PGD(eps, steps=2, restarts=2, seed=0),
    "stepll": lambda eps: StepLL(eps),
    "iter-stepll": lambda eps: IterStepLL(eps, steps=3),
    "a3-pgd": lambda eps: A3(PGD(eps, steps=2, seed=0)),
    "a3-iter-stepll": lambda eps: A3(IterStepLL(eps, steps=2)),
    "a3-stepll": lambda eps: A3(StepLL(eps)),
    "square": lambda eps: Square(eps, n_queries=10, seed=0),
    "square-l2": lambda eps: Square(eps, n_queries=10, norm="l2", seed=0),
    "rays": lambda eps: RayS(eps, queries=30),
    "autoattack": lambda eps: AutoAttack(eps, version="custom", steps=2, n_queries=5, n_target_classes=2, seed=0),
    "transfer": lambda eps: Transfer(SOURCE, PGD(eps, steps=2, seed=0)),
}
NAMES = sorted(ATTACKS)

cases = st.tuples(
    st.integers(0, 2**16),                      # data seed
    st.integers(1, 4),                          # batch size
    st.sampled_from([0.0, 0.02, 0.1, 0.3]),     # eps
    st.floats(0.0, 1.0),                        # fraction of labels replaced by random ones
)
few = settings(max_examples=4, deadline=None)


def make_batch(model, seed, n, relabel):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *SHAPE, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    swap = torch.rand(n, generator=g) < relabel
    return x, torch.where(swap, torch.randint(0, 10, (n,), generator=g), y)


def within_ball(x_adv, x, eps, norm):
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    return bool((size <= eps + 1e-5).all())


@pytest.mark.parametrize("name", NAMES)
@few
@given(case=cases)
def test_inside_the_ball_and_the_image_range(name, case):
    seed, n, eps, relabel = case
    model = tiny(seed % 3).eval()
    x, y = make_batch(model, seed, n, relabel)
    atk = ATTACKS[name](eps)
    x_adv = atk(model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and torch.isfinite(x_adv).all()
    assert within_ball(x_adv, x, eps, atk.norm)
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("name", NAMES)
@few
@given(case=cases, mode=st.sampled_from(["train", "eval", "mixed"]), preset=st.booleans())
def test_modes_and_parameter_grads_are_left_as_found(name, case, mode, preset):
    seed, n, eps, relabel = case
    model = tiny(seed % 3)
    model.train(mode != "eval")
    if mode == "mixed":
        model.net.block1.eval()
    modes = {k: m.training for k, m in model.named_modules()}
    params = list(model.parameters())
    for i, p in enumerate(params):  # every other parameter gets a preset grad; the rest keep None
        p.grad = torch.randn_like(p) if preset and i % 2 == 0 else None
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    source_modes = {k: m.training for k, m in SOURCE.named_modules()}
    x, y = make_batch(model, seed, n, relabel)
    ATTACKS[name](eps)(model, x, y)
    assert {k: m.training for k, m in model.named_modules()} == modes
    for p, g in zip(params, grads):
        assert (p.grad is None) if g is None else torch.equal(p.grad, g)
    assert {k: m.training for k, m in SOURCE.named_modules()} == source_modes
    assert all(p.grad is None for p in SOURCE.parameters())


@pytest.mark.parametrize("name", NAMES)
@few
@given(case=cases)
def test_same_seed_same_result(name, case):
    seed, n, eps, relabel = case
    model = tiny(seed % 3).eval()
    x, y = make_batch(model, seed, n, relabel)
    torch.manual_seed(seed)  # the global stream differs between the calls: only the attack's seed may matter
    a = ATTACKS[name](eps)(model, x, y)
    torch.manual_seed(seed + 1)
    state = torch.get_rng_state()
    b = ATTACKS[name](eps)(model, x, y)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)  # seeded attacks draw from their own generators


@pytest.mark.parametrize("name", [n for n in NAMES if n != "pgd-targeted"])  # targeted: y are targets
@few
@given(case=cases)
def test_misclassified_examples_are_unchanged(name, case):
    seed, n, eps, relabel = case
    model = tiny(seed % 3).eval()
    x, y = make_batch(model, seed, n, max(relabel, 0.5))
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    x_adv = ATTACKS[name](eps)(model, x, y)
    assert torch.equal(x_adv[wrong], x[wrong])


def test_targeted_pgd_is_not_skipped():
    # the contract's one exception: a targeted attack attacks every example, whatever its label
    model = tiny(0).eval()
    x, y = make_batch(model, 0, 4, 1.0)
    x_adv = PGD(0.1, steps=3, targeted=True, seed=0)(model, x, y)
    assert (x_adv - x).flatten(1).abs().amax(1).gt(0).all()


@pytest.mark.parametrize("name", NAMES)
def test_same_result_inside_no_grad(name):
    # evaluation loops often run under torch.no_grad(); gradient attacks must re-enable what they need
    model = tiny(0).eval()
    x, y = make_batch(model, 5, 4, 0.0)
    ref = ATTACKS[name](0.1)(model, x, y)
    with torch.no_grad():
        assert torch.equal(ATTACKS[name](0.1)(model, x, y), ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_runs_on_the_inputs_device(name):
    cpu_model = tiny(0).eval()
    x, y = make_batch(cpu_model, 5, 4, 0.3)
    model, x, y = cpu_model.cuda(), x.cuda(), y.cuda()
    SOURCE.cuda()
    try:
        cpu_state, cuda_state = torch.get_rng_state(), torch.cuda.get_rng_state()
        atk = ATTACKS[name](0.1)
        x_adv = atk(model, x, y)
        assert x_adv.device == x.device and within_ball(x_adv, x, 0.1, atk.norm)
        # every attack here is seeded (or deterministic): the global streams stay as they were
        assert torch.equal(torch.get_rng_state(), cpu_state)
        assert torch.equal(torch.cuda.get_rng_state(), cuda_state)
    finally:
        SOURCE.cpu()
