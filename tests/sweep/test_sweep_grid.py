"""``attnguard sweep`` without training: grid parsing and naming, the x-axis scale of sweep.png, and bad
input (exit 2, one line, nothing written)."""

import pytest

from attnguard.cli import main
from attnguard.errors import ConfigError
from attnguard.sweep.grid import expand, parse_grid, parse_seeds, split_values
from attnguard.sweep.table import x_scale


def test_grid_values_parse_like_set_and_names_are_stable():
    axes = parse_grid(["defense.aad_alpha=0,1e-3,0.01", "eval.attacks=[fgsm,pgd-2],[fgsm]", "train.amp=off,bf16"])
    alpha, attacks, amp = axes
    assert alpha.key == "defense.aad.alpha"  # the flat alias is spelled as config.yaml spells it
    assert alpha.values == (0, 0.001, 0.01) and isinstance(alpha.values[1], float)  # 1e-3 read as a number
    assert attacks.values == (["fgsm", "pgd-2"], ["fgsm"]) and attacks.labels == ("fgsm+pgd-2", "fgsm")
    assert amp.values == ("off", "bf16")  # not YAML 1.1's False
    runs = expand(axes, [0, 3])
    assert len(runs) == 3 * 2 * 2 * 2
    assert runs[0].name == "defense.aad.alpha=0,eval.attacks=fgsm+pgd-2,train.amp=off,seed=0"
    assert runs[1].seed == 3 and runs[2].point["train.amp"] == "bf16"  # seeds innermost, last key fastest
    assert len({r.name for r in runs}) == len(runs) and not any("/" in r.name for r in runs)
    assert runs[0].set_args == ["defense.aad.alpha=0", "eval.attacks=[fgsm,pgd-2]", "train.amp=off"]
    assert expand(axes, [0, 3])[5].name == runs[5].name  # the same sweep finds the same directories
    assert split_values("[a,b],{x: 1, y: 2},c") == ["[a,b]", "{x: 1, y: 2}", "c"]


def test_fraction_values_keep_their_spelling_in_names():
    (eps,) = parse_grid(["adversary.eps=8/255,0.1"])
    assert eps.labels[0] in ("8_255",) and eps.texts == ("8/255", "0.1")


@pytest.mark.parametrize("specs", [[], ["alpha"], ["=1,2"], ["defense.aad.alpha="], ["defense.aad.alpha=1,,2"],
                                   ["defense.aad.alpha=1,1.0"], ["seed=1,2"], ["a.b=1", "a.b=2"]])
def test_bad_grid_specs(specs):
    with pytest.raises(ConfigError):
        parse_grid(specs)


@pytest.mark.parametrize("text", ["", "0,,1", "a", "-1", "1,1"])
def test_bad_seeds(text):
    with pytest.raises(ConfigError):
        parse_seeds(text)


def test_x_axis_is_log_when_values_span_decades():
    assert x_scale([0, 0.001, 0.01, 0.1, 1]) == ("symlog", {"linthresh": 0.001})  # AAD Fig. 8
    assert x_scale([0.001, 0.1, 1]) == ("log", {})
    assert x_scale([0.1, 0.2, 0.3]) == ("linear", {})
    assert x_scale(["madry", "trades"]) == ("linear", {})


@pytest.mark.parametrize("argv,says", [
    (["--grid", "nosuch.key=1,2"], "nosuch"),
    (["--grid", "defense.aad.alpha="], "empty value"),
    (["--grid", "defense.aad.alpha"], "KEY=V1,V2"),
    (["--grid", "defense.aad.alpha=1", "--jobs", "0"], "--jobs"),
    (["--grid", "defense.aad.alpha=1", "--seeds", ""], "--seeds"),
    (["--grid", "defense.aad.alpha=-1"], "defense.aad.alpha"),
    (["--grid", "defense.aad.alpha=1", "--set", "defense.aad_alpha=2"], "also given"),
    (["--grid", "defense.aad.alpha=1", "--eval-attacks", "nosuch-attack"], "nosuch-attack"),
    (["--grid", "model.name=lenet,nosuchnet"], "nosuchnet"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, argv, says):
    out = tmp_path / "sweep"
    assert main(["sweep", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnguard sweep: error:") and says in err[0], err
    assert not out.exists()


def test_malformed_flag_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--out", str(tmp_path), "--grid", "defense.aad.alpha=1", "--jobs", "two"])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_key_with_one_value_gets_no_panel(tmp_path):
    # AAD Fig. 8 holds beta at 0.01 and sweeps alpha: the plot has alpha's panel only (one panel wide),
    # beta named in the title, not a second panel holding one point per line
    from matplotlib.image import imread

    from attnguard.sweep.grid import parse_grid
    from attnguard.sweep.table import plot

    st = lambda m: {"mean": m, "std": None, "values": [m]}  # noqa: E731
    def data(axes):
        points = []
        for a in axes[-1].values:
            values = {axes[0].key: axes[0].values[0], axes[-1].key: a}
            points.append({"values": values, "n": 1, "clean": st(0.9), "worst_case": st(0.5 + a / 4),
                           "attacks": {}, "missing": []})
        return {"metric": "worst case", "points": points, "n_examples": [100], "eps": [0.3]}

    held = parse_grid(["defense.aad.beta=0.01", "defense.aad.alpha=0,0.01,1"])
    both = parse_grid(["defense.aad.beta=0.01,0.1", "defense.aad.alpha=0,0.01,1"])
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    plot(data(held), held, one)
    plot(data(both), both, two)
    w1, w2 = imread(one).shape[1], imread(two).shape[1]
    assert w2 > 1.6 * w1  # one panel against two (the same width before the fix)
