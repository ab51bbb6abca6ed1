"""Training objectives: hand-computed term values, gradient flow, presets, configs, smoke training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnguard.defenses import (BASES, PRESETS, REGULARIZERS, AdversaryConfig, Context, DefenseConfig,
                                build_objective, canonical_name, crafting_mode, normalize_defense_section, parse_preset,
                                unwrap)
from attnguard.defenses.aad import AADParams, attention_mask, masked_input, preservation_loss, rectification_loss
from attnguard.defenses.afm import feature_distance, norm_decay
from attnguard.defenses.alp import logit_pairing
from attnguard.defenses.madry import MadryParams
from attnguard.defenses.at import attention_pairing
from attnguard.defenses.trades import TradesKLLoss, trades_kl
from attnguard.errors import ConfigError, UnknownNameError
from attnguard.models import NormalizedModel, create_model

LN3 = math.log(3.0)
FAST = AdversaryConfig(eps=0.1, step_size=0.05, steps=2)


# --------------------------------------------------------------------------------------------
# A tiny model whose every number can be worked out by hand.
#   conv 1x1, 1 -> 2 channels, weights (1, 2), bias (0, -0.5); ReLU  => A0 = x, A1 = relu(2x - 0.5)
#   GAP, then fc with W = [[1, -1], [-1, 1]], no bias              => z0 = mean(A0) - mean(A1), z1 = -z0
#   true-class (y = 1) CAM = relu(-A0 + A1) / (h w)  (closed form; the gradient path gives the same)
# --------------------------------------------------------------------------------------------
class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, -0.5]))
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def tiny_model(closed_form: bool = True) -> NormalizedModel:
    return NormalizedModel(_TinyNet(), mean=(0.0,), std=(1.0,), arch="tiny", num_classes=2, input_size=(1, 2, 2),
                           attention_layer="net.act", group_layers=["net.act"],
                           classifier="net.fc" if closed_form else None)


# x:     [[1, 0], [0.5, 0]]  A0 = x, A1 = [[1.5, 0], [0.5, 0]]; GAP 0.375, 0.5 -> z = (-0.125, 0.125)
#        CAM_y=1 = relu([[0.5, 0], [0, 0]]) / 4 = [[0.125, 0], [0, 0]]
# x_adv: [[0.5, 0], [0.5, 0]] A0 = A1 = [[0.5, 0], [0.5, 0]] -> z = (0, 0), CAM = 0 everywhere
TINY_X = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])
TINY_XADV = torch.tensor([[[[0.5, 0.0], [0.5, 0.0]]]])
TINY_Y = torch.tensor([1])


def tiny_context(preset="madry", closed_form=True, **sections):
    cfg = DefenseConfig(preset=preset, **sections)
    obj = build_objective(cfg, FAST)
    model = tiny_model(closed_form)
    ctx = Context(model, TINY_X, TINY_Y, TINY_XADV, fused_forward=cfg.fused_forward, layers=obj.layers(model),
                  need_clean=True)
    return obj, model, ctx


# ---------------------------------------------------------------- hand-computed term values
def test_logit_pairing_by_hand():
    clean = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    adv = torch.tensor([[0.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
    # squared differences: 1, 0, 4 and 1, 1, 1 (sum 8); the mean over all B*K = 6 entries is 8/6,
    # not the mean over the batch of the per-example sums (4, K = 3 times stronger)
    assert logit_pairing(clean, adv).item() == pytest.approx(8.0 / 6.0)


def test_alp_base_by_hand():
    obj, _, ctx = tiny_context("alp", alp={"lambda": 0.5})
    # z(x) = (-0.125, 0.125): CE_clean = log(1 + e^-0.25); z(x_adv) = (0, 0): CE_adv = log 2
    # ALP = mean over the B*K = 2 entries of ((-0.125 - 0)^2, (0.125 - 0)^2) = 0.015625
    ce = 0.5 * (math.log(1 + math.exp(-0.25)) + math.log(2.0))
    loss = obj.base.loss(ctx)
    assert ctx.parts["ce"].item() == pytest.approx(ce, abs=1e-6)
    assert ctx.parts["alp"].item() == pytest.approx(0.015625, abs=1e-7)
    assert loss.item() == pytest.approx(ce + 0.5 * 0.015625, abs=1e-6)


def test_trades_kl_by_hand():
    # pair 1: p = softmax(0, ln 3) = (1/4, 3/4), q = softmax(0, 0) = (1/2, 1/2)
    #         KL(p || q) = 1/4 ln(1/2) + 3/4 ln(3/2);  pair 2: identical logits, KL = 0
    # batchmean: (KL1 + 0) / 2
    clean = torch.tensor([[0.0, LN3], [1.0, -1.0]])
    adv = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    kl1 = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert trades_kl(clean, adv).item() == pytest.approx(kl1 / 2, abs=1e-6)
    # the attack's per-example KL holds p fixed (computed in setup, no gradient)
    model = nn.Identity()
    loss = TradesKLLoss()
    state = loss.setup(model, clean, None)
    assert not state.requires_grad
    per_example, _ = loss(model, adv, None, state)
    assert per_example.tolist() == pytest.approx([kl1, 0.0], abs=1e-6)


def test_trades_base_by_hand():
    obj, _, ctx = tiny_context("trades", trades={"beta": 6.0})
    # p(x) = (1 - s, s) with s = sigmoid(0.25), q = (1/2, 1/2); CE = -log s
    s = 1 / (1 + math.exp(-0.25))
    kl = (1 - s) * math.log((1 - s) / 0.5) + s * math.log(s / 0.5)
    loss = obj.base.loss(ctx)
    assert ctx.parts["trades_kl"].item() == pytest.approx(kl, abs=1e-6)
    assert loss.item() == pytest.approx(-math.log(s) + 6.0 * kl, abs=1e-6)


def test_aad_rectification_function_by_hand():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    pm = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    pa = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    pam = torch.tensor([[0.5, 0.5], [0.8, 0.2]])
    # clean: ||(1,-1)|| = sqrt 2 and 0 -> mean sqrt(2)/2; adv: 0 and ||(-0.6, 0.6)|| = 0.6 sqrt 2 -> mean 0.3 sqrt 2
    expected = -(math.sqrt(2) / 2 + 0.3 * math.sqrt(2))
    assert rectification_loss(p, pm, pa, pam).item() == pytest.approx(expected, abs=1e-6)


def test_aad_preservation_function_by_hand():
    g = torch.tensor([[[1.0, 2.0], [0.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]])
    ga = torch.tensor([[[0.0, 2.0], [1.0, 0.0]], [[0.0, 3.0], [0.0, 0.0]]])
    # |diff| sums: 1 + 0 + 1 + 0.5 = 2.5 and 3; mean 2.75
    assert preservation_loss(g, ga).item() == pytest.approx(2.75)


@pytest.mark.parametrize("closed_form", [True, False])
def test_aad_on_tiny_model_by_hand(closed_form):
    obj, model, ctx = tiny_context("madry+aad", closed_form=closed_form, aad={"alpha": 1.0, "beta": 1.0})
    g, ga = ctx.cam()
    assert g[0].flatten().tolist() == pytest.approx([0.125, 0.0, 0.0, 0.0])
    assert ga[0].flatten().tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0])
    out = obj.regularizers[0](ctx)
    # rectification: mask(x) = g >= mean(g) = 0.03125 -> top-left only; x^m = [[0, 0], [0.5, 0]]
    #   A0 = [[0, 0], [0.5, 0]], A1 = relu(2 x^m - 0.5) = [[0, 0], [0.5, 0]] -> z = (0, 0), p = (1/2, 1/2)
    #   p(x) = (1 - s, s), s = sigmoid(0.25): ||p(x) - p(x^m)|| = sqrt(2) (s - 1/2)
    #   g(x_adv) = 0 -> every cell >= its mean 0 -> x_adv^m = 0 -> z = (0, 0) = z(x_adv): distance 0
    s = 1 / (1 + math.exp(-0.25))
    assert ctx.parts["aad_rect"].item() == pytest.approx(-math.sqrt(2) * (s - 0.5), abs=1e-6)
    # preservation: ||g(x) - g(x_adv)||_1 = 0.125
    assert ctx.parts["aad_pres"].item() == pytest.approx(0.125, abs=1e-7)
    assert out["aad_rect"].item() == pytest.approx(-math.sqrt(2) * (s - 0.5), abs=1e-6)


@pytest.mark.parametrize("closed_form", [True, False])
def test_afm_on_tiny_model_by_hand(closed_form):
    obj, model, ctx = tiny_context("afm", closed_form=closed_form, afm={"lambda1": 10.0, "lambda2": 0.01})
    out = obj.regularizers[0](ctx)
    # D = ||phi(x) - phi(x_adv)||^2 / (C_j H W) with C_j = 1 (phi_CAM is one h x w map) = 0.125^2 / (2 * 2)
    assert ctx.parts["afm"].item() == pytest.approx(0.015625 / 4, abs=1e-9)
    # L_norm = ||phi(x)|| + ||phi(x_adv)|| = 0.125 + 0
    assert ctx.parts["afm_norm"].item() == pytest.approx(0.125, abs=1e-7)
    assert out["afm"].item() == pytest.approx(10.0 * 0.015625 / 4, abs=1e-8)
    assert out["afm_norm"].item() == pytest.approx(0.01 * 0.125, abs=1e-8)


def test_afm_functions_by_hand():
    phi = torch.tensor([[[3.0, 0.0]], [[0.0, 0.0]]])
    phia = torch.tensor([[[0.0, 4.0]], [[1.0, 0.0]]])
    # squared distances 9 + 16 = 25 and 1, mean 13, over C H W = 4 -> 3.25
    assert feature_distance(phi, phia, 4).item() == pytest.approx(3.25)
    # norms: (3 + 4) and (0 + 1), mean 4
    assert norm_decay(phi, phia).item() == pytest.approx(4.0)


def test_attention_pairing_by_hand():
    # layer 1 (1 channel, 1x2): Q_o = (1, 0) -> (1, 0); Q_adv = (0, 4) -> (0, 1); ||(-1, 1)||_2 = sqrt 2
    a1, a1_adv = torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.0, 2.0]]]])
    # layer 2 (2 channels): Q_o = (2, 2) -> (1, 1)/sqrt 2; Q_adv = (2, 0) -> (1, 0)
    #   ||(1 - 1/sqrt 2, -1/sqrt 2)||_2 = sqrt(2 - sqrt 2)
    a2 = torch.tensor([[[[1.0, 1.0]], [[1.0, 1.0]]]])
    a2_adv = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])
    got = attention_pairing([a1, a2], [a1_adv, a2_adv], power=2.0, p=2.0)
    assert got.item() == pytest.approx(math.sqrt(2) + math.sqrt(2 - math.sqrt(2)), abs=1e-6)
    # p = 1: |(-1, 1)|_1 = 2 and (1 - 1/sqrt 2) + 1/sqrt 2 = 1
    assert attention_pairing([a1, a2], [a1_adv, a2_adv], p=1.0).item() == pytest.approx(3.0, abs=1e-6)


def test_at_regularizer_on_tiny_model_by_hand():
    obj, model, ctx = tiny_context("at", at={"beta": 2.0})
    out = obj.regularizers[0](ctx)
    # group layer net.act: x -> A0 = [[1,0],[.5,0]], A1 = [[1.5,0],[.5,0]]: Q = (3.25, 0, 0.5, 0), |Q| = sqrt(10.8125)
    #                  x_adv -> A0 = A1 = [[.5,0],[.5,0]]:           Q = (0.5, 0, 0.5, 0) -> (1, 0, 1, 0)/sqrt 2
    q = torch.tensor([3.25, 0.0, 0.5, 0.0]) / math.sqrt(10.8125)
    qa = torch.tensor([1.0, 0.0, 1.0, 0.0]) / math.sqrt(2)
    expected = (qa - q).norm().item()
    assert ctx.parts["at"].item() == pytest.approx(expected, abs=1e-6)
    assert out["at"].item() == pytest.approx(2.0 * expected, abs=1e-6)


# ---------------------------------------------------------------- gradients reach the convolutions
def _single_term(model, preset, key, sections, seed=0):
    torch.manual_seed(seed)
    x = torch.rand(4, *model.input_size)
    y = torch.arange(4) % 10
    cfg = DefenseConfig(preset=preset, **sections)
    obj = build_objective(cfg, FAST)
    x_adv = obj.base.craft(model, x, y)
    ctx = Context(model, x, y, x_adv, fused_forward=cfg.fused_forward, layers=obj.layers(model), need_clean=True)
    (reg,) = obj.regularizers
    return reg(ctx)[key]


ZERO = dict(aad={"alpha": 0.0, "beta": 0.0}, at={"beta": 0.0}, afm={"lambda1": 0.0, "lambda2": 0.0})
TERMS = [
    ("madry+aad", "aad_rect", {"aad": {"alpha": 1.0, "beta": 0.0}}),
    ("madry+aad", "aad_pres", {"aad": {"alpha": 0.0, "beta": 1.0}}),
    ("madry+at", "at", {"at": {"beta": 1.0}}),
    ("afm", "afm", {"afm": {"lambda1": 1.0, "lambda2": 0.0}}),
    ("afm", "afm_norm", {"afm": {"lambda1": 0.0, "lambda2": 1.0}}),
]


@pytest.mark.parametrize("arch", ["lenet", "resnet9"])
@pytest.mark.parametrize("preset,key,sections", TERMS, ids=[t[1] for t in TERMS])
def test_attention_terms_reach_conv_weights(arch, preset, key, sections):
    model = create_model(arch, width=0.25 if arch == "lenet" else 0.125).train()
    assert (model.classifier is None) == (arch == "lenet")  # one model with, one without the closed form
    term = _single_term(model, preset, key, {**ZERO, **sections})
    assert term.requires_grad and torch.isfinite(term)
    term.backward()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    first = convs[0].weight.grad
    assert first is not None and first.abs().sum() > 0, "no gradient reached the first convolution"
    if key in ("aad_pres", "afm", "afm_norm") and arch == "lenet":
        # the Grad-CAM weights alpha = d y_c / d A depend on the layers after the attention layer:
        # only create_graph=True lets the term train them
        fc2 = model.net.fc2.weight.grad
        assert fc2 is not None and fc2.abs().sum() > 0, "Grad-CAM derivative was detached (create_graph)"


def test_aad_mask_carries_no_gradient():
    cam = torch.rand(2, 3, 3, requires_grad=True)
    mask = attention_mask(cam, (6, 6))
    assert not mask.requires_grad
    assert mask.shape == (2, 1, 6, 6)
    # nearest upsampling: each cell becomes a 2x2 block; per-map mean threshold
    expected = (cam.detach() >= cam.detach().mean((1, 2), keepdim=True)).float()
    assert torch.equal(mask[:, 0, ::2, ::2], expected) and torch.equal(mask[:, 0, 1::2, 1::2], expected)
    x = torch.rand(2, 3, 6, 6, requires_grad=True)
    xm = masked_input(x, cam)
    (gx,) = torch.autograd.grad(xm.sum(), x)
    assert torch.equal(gx, (1 - mask).expand_as(x))  # d x^m / d x = 1 - Att(x), Att a constant
    assert not masked_input(x.detach(), cam).requires_grad  # no path to the CAM
    # fixed kappa
    assert torch.equal(attention_mask(torch.tensor([[[0.2, 0.6]]]), (1, 2), kappa=0.5)[0, 0],
                       torch.tensor([[0.0, 1.0]]))


# ---------------------------------------------------------------- objectives match their formulas
def _batch(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("preset", ["madry", "alp", "trades"])
def test_base_objectives_match_formulas(preset):
    torch.manual_seed(1)
    model = create_model("lenet", width=0.25).train()
    x, y = _batch()
    cfg = DefenseConfig(preset=preset, alp={"lambda": 0.7}, trades={"beta": 3.0})
    obj = build_objective(cfg, FAST)
    torch.manual_seed(5)
    loss, parts = obj(model, x, y)
    torch.manual_seed(5)  # the adversary draws from the global RNG: the same seed gives the same x_adv
    with crafting_mode(model, "eval"):
        x_adv = obj.attack(model, x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    zc, za = model(x), model(x_adv)
    if preset == "madry":
        expected = F.cross_entropy(za, y)
    elif preset == "alp":
        expected = 0.5 * (F.cross_entropy(zc, y) + F.cross_entropy(za, y)) + 0.7 * ((zc - za) ** 2).mean()
    else:
        kl = (F.softmax(zc, 1) * (F.log_softmax(zc, 1) - F.log_softmax(za, 1))).sum(1).mean()
        expected = F.cross_entropy(zc, y) + 3.0 * kl
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert parts["loss"].item() == pytest.approx(loss.item())
    for v in parts.values():
        assert v.dim() == 0 and not v.requires_grad


def test_trades_adversary_increases_kl():
    torch.manual_seed(0)
    model = create_model("lenet", width=0.25).eval()
    x, y = _batch()
    obj = build_objective(DefenseConfig(preset="trades"), AdversaryConfig(eps=0.3, step_size=0.05, steps=5))
    x_adv = obj.attack(model, x, y)
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        start = trades_kl(model(x), model((x + 0.001 * torch.randn_like(x)).clamp(0, 1)))
        end = trades_kl(model(x), model(x_adv))
    assert end > 10 * start


# ---------------------------------------------------------------- presets
@pytest.mark.parametrize("name,canonical", [
    ("standard", "standard"), ("madry", "madry"), ("madry+aad", "madry+aad"), ("alp", "alp"),
    ("alp+aad", "alp+aad"), ("at", "madry+at"), ("at+alp", "alp+at"), ("afm", "alp+afm"),
    ("trades", "trades"), ("trades+aad", "trades+aad"), ("madry+at+aad", "madry+aad+at"),
    ("aad+alp", "alp+aad"), ("aad", "madry+aad"), (" ALP + AT ", "alp+at"), ("trades+afm", "trades+afm"),
    ("at+afm", "alp+afm+at"),
])
def test_preset_spellings(name, canonical):
    assert canonical_name(name) == canonical
    base, regs = parse_preset(name)
    assert base in BASES and all(r in REGULARIZERS for r in regs)


def test_every_preset_is_described_and_builds():
    assert {"standard", "madry", "madry+aad", "alp", "alp+aad", "at", "at+alp", "afm", "trades", "trades+aad"} \
        <= set(PRESETS)
    for name, desc in PRESETS.items():
        assert desc and "\n" not in desc
        obj = build_objective(DefenseConfig(preset=name), FAST)
        assert obj.name == canonical_name(name)
        assert (obj.attack is None) == (name == "standard")
    assert [r.name for r in build_objective(DefenseConfig(preset="at+alp")).regularizers] == ["at"]
    assert build_objective(DefenseConfig(preset="afm")).base.name == "alp"


@pytest.mark.parametrize("bad", ["madry+foo", "pgd", "alp+aad+atn"])
def test_unknown_preset_lists_valid_parts(bad):
    with pytest.raises(UnknownNameError) as err:
        canonical_name(bad)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("madry", "alp", "trades", "standard", "aad", "at", "afm", "at+alp", "trades+aad"):
        assert part in msg
    with pytest.raises(UnknownNameError):  # the config validates its preset too
        DefenseConfig(preset=bad)


@pytest.mark.parametrize("bad,needle", [
    ("standard+aad", "pair clean and adversarial"), ("madry+alp", "bases"), ("madry+aad+aad", "twice"),
    ("", "required"), ("madry+", "empty"),
])
def test_bad_preset_combinations(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_preset(bad)


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize("kwargs,needle", [
    (dict(alp={"lambda": -1.0}), "defense.alp.lambda"), (dict(trades={"beta": -0.1}), "defense.trades.beta"),
    (dict(aad={"alpha": -1}), "defense.aad.alpha"), (dict(afm={"lambda2": -1e-3}), "defense.afm.lambda2"),
    (dict(aad={"kappa": "median"}), "kappa"), (dict(aad={"kappa": True}), "kappa"),
    (dict(aad={"kappa": None}), "kappa"), (dict(at={"p": 0.5}), "defense.at.p"),
    (dict(at={"power": 0}), "defense.at.power"), (dict(fused_forward="yes"), "fused_forward"),
    (dict(aad={"alpha": "much"}), "defense.aad.alpha"), (dict(aad=3), "mapping"),
    (dict(aad_alpha=-1), "defense.aad.alpha"),  # a flat alias is checked as its section key
])
def test_defense_config_rejects(kwargs, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        DefenseConfig(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(eps=1.5), r"\[0.0, 1.0\]"), (dict(eps=-0.1), "eps"), (dict(steps=0), "steps"), (dict(steps=2.5), "whole"),
    (dict(norm="l1"), "linf, l2"), (dict(bn_mode="frozen"), "eval, train"), (dict(step_size=-1.0), "step_size"),
])
def test_adversary_config_rejects(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        AdversaryConfig(**kwargs)


def test_config_defaults_and_from_dict():
    d, a = DefenseConfig(), AdversaryConfig()
    assert (d.preset, d.fused_forward) == ("madry", True)
    assert (d.alp.weight, d.trades.beta, d.aad.alpha, d.aad.beta, d.aad.kappa) == (0.5, 6.0, 0.01, 0.01, "mean")
    assert (d.at.beta, d.at.power, d.at.p, d.afm.lambda1, d.afm.lambda2) == (1.0, 2.0, 2.0, 10.0, 0.01)
    assert d.params("aad") is d.aad and d.params("madry") == MadryParams()
    assert {d.params(b).classification_loss for b in ("standard", "madry", "alp", "trades")} == {"ce"}
    assert (a.eps, a.step_size, a.steps, a.random_start, a.norm, a.bn_mode) == (0.3, 0.01, 40, True, "linf", "eval")
    assert DefenseConfig.from_dict({"preset": "at+alp", "aad": {"kappa": 0.2}}).aad.kappa == 0.2
    assert DefenseConfig.from_dict({"aad": {"alpha": "1e-3"}}).aad.alpha == 0.001  # YAML 1.1 reads 1e-3 as text
    assert AdversaryConfig.from_dict(a.to_dict()) == a
    assert AdversaryConfig(eps=2.0, norm="l2").eps == 2.0  # L2 radii are not capped at 1
    with pytest.raises(ConfigError, match="AdversaryConfig|mapping"):
        AdversaryConfig.from_dict([1, 2])


def test_config_sections_in_the_old_order():
    """config.yaml keeps every parameter, in the order of the flat keys it replaces; the dict reads back equal."""
    d = DefenseConfig(preset="alp+aad", alp={"lambda": 0.7}, aad=AADParams(alpha=0.2, kappa=0.5))
    out = d.to_dict()
    # (regularizers registered after afm add their sections before fused_forward)
    old = ["preset", "standard", "madry", "alp", "trades", "aad", "at", "afm"]
    assert [k for k in out if k in old] == old  # bases registered later (stepll-at, ensemble) sit in between
    assert list(out)[-1] == "fused_forward"
    assert out["alp"] == {"lambda": 0.7, **CE} and out["aad"] == {"alpha": 0.2, "beta": 0.01, "kappa": 0.5}
    assert out["standard"] == out["madry"] == CE  # L_c is recorded for every base
    assert [k for section in ("alp", "trades", "aad", "at", "afm") for k in out[section]
            if k != "classification_loss"] == \
        ["lambda", "beta", "alpha", "beta", "kappa", "beta", "power", "p", "lambda1", "lambda2"]
    assert DefenseConfig.from_dict(out) == d
    assert DefenseConfig.from_dict(out) != DefenseConfig.from_dict({**out, "aad": {"alpha": 0.3}})


FLAT = {"preset": "alp+aad+at", "alp_lambda": 0.7, "trades_beta": 3.0, "aad_alpha": 0.2, "aad_beta": 0.3,
        "aad_kappa": 0.4, "at_beta": 2.0, "at_power": 3.0, "at_p": 1.0, "afm_lambda1": 5.0, "afm_lambda2": 0.5,
        "fused_forward": False}
NESTED = {"preset": "alp+aad+at", "alp": {"lambda": 0.7}, "trades": {"beta": 3.0},
          "aad": {"alpha": 0.2, "beta": 0.3, "kappa": 0.4}, "at": {"beta": 2.0, "power": 3.0, "p": 1.0},
          "afm": {"lambda1": 5.0, "lambda2": 0.5}, "fused_forward": False}
CE = {"classification_loss": "ce"}
# NESTED as to_dict writes it: every base's section records its (default) classification loss
NESTED_OUT = {"preset": "alp+aad+at", "standard": CE, "madry": CE, "alp": {"lambda": 0.7, **CE},
              "trades": {"beta": 3.0, **CE}, **{k: NESTED[k] for k in ("aad", "at", "afm", "fused_forward")}}


def test_flat_keys_are_aliases_of_the_sections():
    assert normalize_defense_section(FLAT) == NESTED
    assert normalize_defense_section(NESTED) == NESTED
    old, new = DefenseConfig.from_dict(FLAT), DefenseConfig.from_dict(NESTED)
    assert old == new and {k: v for k, v in old.to_dict().items() if k in NESTED_OUT} == NESTED_OUT
    assert (old.alp.weight, old.aad.kappa, old.at.p, old.afm.lambda2) == (0.7, 0.4, 1.0, 0.5)
    assert DefenseConfig(**FLAT) == new  # keywords too
    # an alias next to the section it belongs to fills that section in
    assert DefenseConfig.from_dict({"aad_beta": 0.5, "aad": {"alpha": 0.2}}).aad == AADParams(alpha=0.2, beta=0.5)


@pytest.mark.parametrize("data", [{"aad_alpha": 0.1, "aad": {"alpha": 0.2}}, {"alp_lambda": 1.0, "alp": 3}])
def test_alias_and_its_key_together_are_refused(data):
    with pytest.raises(ConfigError, match="old spelling") as err:
        normalize_defense_section(data)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="old spelling"):
        DefenseConfig.from_dict(data)


@pytest.mark.parametrize("data,needle", [
    ({"alp_lamda": 1.0}, "Did you mean 'alp_lambda'"), ({"aad": {"gamma": 1}}, "Valid keys in defense.aad: alpha"),
    ({"alp": {"weight": 1}}, "lambda"), ({"toy": {}}, "Valid keys in defense: preset"),
])
def test_unknown_defense_keys_list_the_valid_ones(data, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        DefenseConfig.from_dict(data)
    assert "\n" not in str(err.value)


def test_default_base_comes_from_the_regularizers():
    assert REGULARIZERS.get("afm").default_base == "alp"
    assert {REGULARIZERS.get(n).default_base for n in ("aad", "at")} == {"madry"}
    assert parse_preset("afm")[0] == "alp" and parse_preset("at+afm")[0] == "alp" and parse_preset("aad")[0] == "madry"


# ---------------------------------------------------------------- forward-pass plumbing
@pytest.mark.parametrize("preset", ["madry+aad", "alp+aad+at", "afm", "trades+aad", "alp"])
def test_fused_and_unfused_forward_agree(preset):
    torch.manual_seed(0)
    model = create_model("lenet", width=0.25).train()  # no BatchNorm: mixing the batch changes nothing
    x, y = _batch()
    losses = []
    for fused in (True, False):
        obj = build_objective(DefenseConfig(preset=preset, fused_forward=fused, aad={"alpha": 1.0, "beta": 1.0},
                                            afm={"lambda2": 1.0}), FAST)
        torch.manual_seed(3)
        loss, parts = obj(model, x, y)
        losses.append((loss, parts))
    (l1, p1), (l2, p2) = losses
    assert l1.item() == pytest.approx(l2.item(), rel=1e-5, abs=1e-6)
    assert p1.keys() == p2.keys()
    for k in p1:
        assert p1[k].item() == pytest.approx(p2[k].item(), rel=1e-4, abs=1e-6), k


class _CountingWrapper(nn.Module):
    """Stands in for DistributedDataParallel: holds the model as .module and counts its forwards."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.module(x)


@pytest.mark.parametrize("preset,fused", [("alp+aad+at", True), ("afm", True), ("madry", True), ("trades+aad", False),
                                          ("madry+aad", True)])
def test_wrapper_runs_exactly_one_forward(preset, fused):
    torch.manual_seed(0)
    inner = create_model("lenet", width=0.25).train()
    wrapped = _CountingWrapper(inner)
    assert unwrap(wrapped) is inner and unwrap(inner) is inner
    x, y = _batch()
    obj = build_objective(DefenseConfig(preset=preset, fused_forward=fused), FAST)
    torch.manual_seed(1)
    loss_w, _ = obj(wrapped, x, y)
    torch.manual_seed(1)
    loss_i, _ = obj(inner, x, y)
    assert wrapped.calls == 1
    assert loss_w.item() == pytest.approx(loss_i.item(), rel=1e-6)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_real_ddp_wrapper_matches_plain_model(tmp_path):
    """One-process gloo DDP: the Grad-CAM double backward and the extra forwards work under DDP."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        # madry+aad: the adversarial pass through DDP, the regularizer's clean pass through the inner model
        for arch, preset in (("lenet", "alp+aad+at"), ("resnet9", "afm"), ("lenet", "madry+aad")):
            torch.manual_seed(0)
            model = create_model(arch, width=0.25 if arch == "lenet" else 0.125).eval()  # eval: BN deterministic
            x, y = torch.rand(4, *model.input_size), torch.arange(4)
            obj = build_objective(DefenseConfig(preset=preset), FAST)
            torch.manual_seed(1)
            loss, _ = obj(model, x, y)
            loss.backward()
            plain = [p.grad.clone() for p in model.parameters()]
            model.zero_grad(set_to_none=True)
            wrapped = DDP(model)
            torch.manual_seed(1)
            loss_ddp, _ = obj(wrapped, x, y)
            loss_ddp.backward()
            assert loss_ddp.item() == pytest.approx(loss.item(), rel=1e-6)
            for a, p in zip(plain, model.parameters()):
                assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-6)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("preset", ["standard", "madry+aad", "alp+at", "afm", "trades+aad"])
def test_objective_leaves_no_grad_side_effects(preset):
    torch.manual_seed(0)
    model = create_model("lenet", width=0.25).train()
    x, y = _batch()
    obj = build_objective(DefenseConfig(preset=preset), FAST)
    loss, _ = obj(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert x.grad is None and not x.requires_grad
    # with gradients already accumulated, the call leaves them exactly as they were
    loss.backward()
    before = [p.grad.clone() for p in model.parameters()]
    obj(model, x, y)
    assert all(torch.equal(b, p.grad) for b, p in zip(before, model.parameters()))


def test_bn_mode_eval_crafts_in_eval_and_restores_modes():
    torch.manual_seed(0)
    model = create_model("resnet9", width=0.125).train()
    frozen = model.net.prep  # a submodule deliberately left in eval mode must stay so
    frozen.eval()
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    bn = model.net.layer1[0][1]
    seen = []
    hook = bn.register_forward_hook(lambda m, i, o: seen.append(m.training))
    stats = bn.running_mean.clone()

    obj = build_objective(DefenseConfig(preset="madry"), AdversaryConfig(eps=0.03, step_size=0.01, steps=2))
    obj.base.craft(model, x, y)
    assert seen and not any(seen)  # every crafting forward ran in eval mode
    assert torch.equal(bn.running_mean, stats)  # BN running statistics untouched by the adversary
    assert model.training and bn.training and not frozen.training and not frozen[1].training

    seen.clear()
    obj = build_objective(DefenseConfig(preset="madry"),
                          AdversaryConfig(eps=0.03, step_size=0.01, steps=2, bn_mode="train"))
    obj.base.craft(model, x, y)
    assert seen and all(seen)
    assert not torch.equal(bn.running_mean, stats)
    hook.remove()


def test_aad_masked_forward_keeps_bn_running_statistics():
    torch.manual_seed(0)
    model = create_model("resnet9", width=0.125).train()
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    cfg = DefenseConfig(preset="madry+aad", aad={"alpha": 1.0})
    obj = build_objective(cfg, AdversaryConfig(eps=0.03, step_size=0.01, steps=1))
    x_adv = obj.base.craft(model, x, y)
    ctx = Context(model, x, y, x_adv, fused_forward=cfg.fused_forward, layers=obj.layers(model))
    bn = model.net.layer1[0][1]
    stats, n = bn.running_mean.clone(), bn.num_batches_tracked.clone()
    out = obj.regularizers[0](ctx)
    assert torch.equal(bn.running_mean, stats) and torch.equal(bn.num_batches_tracked, n)
    assert bn.track_running_stats
    out["aad_rect"].backward()  # no in-place modification of saved tensors


# ---------------------------------------------------------------- smoke training
@pytest.mark.parametrize("preset", list(PRESETS))
def test_three_sgd_steps_per_preset(preset):
    torch.manual_seed(0)
    model = create_model("lenet", width=0.25).train()
    x, y = _batch(n=8)
    obj = build_objective(DefenseConfig(preset=preset), FAST)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        loss, parts = obj(model, x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert all(torch.isfinite(v) for v in parts.values()), parts
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[1:]) < losses[0] + 0.05  # training does not blow up on a fixed batch


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_objective_has_no_host_sync_on_cuda():
    model = create_model("resnet9", width=0.125).cuda().train()
    x, y = torch.rand(8, 3, 32, 32, device="cuda"), torch.arange(8, device="cuda") % 10
    for preset in ("alp+aad+at", "afm", "trades+aad"):
        obj = build_objective(DefenseConfig(preset=preset), AdversaryConfig(eps=8 / 255, step_size=2 / 255, steps=2))
        obj(model, x, y)  # warm-up (lazy CUDA init may sync)
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss, parts = obj(model, x, y)
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(loss).item()
