"""A new regularizer is one class with its Params dataclass plus one registry call; old flat configs still load.

The toy regularizer below lives only in this file: registering it must be all it takes for presets,
``DefenseConfig``, ``resolve_config`` (YAML and ``--set``) and ``config.yaml`` to know it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import yaml

from attnguard.train.overrides import parse_set as _parse_set
from attnguard.defenses import REGULARIZERS, AdversaryConfig, DefenseConfig, Regularizer, build_objective
from attnguard.defenses.params import check_weight
from attnguard.errors import ConfigError, UnknownNameError
from attnguard.models import create_model
from attnguard.train.config import dump_config, resolve_config

FAST = AdversaryConfig(eps=0.1, step_size=0.05, steps=2)


@dataclass
class ToyParams:
    """The ``defense.toy`` section."""

    weight: float = 1.0

    def __post_init__(self):
        self.weight = check_weight("defense.toy.weight", self.weight)


class Toy(Regularizer):
    """``weight * mean_{b,k} (f(x) - f(x_adv))^2``: a logit pairing averaged over classes too. Part: ``toy``."""

    name = "toy"
    Params = ToyParams

    def __call__(self, ctx):
        d = (ctx.logits_clean.float() - ctx.logits_adv.float()).pow(2).mean()
        ctx.report("toy", d)
        return {"toy": self.params.weight * d}


@pytest.fixture
def toy():
    REGULARIZERS.add("toy", Toy, "toy: weight * mean squared difference of clean and adversarial logits")
    try:
        yield
    finally:
        REGULARIZERS.remove("toy")


def _one_step(objective):
    torch.manual_seed(0)
    model = create_model("lenet", width=0.25).train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt.zero_grad(set_to_none=True)
    loss, parts = objective(model, x, y)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    opt.step()
    return loss, parts, grads


def test_toy_regularizer_builds_and_trains(toy):
    direct = build_objective(DefenseConfig(preset="madry+toy", toy={"weight": 0.5}), FAST)
    cfg = resolve_config(None, {"defense": {"preset": "madry+toy", "toy": {"weight": 0.5}}})
    assert cfg.defense.toy == ToyParams(weight=0.5) and cfg.defense.params("toy").weight == 0.5
    resolved = build_objective(cfg.defense, FAST)
    for obj in (direct, resolved):
        assert obj.name == "madry+toy" and obj.base.name == "madry"
        (reg,) = obj.regularizers
        assert isinstance(reg, Toy) and reg.params.weight == 0.5
    assert build_objective(DefenseConfig(preset="toy"), FAST).name == "madry+toy"  # the default base

    loss, parts, grads = _one_step(resolved)
    assert math.isfinite(loss.item()) and "toy" in parts and parts["toy"].item() > 0
    assert loss.item() == pytest.approx(parts["ce"].item() + 0.5 * parts["toy"].item(), rel=1e-6)
    assert all(g is not None for g in grads) and all(torch.isfinite(g).all() for g in grads)
    assert grads[0].abs().sum() > 0  # the first convolution learns


def test_toy_section_is_recorded_and_read_back(toy, tmp_path):
    cfg = resolve_config(None, {"defense": {"preset": "madry+toy", "toy": {"weight": 0.25}}})
    text = dump_config(cfg)
    assert yaml.safe_load(text)["defense"]["toy"] == {"weight": 0.25}
    (tmp_path / "config.yaml").write_text(text)
    assert resolve_config(str(tmp_path / "config.yaml")) == cfg
    assert resolve_config(None, _parse_set(["defense.preset=madry+toy", "defense.toy.weight=0.25"])) == cfg
    with pytest.raises(ConfigError, match="defense.toy.weight"):
        DefenseConfig(preset="madry+toy", toy={"weight": -1})
    with pytest.raises(ConfigError, match="Valid keys in defense.toy: weight"):
        DefenseConfig.from_dict({"toy": {"wieght": 1}})


def test_registry_is_restored_after_the_toy():
    assert "toy" not in REGULARIZERS
    with pytest.raises(UnknownNameError):
        DefenseConfig(preset="madry+toy")
    assert "toy" not in DefenseConfig().to_dict()


# Every key an old run's config.yaml has under defense:, with values that differ from the defaults.
OLD_FLAT = {"preset": "alp+aad", "alp_lambda": 0.7, "trades_beta": 3.0, "aad_alpha": 0.2, "aad_beta": 0.05,
            "aad_kappa": "mean", "at_beta": 2.0, "at_power": 3.0, "at_p": 1.0, "afm_lambda1": 5.0, "afm_lambda2": 0.5,
            "fused_forward": False}


def test_old_flat_config_yaml_loads_to_the_same_values(tmp_path):
    old = resolve_config(None, {"model": {"width": 0.25}}).to_dict()
    old["defense"] = dict(OLD_FLAT)
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    cfg = resolve_config(str(tmp_path / "old.yaml"))
    d = cfg.defense
    assert (d.preset, d.fused_forward, d.alp.weight, d.trades.beta) == ("alp+aad", False, 0.7, 3.0)
    assert (d.aad.alpha, d.aad.beta, d.aad.kappa) == (0.2, 0.05, "mean")
    assert (d.at.beta, d.at.power, d.at.p, d.afm.lambda1, d.afm.lambda2) == (2.0, 3.0, 1.0, 5.0, 0.5)
    assert cfg.model.width == 0.25
    # what the resumed run writes back is nested, and resolves to the same config
    (tmp_path / "new.yaml").write_text(dump_config(cfg))
    assert "aad_alpha" not in dump_config(cfg) and resolve_config(str(tmp_path / "new.yaml")) == cfg
    # a nested --set over an old flat file wins (resume with new flags), it does not clash
    over = resolve_config(str(tmp_path / "old.yaml"), _parse_set(["defense.aad.alpha=0.3"]))
    assert over.defense.aad.alpha == 0.3 and over.defense.aad.beta == 0.05


def test_set_flat_and_nested_give_the_same_config():
    flat = resolve_config(None, _parse_set(["defense.aad_alpha=0.2", "defense.alp_lambda=1e-3"]))
    nested = resolve_config(None, _parse_set(["defense.aad.alpha=0.2", "defense.alp.lambda=1e-3"]))
    assert flat == nested and flat.to_dict() == nested.to_dict()
    assert flat.defense.aad.alpha == 0.2 and flat.defense.alp.weight == 0.001
    assert flat != resolve_config(None, {})
    with pytest.raises(ConfigError, match="old spelling"):
        resolve_config(None, _parse_set(["defense.aad_alpha=0.2", "defense.aad.alpha=0.2"]))
