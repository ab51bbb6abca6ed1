"""A new attack is one class and one registry call: a toy registered from this file runs through
``evaluate`` and the sanity checks, which classify it by its registered ``uses_gradients``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnguard
from attnguard.attacks import ATTACKS, Attack, build_attack, parse_attack
from attnguard.errors import ConfigError, UnknownNameError
from attnguard.evaluation import sanity as sanity_mod

EPS = 0.1
BLACK_BOX_CHECK = "black-box not stronger than white-box"


class ToyGradientSign(Attack):
    """K steps of size eps/K along the sign of the CE input gradient (a white-box toy)."""

    name = "toy"

    def __init__(self, eps, steps, **kw):
        super().__init__(eps, **kw)
        self.steps = steps

    def perturb(self, model, x, y):
        x_adv = x.clone()
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
            x_adv = (x_adv.detach() + self.eps / self.steps * g.sign()).clamp(x - self.eps, x + self.eps).clamp(0, 1)
        return x_adv


class ToyRandomSign(Attack):
    """K steps of size eps/K along random signs; never looks at the model.

    It keeps ``Attack``'s default ``uses_gradients = True`` on purpose: the evaluation must call it
    black-box because of its registration, not because of the class attribute.
    """

    name = "toyblind"

    def __init__(self, eps, steps, **kw):
        super().__init__(eps, **kw)
        self.steps = steps

    def perturb(self, model, x, y):
        g = self.generator(x.device)
        x_adv = x.clone()
        for _ in range(self.steps):
            sign = torch.randint(0, 2, x.shape, generator=g, device=x.device).to(x.dtype) * 2 - 1
            x_adv = (x_adv + self.eps / self.steps * sign).clamp(x - self.eps, x + self.eps).clamp(0, 1)
        return x_adv


@pytest.fixture
def toys():
    ATTACKS.add("toy-K", lambda eps, spec, *, seed, norm, **_: ToyGradientSign(eps, spec.params["steps"], norm=norm,
                                                                                seed=seed),
                "toy: K signed-gradient steps of size eps/K, e.g. toy-5", pattern=r"toy-(?P<steps>.*)", example="toy-5")
    ATTACKS.add("toyblind-K", lambda eps, spec, *, seed, norm, **_: ToyRandomSign(eps, spec.params["steps"],
                                                                                   norm=norm, seed=seed),
                "toy black-box: K random-sign steps of size eps/K, e.g. toyblind-5",
                pattern=r"toyblind-(?P<steps>.*)", example="toyblind-5", uses_gradients=False)
    try:
        yield
    finally:
        ATTACKS.remove("toy-K")
        ATTACKS.remove("toyblind-K")


@pytest.fixture
def data():
    torch.manual_seed(0)
    model = attnguard.create_model("lenet", width=0.25).eval()
    x = torch.rand(12, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)  # clean accuracy 100%, so every example is attacked
    return model, x, y


def test_the_name_parses_and_builds(toys):
    spec = parse_attack("TOY-5")
    assert (spec.name, spec.family, spec.params, spec.uses_gradients) == ("toy-5", "toy-K", {"steps": 5}, True)
    assert parse_attack("toyblind-3").black_box
    a = build_attack("toy-7", EPS, seed=4)
    assert type(a) is ToyGradientSign and (a.steps, a.eps, a.seed, a.registry_name) == (7, EPS, 4, "toy-7")
    with pytest.raises(ConfigError, match=r"K \(steps\) must be a whole number >= 1 \(e\.g\. toy-5\)"):
        parse_attack("toy-0")
    with pytest.raises(UnknownNameError, match="Did you mean 'toy-5'"):
        parse_attack("tyo-5")
    assert ("toy-K", "toy: K signed-gradient steps of size eps/K, e.g. toy-5") in ATTACKS.describe()
    # A3 wraps only the families registered as a3_base.
    with pytest.raises(ConfigError, match="A3 wraps a gradient attack"):
        parse_attack("a3-toy-5")


def test_a_white_box_toy_is_evaluated_and_classified_white_box(toys, data):
    model, x, y = data
    r, per = attnguard.evaluate(model, x, y, attacks=["toy-5", "fgsm"], eps=EPS, sanity=True, sanity_examples=8,
                                progress=False, return_per_example=True)
    assert list(r["attacks"]) == ["toy-5", "fgsm"] and r["attacks"]["toy-5"] < r["clean"]
    assert per.black_box == {"toy-5": False, "fgsm": False}
    line = {c["check"]: c for c in r["sanity"]}[BLACK_BOX_CHECK]
    # No black-box attack in the list; the skip names the registered black-box families, the toy among them.
    assert line["status"] == "skip" and "needs a black-box" in line["detail"] and "toyblind-K" in line["detail"]


def test_a_black_box_toy_is_classified_black_box(toys, data):
    model, x, y = data
    r, per = attnguard.evaluate(model, x, y, attacks=["toyblind-5", "fgsm"], eps=EPS, sanity=True,
                                sanity_examples=8, progress=False, return_per_example=True)
    assert per.black_box == {"toyblind-5": True, "fgsm": False}
    line = {c["check"]: c for c in r["sanity"]}[BLACK_BOX_CHECK]
    assert line["status"] in ("pass", "warn") and "fooled by toyblind-5 but by none of fgsm" in line["detail"]
    assert sanity_mod.check_black_box(per)["status"] == line["status"]


def test_removing_the_registration_forgets_the_name():
    n = len(ATTACKS)
    ATTACKS.add("toy-K", lambda eps, spec, **_: ToyGradientSign(eps, spec.params["steps"]), "toy",
                pattern=r"toy-(?P<steps>.*)", example="toy-5")
    try:
        assert parse_attack("toy-2").family == "toy-K"
    finally:
        ATTACKS.remove("toy-K")
    assert len(ATTACKS) == n and "toy-K" not in ATTACKS.names()
    with pytest.raises(UnknownNameError):
        parse_attack("toy-2")
