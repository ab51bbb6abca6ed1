"""Raw feature matching (AFM Fig. 7 (b)/(c): fm-single, fm-multi) and the matched-layer option of afm/afm-cam."""

import copy
import math

import pytest
import torch
from torch import nn

from attnguard.attention import grad_cam
from attnguard.cli import main
from attnguard.defenses import REGULARIZERS, AdversaryConfig, Context, DefenseConfig, build_objective
from attnguard.defenses.afm import feature_distance
from attnguard.errors import ConfigError
from attnguard.models import create_model

ADV = AdversaryConfig(eps=0.3, step_size=0.1, steps=2)
L = math.log(3.0) ** 2


class _Scale(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return self.k * x


class _Tiny(nn.Module):
    """x -> pre (x2) -> feat (x3) -> flatten: the logits are 6x; feat is the 'attention layer'."""

    attention_layer = "feat"
    group_layers = ["pre", "feat"]
    arch = "tiny"

    def __init__(self):
        super().__init__()
        self.pre, self.feat = _Scale(2.0), _Scale(3.0)

    def forward(self, x):
        return self.feat(self.pre(x)).flatten(1)


def _tiny_case(reg_name, **params):
    """Two examples [2, 1, 1, 2]: x = ((0, ln 3), (1, 1)), x_adv = 0; the regularizer's terms and its context."""
    model = _Tiny()
    x = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]]).view(2, 1, 1, 2)
    reg = REGULARIZERS.build(reg_name, DefenseConfig(**{reg_name: params}).params(reg_name))
    ctx = Context(model, x, torch.tensor([1, 0]), torch.zeros_like(x), layers=reg.layers(model))
    return reg(ctx), ctx


# per example, the squared differences of the input sum to L and 2; eq. 4 divides by C*H*W = 2 and
# averages over the batch: (L/2 + 1)/2 on the input, times 4 after pre (x2), times 36 after feat (x6)
D_PRE, D_FEAT = 4 * (L / 2 + 1) / 2, 36 * (L / 2 + 1) / 2


@pytest.mark.parametrize("reg,params,part,want", [
    ("fm-single", {}, "fm_single", D_FEAT),  # default: the attention layer
    ("fm-single", {"layer": "pre"}, "fm_single", D_PRE),
    ("fm-multi", {}, "fm_multi", D_PRE + D_FEAT),  # default: the group layers, summed
    ("fm-multi", {"layers": ["feat"]}, "fm_multi", D_FEAT),
    ("fm-multi", {"layers": "pre,feat,pre"}, "fm_multi", D_PRE + D_FEAT),  # a comma string; repeats once
])
def test_raw_feature_distance_by_hand(reg, params, part, want):
    terms, ctx = _tiny_case(reg, lambda1=2.0, **params)
    assert ctx.parts[part].item() == pytest.approx(want, rel=1e-6)
    assert terms[part].item() == pytest.approx(2.0 * want, rel=1e-6)


def test_eq4_divides_by_the_channels_too():
    """eq. 4: ||.||^2 / (C_j H_j W_j) of the compared map; a raw map has C_j channels (unlike phi_CAM's one)."""
    a = torch.zeros(3, 2, 3, 4)
    b = a.clone()
    b[0] = 1.0  # example 0 differs by 1 in all 24 values, the others not at all
    assert feature_distance(b, a).item() == pytest.approx(1.0 / 3)


def test_zero_weight_returns_no_term_and_reads_nothing():
    terms, ctx = _tiny_case("fm-single", lambda1=0.0)
    assert terms == {} and "fm_single" not in ctx.parts


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    return create_model("lenet", width=0.25).train()


def _batch(n=4):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("preset,part,reached,not_reached", [
    ("fm-single", "fm_single", ("net.block1.0.weight", "net.block2.0.weight"), ("net.fc1.weight", "net.fc2.weight")),
    ("fm-multi", "fm_multi", ("net.block1.0.weight", "net.block2.0.weight"), ("net.fc1.weight", "net.fc2.weight")),
    ("afm", "afm", ("net.block1.0.weight", "net.fc2.weight"), ()),  # phi_CAM reads the classifier's gradient
])
def test_the_term_reaches_the_parameters_before_the_matched_layer(lenet, preset, part, reached, not_reached):
    model = copy.deepcopy(lenet)
    obj = build_objective(DefenseConfig(preset=preset), ADV)
    x, y = _batch()
    x_adv = obj.base.craft(model, x, y)
    ctx = Context(model, x, y, x_adv, layers=obj.layers(model))
    term = obj.regularizers[0](ctx)[part]
    named = dict(model.named_parameters())
    grads = torch.autograd.grad(term, list(named.values()), allow_unused=True)
    by_name = dict(zip(named, grads))
    for n in reached:
        assert by_name[n] is not None and by_name[n].abs().sum() > 0, n
    for n in not_reached:  # layers after the matched one cannot change the matched features
        assert by_name[n] is None or by_name[n].abs().sum() == 0, n


@pytest.mark.parametrize("preset", ["afm", "madry+afm"])  # fused batch and separate passes
def test_afm_layer_option_matches_grad_cam_of_that_layer(lenet, preset):
    model = copy.deepcopy(lenet)  # no BatchNorm: each half's map is its own
    obj = build_objective(DefenseConfig(preset=preset, afm={"layer": "net.block1"}), ADV)
    x, y = _batch()
    x_adv = obj.base.craft(model, x, y)
    ctx = Context(model, x, y, x_adv, fused_forward=obj.base.fuses_clean, layers=obj.layers(model),
                  need_clean=obj.base.needs_clean_logits)
    assert obj.layers(model) == ["net.block1"]
    phi_clean, phi_adv = obj.regularizers[0].features(ctx)
    assert phi_clean.requires_grad
    assert torch.allclose(phi_clean, grad_cam(model, "net.block1", x, y), rtol=1e-4, atol=1e-7)
    assert not torch.allclose(phi_clean, grad_cam(model, "net.block2", x, y), rtol=1e-2)  # not the default's
    assert torch.allclose(phi_adv, grad_cam(model, "net.block1", x_adv, y), rtol=1e-4, atol=1e-7)


def test_afm_default_layer_is_the_attention_layer_bitwise(lenet):
    x, y = _batch()
    losses = []
    for section in ({}, {"layer": lenet.attention_layer}):
        torch.manual_seed(7)
        loss, _ = build_objective(DefenseConfig(preset="afm", afm=section), ADV)(copy.deepcopy(lenet), x, y)
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])


def test_afm_cam_needs_a_feature_map(lenet):
    obj = build_objective(DefenseConfig(preset="afm-cam", **{"afm-cam": {"layer": "net.fc1"}}), ADV)
    x, y = _batch()
    with pytest.raises(ConfigError, match=r"defense.afm-cam.layer: layer 'net.fc1' outputs shape \(4, 256\)"):
        obj(copy.deepcopy(lenet), x, y)


def test_bad_layer_name_lists_the_model_layers(lenet):
    obj = build_objective(DefenseConfig(preset="fm-multi", **{"fm-multi": {"layers": ["net.block1", "net.blok2"]}}))
    with pytest.raises(ConfigError, match="defense.fm-multi.layers: model lenet has no layer 'net.blok2'. "
                                          "Did you mean 'net.block2'.* Its layers: net, net.block1, "):
        obj.layers(lenet)


@pytest.mark.parametrize("section,bad", [("afm", {"layer": 3}), ("fm-single", {"layer": " "}),
                                         ("fm-multi", {"layers": []}), ("fm-multi", {"layers": ["a", ""]})])
def test_layer_values_are_checked(section, bad):
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=f"defense.{section}.{key}"):
        DefenseConfig(**{section: bad})


def test_config_yaml_records_a_layer_only_when_set():
    d = DefenseConfig(preset="afm")
    assert d.to_dict()["afm"] == {"lambda1": 10.0, "lambda2": 0.01}  # as before the option existed
    assert d.to_dict()["fm-multi"] == {"lambda1": 10.0}
    s = DefenseConfig(preset="afm", afm={"layer": "net.block1"}, **{"fm-multi": {"layers": "net.block1,net.block2"}})
    out = s.to_dict()
    assert out["afm"]["layer"] == "net.block1" and out["fm-multi"]["layers"] == ["net.block1", "net.block2"]
    assert DefenseConfig.from_dict(out) == s != d


def test_a_bad_layer_exits_2_with_one_line(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "r"), "--defense", "afm", "--epochs", "1",
                 "--set", "train.max_steps=1", "--set", "train.progress=false", "--no-eval",
                 "--set", "defense.afm.layer=net.nope"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "defense.afm.layer: model lenet has no layer 'net.nope'" in err and "net.block1" in err


def test_listed_as_defenses(capsys):
    assert main(["list", "defenses"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"fm-single", "fm-multi"} <= set(names)
    from attnguard.defenses import canonical_name

    assert canonical_name("fm-single") == "alp+fm-single" and canonical_name("fm-multi") == "alp+fm-multi"


def test_bad_layer_name_is_refused_before_the_run_dir_is_written(tmp_path, capsys):
    from attnguard.cli import main

    out = tmp_path / "r"
    assert main(["train", "--out", str(out), "--defense", "fm-single", "--set", "defense.fm-single.layer=nope",
                 "--set", "train.progress=false", "--no-eval"]) == 2
    assert "nope" in capsys.readouterr().err and not (out / "config.yaml").exists()
