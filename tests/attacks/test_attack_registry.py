"""Attack names: every pattern parses to the right class with the right settings; errors list valid names."""

from __future__ import annotations

import pytest
import torch

from attnguard.attacks import a3, autoattack, rays, square, stepll, transfer
from attnguard.attacks.fgsm import FGSM
from attnguard.attacks.losses import CrossEntropyLoss, CWLoss
from attnguard.attacks.pgd import PGD
from attnguard.attacks.registry import ATTACKS, attack_families, build_attack, parse_attack, spec_of
from attnguard.errors import AttnGuardError, ConfigError, UnknownNameError

EPS = 0.3

# One concrete example per family: the parser must map it to that family.
EXAMPLES = {
    "fgsm": "fgsm", "stepll": "stepll", "iter-stepll-K": "iter-stepll-10", "pgd-K": "pgd-20",
    "pgd-KxR": "pgd-100x5", "cw-K": "cw-20", "a3-ATTACK": "a3-pgd-20", "a3n-ATTACK": "a3n-pgd-20", "autoattack": "autoattack",
    "square": "square", "square-Q": "square-100", "rays": "rays", "rays-Q": "rays-50",
    "transfer:PATH": "transfer:runs/std",
}


def test_every_family_has_an_example_and_a_one_line_description():
    assert set(ATTACKS.names()) == set(EXAMPLES)
    for name, desc in ATTACKS.describe():
        assert desc and "\n" not in desc, name
    for family, example in EXAMPLES.items():
        assert parse_attack(example).family == family
    for entry in ATTACKS.entries():  # the registered example (typo suggestions use it) is the family's own
        assert parse_attack(entry.meta["example"]).family == entry.name


@pytest.mark.parametrize("typo,suggestion", [("pdg-20", "pgd-20"), ("fgms", "fgsm"), ("sqaure", "square"),
                                             ("a3-pdg-20", "pgd-20"), ("autoatack", "autoattack")])
def test_a_typo_gets_a_concrete_suggestion(typo, suggestion):
    with pytest.raises(UnknownNameError) as e:
        parse_attack(typo)
    assert f"Did you mean '{suggestion}'?" in str(e.value) and "\n" not in str(e.value)
    assert "pgd-K" in str(e.value)  # the patterns are still listed


def test_built_objects_agree_with_the_registered_facts(tmp_path):
    _, run = _save_run(tmp_path)
    names = [e.meta["example"] for e in ATTACKS.entries() if e.name != "transfer:PATH"] + [f"transfer:{run}"]
    for name in names:
        a = build_attack(name, EPS)
        spec = spec_of(a)
        assert spec == parse_attack(name) and spec.name == a.registry_name
        assert a.uses_gradients == spec.uses_gradients, name
    assert spec_of(object()) is None


@pytest.mark.parametrize("name,steps,restarts,loss", [
    ("pgd-20", 20, 1, CrossEntropyLoss), ("pgd-7", 7, 1, CrossEntropyLoss),
    ("pgd-100x5", 100, 5, CrossEntropyLoss), ("PGD-10x3", 10, 3, CrossEntropyLoss),
    ("cw-20", 20, 1, CWLoss), ("cw-1", 1, 1, CWLoss),
])
def test_pgd_family(name, steps, restarts, loss):
    a = build_attack(name, EPS, seed=3)
    assert type(a) is PGD
    assert (a.steps, a.restarts, a.eps, a.seed) == (steps, restarts, EPS, 3)
    assert isinstance(a.loss, loss) and not a.targeted
    assert a.random_start and a.skip_misclassified
    assert a.alpha == pytest.approx(2.5 * EPS / steps)  # Madry et al.'s step size
    assert a.registry_name == name.lower()


def test_fgsm_step_size_and_norm_options():
    a = build_attack("fgsm", 0.1, norm="l2")
    assert type(a) is FGSM and isinstance(a.loss, CrossEntropyLoss) and a.norm == "l2" and a.eps == 0.1
    p = build_attack("pgd-10", 0.1, step_size=0.02, norm="l2")
    assert p.alpha == pytest.approx(0.02) and p.norm == "l2"


def test_stepll_family():
    a = build_attack("stepll", EPS)
    assert type(a) is stepll.StepLL and a.eps == EPS
    b = build_attack("iter-stepll-10", EPS, step_size=0.05)
    assert type(b) is stepll.IterStepLL and b.steps == 10 and b.alpha == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="L-inf only"):
        build_attack("stepll", EPS, norm="l2")


@pytest.mark.parametrize("name,base_type,steps,loss", [
    ("a3-pgd-20", "PGD", 20, CrossEntropyLoss), ("a3-cw-20", "PGD", 20, CWLoss),
    ("a3-fgsm", "FGSM", None, CrossEntropyLoss), ("a3-iter-stepll-10", "IterStepLL", 10, None),
    ("a3-pgd-10x2", "PGD", 10, CrossEntropyLoss),
])
def test_a3_wraps_its_base(name, base_type, steps, loss):
    a = build_attack(name, EPS, seed=5)
    assert type(a) is a3.A3 and a.registry_name == name
    assert type(a.base).__name__ == base_type and a.base.eps == EPS and a.base.seed == 5
    assert a.sigma == 10.0 and a.kappa == "mean"  # AAD's settings
    if steps is not None:
        assert a.base.steps == steps
    if loss is not None:
        assert isinstance(a.base.loss, loss)


def test_a3_sigma_in_the_name():
    a = build_attack("a3s1-pgd-20", EPS)
    assert type(a) is a3.A3 and a.sigma == 1.0 and a.base.steps == 20 and a.registry_name == "a3s1-pgd-20"
    assert build_attack("a3s0.5-cw-10", EPS).sigma == 0.5 and build_attack("a3s0-fgsm", EPS).sigma == 0.0
    for bad in ("a3s-pgd-20", "a3sx-pgd-20", "a3s-1-pgd-20", "a3s1.2.3-pgd-20"):
        with pytest.raises(ConfigError, match="sigma must be a number >= 0"):
            parse_attack(bad)


def test_a3_refuses_non_gradient_bases():
    for name in ("a3-square", "a3-rays", "a3-autoattack", "a3-a3-pgd-10", "a3-transfer:x"):
        with pytest.raises(ConfigError, match="A3 wraps a gradient attack"):
            parse_attack(name)


def test_autoattack_square_rays():
    a = build_attack("autoattack", 8 / 255, num_classes=100, seed=2)
    assert type(a) is autoattack.AutoAttack and a.num_classes == 100 and a.version == "standard" and a.seed == 2

    assert type(build_attack("square", EPS)) is square.Square
    assert build_attack("square", EPS).n_queries == 5000
    assert build_attack("square-100", EPS, norm="l2").n_queries == 100
    assert build_attack("square-100", EPS, norm="l2").norm == "l2"

    assert type(build_attack("rays", EPS)) is rays.RayS
    assert build_attack("rays", EPS).queries == 10000 and build_attack("rays-50", EPS).queries == 50
    assert attack_families(uses_gradients=False) == ["square", "square-Q", "rays", "rays-Q", "transfer:PATH"]
    for name in ("square", "square-100", "rays", "rays-50", "transfer:runs/std"):
        assert parse_attack(name).black_box and not parse_attack(name).uses_gradients
    for name in ("fgsm", "pgd-20", "a3-pgd-20", "autoattack", "iter-stepll-3"):
        assert not parse_attack(name).black_box


def _save_run(tmp_path):
    from attnguard import create_model
    from attnguard.io import FORMAT, atomic_torch_save

    torch.manual_seed(0)
    m = create_model("lenet", width=0.25)
    path = tmp_path / "src_run" / "checkpoints" / "best.pt"
    atomic_torch_save({"format": FORMAT, "model_config": m.config, "model": m.state_dict()}, path)
    return m, tmp_path / "src_run"


def test_transfer_loads_the_source_and_builds_its_base(tmp_path):
    m, run = _save_run(tmp_path)
    a = build_attack(f"transfer:{run}", EPS)
    assert type(a) is transfer.Transfer and a.registry_name == f"transfer:{run}:pgd-20"
    assert type(a.base_attack) is PGD and a.base_attack.steps == 20
    assert not a.source_model.training
    for k, v in m.state_dict().items():
        assert torch.equal(a.source_model.state_dict()[k], v)
    b = build_attack(f"transfer:{run / 'checkpoints' / 'best.pt'}:fgsm", EPS)
    assert type(b.base_attack) is FGSM
    assert parse_attack("transfer:C:/runs/x:cw-10").params["path"] == "C:/runs/x"  # a colon inside the path


def test_transfer_errors(tmp_path):
    with pytest.raises(ConfigError, match="white-box"):
        parse_attack("transfer:runs/x:square")
    with pytest.raises(ConfigError, match="source model"):
        parse_attack("transfer:")
    with pytest.raises(ConfigError, match="whole number"):
        parse_attack("transfer:runs/x:pgd-0")
    with pytest.raises(AttnGuardError, match="no such run directory"):
        build_attack(f"transfer:{tmp_path / 'missing'}", EPS)


@pytest.mark.parametrize("name", ["foo", "pgd", "fgsm2", "square_100", "", "a3"])
def test_unknown_names_list_the_patterns(name):
    with pytest.raises(UnknownNameError) as e:
        parse_attack(name)
    msg = str(e.value)
    assert "\n" not in msg
    for pattern in ("fgsm", "pgd-K", "pgd-KxR", "cw-K", "a3-ATTACK", "transfer:PATH", "square-Q"):
        assert pattern in msg


@pytest.mark.parametrize("name,what", [
    ("pgd-0", "K (steps)"), ("pgd-x", "K (steps)"), ("pgd-10x0", "R (restarts)"), ("pgd-0x2", "K (steps)"),
    ("pgd-1.5", "K (steps)"), ("cw-0", "K (steps)"), ("cw-ten", "K (steps)"), ("iter-stepll-0", "K (steps)"),
    ("square-0", "Q (queries)"), ("rays-q", "Q (queries)"), ("a3-pgd-0", "K (steps)"),
])
def test_bad_numbers_say_what_is_allowed(name, what):
    with pytest.raises(ConfigError) as e:
        parse_attack(name)
    msg = str(e.value)
    assert what in msg and "whole number >= 1" in msg and "e.g." in msg and "\n" not in msg


def test_bad_options():
    with pytest.raises(ConfigError, match="eps"):
        build_attack("pgd-10", -0.1)
    with pytest.raises(ConfigError, match="norm"):
        build_attack("pgd-10", 0.1, norm="l1")
    with pytest.raises(ConfigError, match="step size"):
        build_attack("pgd-10", 0.1, step_size=0)


def test_built_pgd_attacks_work_and_stay_in_the_ball():
    from attnguard import create_model

    torch.manual_seed(0)
    model = create_model("lenet", width=0.25).eval()
    x = torch.rand(4, 1, 28, 28)
    y = model(x).argmax(1)
    for name in ("fgsm", "pgd-3", "pgd-2x2", "cw-3"):
        x_adv = build_attack(name, 0.1)(model, x, y)
        assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
