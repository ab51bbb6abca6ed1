"""PGD's ``early_stop`` (the evaluation's setting): an example leaves the later steps once an iterate
fooled it, and that fooling iterate is its result.

What must hold: it is at least as strong as judging the last iterate (torchattacks, the training
adversary), every example it counts as fooled is fooled by the image it returns, the images stay in
the threat model, the evaluation uses it for named PGD attacks only, and the training adversary
(full batch, last iterate) is unchanged.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnguard
from _support import load_mnist, train_tiny_lenet
from attnguard.attacks.base import project
from attnguard.attacks.pgd import PGD
from attnguard.attacks.registry import build_attack
from attnguard.defenses import build_objective
from attnguard.defenses.adversary import AdversaryConfig
from attnguard.defenses.config import DefenseConfig
from attnguard.defenses.madry import training_pgd
from attnguard.evaluation.blocks import evaluation_variant
from attnguard.models import create_model


@pytest.fixture(scope="module")
def trained(request, one_thread):
    x, y = load_mnist(getattr(request.config, "cache", None))
    return train_tiny_lenet(x, y), x[4000:4200], y[4000:4200]


def fooled_by(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


# ---------------------------------------------------------------- strength, on a small trained LeNet

def test_early_stop_is_at_least_as_strong_as_the_last_iterate(trained):
    model, x, y = trained
    # A step as large as eps makes the iterates jump back and forth across the boundary, so some
    # example is fooled by an iterate and not by the last one (measured: 5 of 200 digits).
    plain = PGD(0.1, alpha=0.1, steps=10, seed=0)
    early = PGD(0.1, alpha=0.1, steps=10, seed=0, early_stop=True)
    f_plain = fooled_by(model, plain(model, x, y), y)
    f_early = fooled_by(model, early(model, x, y), y)
    assert f_early.sum() >= f_plain.sum()
    # per example: what the last iterate fools, early stop fools too (the remaining examples take the same
    # path; 1% slack for float differences between batch compositions)
    assert int((f_plain & ~f_early).sum()) <= 2
    assert int((f_early & ~f_plain).sum()) >= 1  # and it keeps fooling iterates the last iterate lost


@pytest.mark.parametrize("restarts", [1, 3])
def test_every_example_counted_fooled_is_fooled_by_its_returned_image(trained, restarts):
    model, x, y = trained
    attack = PGD(0.1, alpha=0.05, steps=5, restarts=restarts, seed=0, early_stop=True)
    gen = attack.generator(x.device)
    out, fooled, loss = attack.run_early_stop(model, x, y, None, gen, score=True)
    recheck = fooled_by(model, out, y)
    assert fooled.any() and (~fooled).any()
    assert torch.equal(fooled, recheck)  # counted fooled <=> the returned image is misclassified
    assert torch.isfinite(loss[~fooled]).all() and torch.isinf(loss[fooled]).any()  # -inf: left before the end
    # with restarts, a later restart only adds fooled examples
    one = fooled_by(model, PGD(0.1, alpha=0.05, steps=5, seed=0, early_stop=True)(model, x, y), y)
    many = fooled_by(model, attack(model, x, y), y)
    assert (many | ~one).all() if restarts > 1 else torch.equal(many, one)


def test_evaluate_uses_early_stop_for_named_pgd_and_leaves_objects_alone(trained):
    model, x, y = trained
    named = attnguard.evaluate(model, x, y, ["pgd-10"], 0.1, progress=False, return_per_example=True)[1]
    mine = PGD(0.1, alpha=0.025, steps=10, seed=0)  # pgd-10's settings, as an object: judged on its last iterate
    mine.registry_name = None
    obj = attnguard.evaluate(model, x, y, [mine], 0.1, progress=False, return_per_example=True)[1]
    assert mine.early_stop is False  # the caller's object is not changed
    robust_named, robust_obj = next(iter(named.attacks.values())), next(iter(obj.attacks.values()))
    assert robust_named.sum() <= robust_obj.sum()
    built = build_attack("pgd-10", 0.1)
    assert evaluation_variant(built).early_stop and not built.early_stop
    assert evaluation_variant(build_attack("cw-10", 0.1)).early_stop
    a3 = build_attack("a3-pgd-10", 0.1)  # judged by the same rule as the PGD beside it in a table
    assert evaluation_variant(a3).inner.early_stop and not a3.inner.early_stop
    assert not evaluation_variant(mine).early_stop
    assert not getattr(evaluation_variant(build_attack("fgsm", 0.1)), "early_stop", False)


# ---------------------------------------------------------------- the threat model, skipping, observers

@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.5)])
@pytest.mark.parametrize("restarts", [1, 2])
def test_early_stop_stays_in_the_ball_and_in_the_box(norm, eps, restarts):
    torch.manual_seed(0)
    model = create_model("lenet", width=0.25, input_size=(1, 12, 12)).eval()
    x = torch.rand(16, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10  # 4 examples misclassified: returned unchanged
    attack = PGD(eps, steps=5, norm=norm, restarts=restarts, seed=0, early_stop=True)
    x_adv = attack(model, x, y)
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(x_adv[:4], x[:4])
    assert (size[4:] > 0).all()


def test_observer_sees_the_whole_batch_at_every_step_with_early_stop():
    torch.manual_seed(0)
    model = create_model("lenet", width=0.25, input_size=(1, 12, 12)).eval()
    x = torch.rand(8, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    seen = []
    attack = PGD(0.5, steps=4, seed=0, early_stop=True, skip_misclassified=False)
    attack.on_iterate = lambda step, xa: seen.append((step, xa.clone()))
    x_adv = attack(model, x, y)
    assert [s for s, _ in seen] == [0, 1, 2, 3, 4]
    assert all(xa.shape == x.shape for _, xa in seen)
    assert torch.equal(seen[-1][1], x_adv)


def test_clean_correct_replaces_the_skip_forward_pass():
    torch.manual_seed(0)
    model = create_model("lenet", width=0.25, input_size=(1, 12, 12)).eval()
    calls = []
    model.register_forward_pre_hook(lambda m, inp: calls.append(inp[0].shape[0]))
    x = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(6, dtype=torch.long)
    attack = PGD(0.3, steps=2, seed=0, early_stop=True)
    known = torch.tensor([True, False, True, False, False, False])
    x_adv = attack(model, x, y, clean_correct=known)
    assert calls and calls[0] == 2  # no full-batch clean pass: the attack starts on the 2 known-correct ones
    assert torch.equal(x_adv[~known], x[~known]) and not torch.equal(x_adv[known], x[known])


# ---------------------------------------------------------------- the training adversary is unchanged

def test_training_adversary_is_the_full_batch_last_iterate_bitwise():
    """madry's adversary: every example, every step, the last iterate (no early stop), bit for bit the
    loop written out here; and the training loss and gradient computed from it."""
    torch.manual_seed(0)
    model = create_model("lenet", width=0.25).train()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 10
    adv = AdversaryConfig(eps=0.3, step_size=0.1, steps=5)
    assert training_pgd(adv).early_stop is False
    objective = build_objective(DefenseConfig(preset="madry"), adv)
    assert objective.base.attack.early_stop is False

    torch.manual_seed(7)
    loss, _ = objective(model, x, y)
    grads = torch.autograd.grad(loss, list(model.parameters()))

    torch.manual_seed(7)
    model.eval()  # the adversary crafts in eval mode (adversary.bn_mode)
    xa = project(x + (torch.rand(x.shape) * 2 - 1) * 0.3, x, 0.3, "linf")
    for _ in range(5):
        xa = xa.detach().requires_grad_(True)
        g, = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="none").sum(), xa)
        xa = project(xa.detach() + 0.1 * g.sign(), x, 0.3, "linf")
    model.train()
    ref = F.cross_entropy(model(xa), y)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    assert loss.item() == ref.item()
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
