"""A regularizer never changes what its base computes.

* Zero-weight invariance: ``base+reg`` with the regularizer's weights at 0 trains exactly as
  ``base`` alone: the same loss, the same parameter gradients, the same BatchNorm running
  statistics (and ``num_batches_tracked``) after one optimizer step.
* At the paper weights the base's own part (``parts["ce"]``, and ALP's / TRADES' pairing terms)
  and the BatchNorm running statistics are still those of the base alone: madry's clean pass for a
  regularizer runs apart from its adversarial pass and leaves the running statistics alone; for
  alp and trades the fused clean+adversarial batch is the base's own.
* Each base's loss, hand-computed on a tiny case (CE and the multi-label soft margin L_c).

Every comparison runs the two objectives from identical model copies with the global RNG seeded
identically before each call (the PGD start and dropout draw from it).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from attnguard.defenses import REGULARIZERS, AdversaryConfig, BaseObjective, Context, DefenseConfig, build_objective
from attnguard.defenses.base import classification_loss, frozen_bn_statistics
from attnguard.errors import ConfigError
from attnguard.models import create_model

BASES = ("madry", "alp", "trades")
# The weights that switch each regularizer off. A regularizer registered without an entry here
# fails test_every_regularizer_has_a_zero_weight_setting: the invariance must cover it too.
ZERO = {
    "aad": {"alpha": 0.0, "beta": 0.0},
    "at": {"beta": 0.0},
    "afm": {"lambda1": 0.0, "lambda2": 0.0},
    "afm-cam": {"lambda1": 0.0, "lambda2": 0.0},
    "fm-single": {"lambda1": 0.0},
    "fm-multi": {"lambda1": 0.0},
}
REGS = [n for n in ZERO if n in REGULARIZERS.names()]
ADV = AdversaryConfig(eps=8 / 255, step_size=4 / 255, steps=2)
REL = 1e-5


def _bn_model(width=0.125):
    """ResNet9 at small width: BatchNorm everywhere, closed-form CAM."""
    return create_model("resnet9", width=width)


def _bn_model_grad_cam():
    """ResNet9 without the closed-form classifier: Grad-CAM takes the gradient path on a BN model."""
    model = _bn_model()
    model.classifier = None
    return model


MODELS = {
    "resnet9": (_bn_model, (3, 32, 32)),
    "resnet9-gradcam": (_bn_model_grad_cam, (3, 32, 32)),
    "lenet": (lambda: create_model("lenet", width=0.25), (1, 28, 28)),
    # the TRADES MNIST network has dropout 0.5 after its first FC layer: both objectives must draw
    # the same dropout masks for the base's pass
    "small-cnn-dropout": (lambda: create_model("small-cnn", width=0.25, dropout=0.5), (1, 28, 28)),
}


def _batch(shape, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def _bn_buffers(model):
    return {n: b.clone() for n, b in model.named_buffers()
            if n.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


def _one_step(model0, x, y, preset, **sections):
    """Loss, parts, parameter gradients and BN buffers after one SGD step of ``preset`` on a copy of ``model0``."""
    model = copy.deepcopy(model0).train()
    obj = build_objective(DefenseConfig(preset=preset, **sections), ADV)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(1234)
    loss, parts = obj(model, x, y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return loss.detach(), parts, grads, _bn_buffers(model), params


def _close(a: torch.Tensor, b: torch.Tensor, rel=REL) -> bool:
    """``a`` equals ``b`` within ``rel`` of ``b``'s largest magnitude (exact for integer tensors)."""
    if not a.is_floating_point():
        return torch.equal(a, b)
    return a.shape == b.shape and bool((a - b).abs().max() <= rel * b.abs().max().clamp_min(1e-12))


def _assert_same(got: dict, want: dict, what: str):
    assert got.keys() == want.keys(), what
    bad = [k for k in want if not _close(got[k], want[k])]
    assert not bad, f"{what} differ: {bad[:5]}"


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: (build(), shape) for name, (build, shape) in MODELS.items()}


def test_every_regularizer_has_a_zero_weight_setting():
    assert set(REGULARIZERS.names()) <= set(ZERO), "add the new regularizer's zero weights to ZERO"


# ---------------------------------------------------------------- zero-weight invariance
@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("base", BASES)
def test_zero_weight_regularizers_leave_the_base_unchanged(models, arch, base):
    model, shape = models[arch]
    x, y = _batch(shape)
    ref_loss, ref_parts, ref_grads, ref_bn, ref_params = _one_step(model, x, y, base)
    if arch.startswith("resnet9"):
        assert ref_bn, "the BN model must have BN buffers"
    for reg in REGS:
        loss, parts, grads, bn, params = _one_step(model, x, y, f"{base}+{reg}", **{reg: ZERO[reg]})
        assert _close(loss, ref_loss), (reg, loss.item(), ref_loss.item())
        assert _close(parts["ce"], ref_parts["ce"]), reg
        _assert_same(grads, ref_grads, f"{base}+{reg}: parameter gradients")
        _assert_same(bn, ref_bn, f"{base}+{reg}: BN running statistics")
        _assert_same(params, ref_params, f"{base}+{reg}: parameters after the step")


def test_zero_weight_invariance_with_the_soft_margin_loss(models):
    """The option lives on the base: madry and madry+<reg> share it, and stay equal at zero weight."""
    model, shape = models["resnet9"]
    x, y = _batch(shape)
    sm = {"madry": {"classification_loss": "soft-margin"}}
    ref_loss, ref_parts, ref_grads, ref_bn, _ = _one_step(model, x, y, "madry", **sm)
    ce_loss = _one_step(model, x, y, "madry")[0]
    assert not _close(ref_loss, ce_loss)  # the option changes the loss ...
    for reg in REGS:
        loss, parts, grads, bn, _ = _one_step(model, x, y, f"madry+{reg}", **sm, **{reg: ZERO[reg]})
        assert _close(loss, ref_loss), reg  # ... for the base with and without the regularizer
        _assert_same(grads, ref_grads, f"madry+{reg}: parameter gradients")
        _assert_same(bn, ref_bn, f"madry+{reg}: BN running statistics")


# ---------------------------------------------------------------- paper weights: the base's part is unchanged
BASE_PARTS = {"madry": ("ce",), "alp": ("ce", "alp"), "trades": ("ce", "trades_kl")}


@pytest.mark.parametrize("arch", ["resnet9", "resnet9-gradcam", "small-cnn-dropout"])
@pytest.mark.parametrize("base", BASES)
def test_paper_weights_leave_the_base_part_and_bn_statistics(models, arch, base):
    model, shape = models[arch]
    x, y = _batch(shape)
    _, ref_parts, _, ref_bn, _ = _one_step(model, x, y, base)
    for reg in REGS:
        _, parts, grads, bn, _ = _one_step(model, x, y, f"{base}+{reg}")  # the regularizer's defaults
        reg_parts = set(parts) - set(ref_parts) - {"acc_clean"}
        assert reg_parts, f"{base}+{reg} at its paper weights reports no term of its own"
        for k in BASE_PARTS[base]:
            assert _close(parts[k], ref_parts[k]), (base, reg, k)
        _assert_same(bn, ref_bn, f"{base}+{reg}: BN running statistics")
        assert all(torch.isfinite(g).all() for g in grads.values())


def test_momentum_none_bn_keeps_its_cumulative_statistics(models):
    """BN with ``momentum=None`` averages over ``num_batches_tracked``: the clean pass must not count."""
    model = copy.deepcopy(models["resnet9"][0])
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    x, y = _batch((3, 32, 32))
    ref_bn = _one_step(model, x, y, "madry")[3]
    for reg in REGS:
        bn = _one_step(model, x, y, f"madry+{reg}")[3]
        _assert_same(bn, ref_bn, f"madry+{reg} (momentum None): BN buffers")


# ---------------------------------------------------------------- which passes run
class _CountingWrapper(nn.Module):
    """Stands in for DistributedDataParallel: holds the model as .module and records each forward's batch size."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.module(x)


@pytest.mark.parametrize("preset,main", [("madry+aad", 4), ("madry+at", 4), ("madry+afm", 4), ("madry+fm-multi", 4),
                                         ("alp+aad", 8), ("trades+at", 8), ("alp", 8)])
def test_the_main_pass_is_the_base_own(models, preset, main):
    """One forward through the wrapper per step: madry's adversarial batch alone, alp/trades' fused one."""
    wrapped = _CountingWrapper(copy.deepcopy(models["resnet9"][0]).train())
    x, y = _batch((3, 32, 32))
    loss, parts = build_objective(DefenseConfig(preset=preset), ADV)(wrapped, x, y)
    loss.backward()
    assert wrapped.batches == [main]


def _training_forwards(model, preset, **sections):
    """Batch sizes of the forwards of ``model`` in train mode during one objective call (crafting runs in eval)."""
    x, y = _batch((1, 28, 28))
    calls = []
    hook = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]) if m.training else None)
    try:
        _, parts = build_objective(DefenseConfig(preset=preset, **sections), ADV)(model, x, y)
    finally:
        hook.remove()
    return calls, parts


def test_madry_runs_no_clean_pass_that_nothing_reads(models):
    model = copy.deepcopy(models["lenet"][0]).train()
    calls, parts = _training_forwards(model, "madry+at", at=ZERO["at"])
    assert calls == [4] and "acc_clean" not in parts and "at" not in parts  # the adversarial batch alone
    calls, parts = _training_forwards(model, "madry+at")
    assert calls == [4, 4] and "acc_clean" in parts and "at" in parts  # adversarial, then clean
    calls, parts = _training_forwards(model, "alp+at")
    assert calls == [8]  # one fused batch


@pytest.mark.parametrize("preset", ["madry+aad", "alp+aad"])
def test_gradient_path_cam_works_in_both_layouts(models, preset):
    """Separate passes (madry) and the fused batch (alp) give the same CAMs as Grad-CAM of each half."""
    from attnguard.attention import grad_cam

    model = copy.deepcopy(models["lenet"][0]).train()  # no BN: each half's CAM is its own
    x, y = _batch((1, 28, 28))
    obj = build_objective(DefenseConfig(preset=preset), ADV)
    torch.manual_seed(3)
    x_adv = obj.base.craft(model, x, y)
    ctx = Context(model, x, y, x_adv, fused_forward=obj.base.fuses_clean, layers=obj.layers(model),
                  need_clean=obj.base.needs_clean_logits)
    assert ctx.fused == (preset == "alp+aad")
    g_clean, g_adv = ctx.cam()
    assert g_clean.requires_grad and g_adv.requires_grad
    assert torch.allclose(g_clean, grad_cam(model, model.attention_layer, x, y), rtol=1e-4, atol=1e-7)
    assert torch.allclose(g_adv, grad_cam(model, model.attention_layer, x_adv, y), rtol=1e-4, atol=1e-7)


def test_frozen_bn_statistics_restores_the_flags():
    bn = nn.BatchNorm2d(3).train()
    frozen_eval = nn.BatchNorm2d(3).eval()
    model = nn.Sequential(bn, frozen_eval)
    with frozen_bn_statistics(model):
        model(torch.rand(4, 3, 2, 2))
    assert bn.num_batches_tracked.item() == 0 and torch.equal(bn.running_mean, torch.zeros(3))
    assert bn.track_running_stats and frozen_eval.track_running_stats
    model(torch.rand(4, 3, 2, 2))
    assert bn.num_batches_tracked.item() == 1


def test_a_base_must_declare_its_passes():
    with pytest.raises(TypeError, match="fuses_clean"):
        class _Undeclared(BaseObjective):  # noqa: F841
            needs_clean_logits = True

    with pytest.raises(TypeError, match="needs_clean_logits"):
        class _Inconsistent(BaseObjective):  # noqa: F841
            needs_clean_logits = False
            fuses_clean = True


# ---------------------------------------------------------------- each base's loss by hand
# logits are the inputs themselves: clean z = (0, ln 3), softmax (1/4, 3/4); adversarial z' = (0, 0); y = 1
LN3 = math.log(3.0)
CE_CLEAN, CE_ADV = math.log(4 / 3), math.log(2.0)
# multi-label soft margin, one-hot t = (0, 1): -(1/K) sum_k [t_k log s(z_k) + (1 - t_k) log s(-z_k)], s = sigmoid
# clean: -(1/2)(log s(0) + log s(ln 3)) = -(1/2)(log 1/2 + log 3/4) = (1/2) log(8/3); adversarial: log 2
SM_CLEAN, SM_ADV = 0.5 * math.log(8 / 3), math.log(2.0)
PAIR = (0.0 + LN3 ** 2) / 2  # mean over the B*K = 2 entries of (z - z')^2
KL = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # KL((1/4, 3/4) || (1/2, 1/2))


def _hand_context(base_name):
    x = torch.tensor([[0.0, LN3]]).view(1, 1, 1, 2)
    x_adv = torch.zeros(1, 1, 1, 2)
    need_clean = base_name != "madry"
    return Context(nn.Flatten(), x, torch.tensor([1]), None if base_name == "standard" else x_adv,
                   fused_forward=True, need_clean=need_clean)


def _lc(kind):
    return (SM_CLEAN, SM_ADV) if kind == "soft-margin" else (CE_CLEAN, CE_ADV)


# (base, its L_c part "ce" from (L_c(clean), L_c(adv)), its whole loss)
HAND = {
    "standard": (lambda c, a: c, lambda c, a: c),
    "madry": (lambda c, a: a, lambda c, a: a),
    "alp": (lambda c, a: 0.5 * (c + a), lambda c, a: 0.5 * (c + a) + 0.5 * PAIR),  # lambda = 0.5
    "trades": (lambda c, a: c, lambda c, a: c + 6.0 * KL),  # beta = 6
}


@pytest.mark.parametrize("kind", ["ce", "soft-margin"])
@pytest.mark.parametrize("base_name", list(HAND))
def test_base_loss_by_hand(base_name, kind):
    cfg = DefenseConfig(preset=base_name, **{base_name: {"classification_loss": kind}})
    base = build_objective(cfg, ADV).base
    ctx = _hand_context(base_name)
    loss = base.loss(ctx)
    part, whole = HAND[base_name]
    assert ctx.parts["ce"].item() == pytest.approx(part(*_lc(kind)), abs=1e-6)
    assert loss.item() == pytest.approx(whole(*_lc(kind)), abs=1e-6)
    if base_name == "alp":
        assert ctx.parts["alp"].item() == pytest.approx(PAIR, abs=1e-6)
    if base_name == "trades":
        assert ctx.parts["trades_kl"].item() == pytest.approx(KL, abs=1e-6)


def test_soft_margin_is_torch_multilabel_soft_margin_with_one_hot_targets():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(5, 7, generator=g), torch.randint(0, 7, (5,), generator=g)
    t = torch.zeros(5, 7)
    t[torch.arange(5), y] = 1.0
    by_formula = -(t * torch.log(torch.sigmoid(z)) + (1 - t) * torch.log(torch.sigmoid(-z))).mean(1).mean()
    assert classification_loss("soft-margin", z, y).item() == pytest.approx(by_formula.item(), rel=1e-6)
    assert classification_loss("ce", z, y).item() == pytest.approx(
        torch.nn.functional.cross_entropy(z, y).item(), rel=1e-6)


def test_classification_loss_option_in_the_config():
    d = DefenseConfig.from_dict({"preset": "madry+aad", "madry": {"classification_loss": "soft-margin"}})
    assert build_objective(d).base.params.classification_loss == "soft-margin"
    assert build_objective(DefenseConfig.from_dict({**d.to_dict(), "preset": "madry"})).base.params \
        .classification_loss == "soft-margin"  # madry and madry+aad read the same section
    assert d.to_dict()["madry"] == {"classification_loss": "soft-margin"}
    for base in ("standard", "madry", "alp", "trades"):
        with pytest.raises(ConfigError, match=f"defense.{base}.classification_loss"):
            DefenseConfig(**{base: {"classification_loss": "hinge"}})
