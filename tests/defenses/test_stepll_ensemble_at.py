"""The AAD sec. 5.5 bases: StepLL adversarial training (Kurakin et al. 2017) and ensemble adversarial
training (Tramer et al. 2018).

* each loss equals its formula, hand-computed on a 2-example batch;
* the gradient reaches every parameter; weights that switch a part off give the plain objective;
* ``+aad`` at zero weight leaves each base unchanged (loss, gradients, BN statistics);
* ensemble: the round-robin source sequence (and its continuation after ``seek``), static models
  that never change and get no gradient, examples crafted on the static model, a missing source;
* a 3-step ``attnguard train`` per base through the CLI.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from attnguard.attacks.stepll import StepLL
from attnguard.cli import main
from attnguard.defenses import AdversaryConfig, Context, DefenseConfig, build_objective
from attnguard.defenses.ensemble_at import EnsembleAT, EnsembleParams
from attnguard.defenses.stepll_at import StepLLAT, StepLLATParams, adversarial_count, sample_eps
from attnguard.errors import ConfigError
from attnguard.io import export_safetensors
from attnguard.models import create_model

ADV = AdversaryConfig(eps=0.3, step_size=0.1, steps=1)
CLI = ["--model", "lenet", "--set", "model.width=0.25", "--epochs", "1", "--batch-size", "32",
       "--set", "train.max_steps=3", "--set", "data.val_size=50", "--set", "train.val_steps=1",
       "--set", "train.progress=false", "--set", "train.log_every=1", "--device", "cpu", "--no-eval"]


def _lenet(seed=0):
    torch.manual_seed(seed)
    return create_model("lenet", width=0.25).train()


def _batch(n=2, shape=(1, 28, 28), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def _ce(logits_row, label) -> float:
    """Cross-entropy of one row of logits, by hand (python floats)."""
    z = [float(v) for v in logits_row]
    m = max(z)
    return m + math.log(sum(math.exp(v - m) for v in z)) - z[int(label)]


@pytest.fixture
def sources(tmp_path):
    """Two static LeNets exported as safetensors (different seeds, so different weights)."""
    paths = []
    for i in range(2):
        path = tmp_path / f"static{i}.safetensors"
        export_safetensors(_lenet(seed=10 + i).eval(), path)
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------- stepll-at
def test_stepll_at_loss_is_kurakin_formula_on_two_examples():
    model = _lenet()
    x, y = _batch(2)
    base = StepLLAT(StepLLATParams(weight=0.3, adv_fraction=0.5, eps_sampling="fixed"), ADV)
    x_mixed = base.craft(model, x, y)
    assert adversarial_count(2, 0.5) == 1
    # row 0: StepLL at eps (every example attacked); row 1: the clean example itself
    want0 = StepLL(0.3, skip_misclassified=False)(model, x[:1], y[:1])
    assert torch.equal(x_mixed[0:1], want0) and not torch.equal(x_mixed[0], x[0])
    assert torch.equal(x_mixed[1], x[1])
    ctx = Context(model, x, y, x_mixed, fused_forward=False, need_clean=False)
    loss = base.loss(ctx)
    with torch.no_grad():
        logits = model(x_mixed)
    l_adv, l_clean = _ce(logits[0], y[0]), _ce(logits[1], y[1])
    assert loss.item() == pytest.approx((l_clean + 0.3 * l_adv) / (1 + 0.3), rel=1e-5)
    assert ctx.parts["ce_adv"].item() == pytest.approx(l_adv, rel=1e-5)
    assert ctx.parts["ce_clean"].item() == pytest.approx(l_clean, rel=1e-5)


def test_stepll_at_truncated_normal_steps():
    torch.manual_seed(0)
    eps = sample_eps(20000, 0.3, "truncated-normal")
    assert eps.min() >= 0 and eps.max() <= 0.3
    # N(0, eps/2) truncated to [0, eps]: mean = sigma sqrt(2/pi) (1 - e^-2) / erf(sqrt 2) = 0.3603 eps
    assert eps.mean().item() == pytest.approx(0.3603 * 0.3, rel=0.03)
    model, (x, y) = _lenet(), _batch(8)
    base = StepLLAT(StepLLATParams(adv_fraction=1.0), ADV)
    torch.manual_seed(1)
    delta = (base.craft(model, x, y) - x).abs().flatten(1)
    inside = (x.flatten(1) > 0.31) & (x.flatten(1) < 0.69)  # pixels no clipping can touch
    per_example = torch.stack([d[m].max() for d, m in zip(delta, inside)])
    assert (per_example <= 0.3 + 1e-6).all() and per_example.std() > 0.01  # one step size per example


def test_stepll_at_weight_cancels_on_an_all_adversarial_batch():
    model, (x, y) = _lenet(), _batch(4)
    losses = []
    for w in (0.3, 1.0):
        obj = build_objective(DefenseConfig(preset="stepll-at", **{"stepll-at": {"lambda": w, "adv_fraction": 1.0,
                                                                                 "eps_sampling": "fixed"}}), ADV)
        losses.append(obj(model, x, y)[0].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_stepll_at_params_are_checked():
    with pytest.raises(ConfigError, match="adv_fraction"):
        StepLLATParams(adv_fraction=0)
    with pytest.raises(ConfigError, match="eps_sampling"):
        StepLLATParams(eps_sampling="uniform")
    with pytest.raises(ConfigError, match="lambda"):
        DefenseConfig(preset="stepll-at", **{"stepll-at": {"lambda": -1}})


# ---------------------------------------------------------------- ensemble
def test_ensemble_loss_is_the_formula_on_two_examples():
    model, (x, y) = _lenet(), _batch(2)
    base = EnsembleAT(EnsembleParams(weight=0.5), ADV)
    x_adv = base.craft(model, x, y)
    ctx = Context(model, x, y, x_adv, fused_forward=True, need_clean=True)
    loss = base.loss(ctx)
    with torch.no_grad():
        lc, la = model(x), model(x_adv)
    clean = _ce(lc[0], y[0]) + _ce(lc[1], y[1])
    adv = _ce(la[0], y[0]) + _ce(la[1], y[1])
    assert loss.item() == pytest.approx((clean + 0.5 * adv) / (2 + 0.5 * 2), rel=1e-5)


def test_ensemble_weight_zero_is_standard_training():
    model, (x, y) = _lenet(), _batch(4)
    grads = []
    for preset, sections in (("standard", {}), ("ensemble", {"ensemble": {"lambda": 0.0}})):
        m = copy.deepcopy(model)
        loss, _ = build_objective(DefenseConfig(preset=preset, **sections), ADV)(m, x, y)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in m.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(grads[0][1], grads[1][1]))


def test_source_sequence_is_a_round_robin_that_seek_continues(sources):
    model, (x, y) = _lenet(), _batch(2)
    obj = build_objective(DefenseConfig(preset="ensemble", ensemble={"sources": sources}), ADV)
    seq = []
    for _ in range(7):
        obj.base.craft(model, x, y)
        seq.append(obj.base.last_source)
    assert seq == ["self", 0, 1, "self", 0, 1, "self"]
    resumed = build_objective(DefenseConfig(preset="ensemble", ensemble={"sources": sources}), ADV).base
    resumed.seek(4)
    after = []
    for _ in range(3):
        resumed.craft(model, x, y)
        after.append(resumed.last_source)
    assert after == seq[4:]
    solo = EnsembleAT(EnsembleParams(sources=sources, include_self=False), ADV)
    assert [solo.source_at(i) for i in range(4)] == [0, 1, 0, 1]


def test_examples_are_crafted_on_the_static_model(sources):
    model, (x, y) = _lenet(), _batch(4)
    base = build_objective(DefenseConfig(preset="ensemble", ensemble={"sources": sources}), ADV).base
    base.seek(1)  # source 0
    calls = {"static": 0, "trained": 0}
    h1 = base.static[0].register_forward_hook(lambda *a: calls.__setitem__("static", calls["static"] + 1))
    h2 = model.register_forward_hook(lambda *a: calls.__setitem__("trained", calls["trained"] + 1))
    try:
        x_adv = base.craft(model, x, y)
    finally:
        h1.remove()
        h2.remove()
    assert base.last_source == 0 and calls["static"] > 0 and calls["trained"] == 0
    assert torch.equal(x_adv, StepLL(0.3, skip_misclassified=False)(base.static[0], x, y))
    assert not torch.equal(x_adv, StepLL(0.3, skip_misclassified=False)(model, x, y))


def test_static_models_never_change_and_get_no_gradient(sources):
    model, (x, y) = _lenet(), _batch(8)
    obj = build_objective(DefenseConfig(preset="ensemble+aad", ensemble={"sources": sources, "attack": "fgsm"}), ADV)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in obj.base.static]
    trained = {id(p) for p in model.parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):  # self, 0, 1, self
        opt.zero_grad(set_to_none=True)
        loss, parts = obj(model, x, y)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    for m, state in zip(obj.base.static, before):
        assert not m.training
        for p in m.parameters():
            assert not p.requires_grad and p.grad is None and id(p) not in trained
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


def test_missing_source_is_one_line_exit_2(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), *CLI, "--defense", "ensemble",
                 "--set", f"defense.ensemble.sources=[{tmp_path / 'nope.pt'}]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.pt does not exist" in err
    with pytest.raises(ConfigError, match="attack"):
        EnsembleParams(attack="pgd")


# ---------------------------------------------------------------- both bases
@pytest.mark.parametrize("preset", ["stepll-at", "ensemble"])
def test_gradient_reaches_every_parameter(preset):
    model, (x, y) = _lenet(), _batch(8)
    loss, parts = build_objective(DefenseConfig(preset=preset), ADV)(model, x, y)
    loss.backward()
    assert parts["ce"].item() == pytest.approx(loss.item())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("preset", ["stepll-at", "ensemble"])
def test_zero_weight_aad_leaves_the_base_unchanged(preset):
    torch.manual_seed(0)
    model0 = create_model("resnet9", width=0.125).train()  # BatchNorm: the running statistics must match too
    x, y = _batch(4, (3, 32, 32))
    adv = AdversaryConfig(eps=8 / 255, step_size=4 / 255, steps=1)
    out = []
    for name, sections in ((preset, {}), (f"{preset}+aad", {"aad": {"alpha": 0.0, "beta": 0.0}})):
        model = copy.deepcopy(model0)
        torch.manual_seed(1234)
        loss, parts = build_objective(DefenseConfig(preset=name, **sections), adv)(model, x, y)
        loss.backward()
        bn = [b.clone() for n, b in model.named_buffers() if "running" in n]
        out.append((loss.detach(), [p.grad.clone() for p in model.parameters()], bn))
    (l0, g0, b0), (l1, g1, b1) = out
    assert torch.allclose(l0, l1, rtol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-9) for a, b in zip(g0, g1))
    assert b0 and all(torch.equal(a, b) for a, b in zip(b0, b1))
    # at AAD's paper weights the regularizer acts
    model = copy.deepcopy(model0)
    torch.manual_seed(1234)
    _, parts = build_objective(DefenseConfig(preset=f"{preset}+aad"), adv)(model, x, y)
    assert "aad_rect" in parts and parts["ce"].item() == pytest.approx(l0.item(), rel=1e-5)


def test_both_bases_are_listed(capsys):
    assert main(["list", "defenses"]) == 0
    out = capsys.readouterr().out
    assert "stepll-at " in out and "Kurakin" in out and "ensemble " in out and "Tramer" in out


@pytest.mark.parametrize("preset", ["stepll-at", "ensemble"])
def test_three_step_cli_train(preset, sources, tmp_path):
    import json

    run = tmp_path / "run"
    extra = ["--set", f"defense.ensemble.sources=[{sources[0]}]"] if preset == "ensemble" else []
    assert main(["train", "--out", str(run), *CLI, "--defense", preset, *extra]) == 0
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r.get("split") == "train"]
    assert train and all(math.isfinite(r["loss"]) for r in train) and "ce_adv" in train[-1]
    assert (run / "checkpoints" / "last.pt").is_file()
