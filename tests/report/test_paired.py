"""`attnguard report --paired BASE:VARIANT`: per-seed differences, checked by hand on 10-example fake runs."""

import json
import math
import os

import pytest
import yaml

from attnguard.cli import main
from attnguard.errors import ConfigError
from attnguard.report.paired import paired_comparisons, paired_markdown, parse_pair


def _run(root, preset, seed, clean, attacks, extra=None, name=None):
    """A run directory as `attnguard train` + `eval` leave it: config.yaml and eval.json (per-example bits:
    '1' = correct clean and after the attack); ``extra`` adds an eval-aa.json on a prefix of the examples."""
    d = root / (name or f"{preset}-s{seed}")
    d.mkdir()
    cfg = {"data": {"name": "mnist-5k"}, "model": {"name": "lenet"}, "defense": {"preset": preset},
           "adversary": {"eps": 0.3}, "seed": seed}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))

    def ev(bits, atks):
        n = len(bits)
        acc = {k: v.count("1") / n for k, v in atks.items()}
        return {"dataset": "mnist-5k", "model": "lenet", "eps": 0.3, "n_examples": n, "clean": bits.count("1") / n,
                "attacks": acc, "worst_case": min(acc.values()), "sanity": [],
                "per_example": {"clean": bits, "attacks": atks}}

    (d / "eval.json").write_text(json.dumps(ev(clean, attacks)))
    if extra:
        n = len(next(iter(extra.values())))
        (d / "eval-aa.json").write_text(json.dumps(ev(clean[:n], extra)))
    return d


# clean %, pgd-20 % per seed:      madry                  madry+aad           difference (points)
#   s0                              90, 50                 80, 60              -10, +10
#   s1                              80, 60                 80, 80                0, +20
#   s2                              70, 30                 90, 40              +20, +10
BASE = {0: ("1111111110", "1111100000"), 1: ("1111111100", "1111110000"), 2: ("1111111000", "1110000000")}
VARIANT = {0: ("1111111100", "1111110000"), 1: ("1111111100", "1111111100"), 2: ("1111111110", "1111000000")}


def _pgd(root, preset, seed, bits, **kw):
    """A run evaluated with pgd-20 only: ``bits`` = (clean bits, pgd-20 bits)."""
    return _run(root, preset, seed, bits[0], {"pgd-20": bits[1]}, **kw)


def _three_seeds(root):
    return ([_pgd(root, "madry", s, b) for s, b in BASE.items()]
            + [_pgd(root, "madry+aad", s, b) for s, b in VARIANT.items()])


def _metric(comparison, name):
    return next(m for m in comparison["metrics"] if m["metric"] == name)


def test_per_seed_differences_and_their_summary_by_hand(tmp_path):
    runs = _three_seeds(tmp_path)
    result = paired_comparisons(runs, ["madry:madry+aad"])
    json.dumps(result)  # JSON-able as promised
    (c,) = result["pairs"]
    assert c["seeds"] == [0, 1, 2] and c["only_base"] == [] and c["only_variant"] == []
    assert [m["metric"] for m in c["metrics"]] == ["clean", "pgd-20", "worst case"]
    clean = _metric(c, "clean")
    assert [p["diff"] for p in clean["per_seed"]] == pytest.approx([-10, 0, 20])
    assert [p["n"] for p in clean["per_seed"]] == [10, 10, 10]
    # mean 10/3; deviations -40/3, -10/3, 50/3: squares sum to 4200/9, over n-1 = 2 -> 233.33, sqrt 15.28
    assert clean["mean"] == pytest.approx(10 / 3) and clean["std"] == pytest.approx(math.sqrt(4200 / 9 / 2))
    assert (clean["min"], clean["max"]) == pytest.approx((-10, 20))
    assert (clean["ahead"], clean["behind"], clean["tied"]) == (1, 1, 1)
    pgd = _metric(c, "pgd-20")
    assert [p["diff"] for p in pgd["per_seed"]] == pytest.approx([10, 20, 10])
    # mean 40/3; deviations -10/3, 20/3, -10/3: 600/9 / 2 -> 33.33, sqrt 5.77
    assert pgd["mean"] == pytest.approx(40 / 3) and pgd["std"] == pytest.approx(math.sqrt(600 / 9 / 2))
    assert (pgd["ahead"], pgd["behind"], pgd["tied"]) == (3, 0, 0) and pgd["n_paired"] == 3
    worst = _metric(c, "worst case")  # pgd-20 is the only attack and its bits imply clean: same numbers
    assert [p["diff"] for p in worst["per_seed"]] == pytest.approx([10, 20, 10])
    # the variant-minus-base direction: swapping the pair flips every sign and the ahead/behind counts
    (r,) = paired_comparisons(runs, ["madry+aad:madry"])["pairs"]
    assert [p["diff"] for p in _metric(r, "clean")["per_seed"]] == pytest.approx([10, 0, -20])
    assert (_metric(r, "clean")["ahead"], _metric(r, "clean")["behind"]) == (1, 1)


def test_markdown_table_rows(tmp_path):
    text, _ = paired_markdown(_three_seeds(tmp_path), ["madry:madry+aad"])
    assert "### `madry` -> `madry+aad`, paired by seed (mnist-5k, lenet, eps 0.3)" in text
    row = next(line for line in text.splitlines() if line.startswith("| clean |"))
    assert row == "| clean | 10 | s0 -10.0, s1 0.0, s2 +20.0 | +3.3 ± 15.3 | -10.0..+20.0 | 1 / 1 / 1 | 3 | - |"
    row = next(line for line in text.splitlines() if line.startswith("| pgd-20 |"))
    assert "s0 +10.0, s1 +20.0, s2 +10.0 | +13.3 ± 5.8 | +10.0..+20.0 | 3 / 0 / 0 | 3 |" in row
    assert "Seeds only in `madry`: none; only in `madry+aad`: none." in text
    for word in ("reproduced", "reversed"):  # numbers only: the verdict is the reader's
        assert word not in text.lower()


def test_attack_on_a_different_n_is_not_paired(tmp_path):
    # autoattack: s0 on 5 examples in both (40 % vs 60 %), s1 on 5 in madry but 4 in madry+aad, s2 in neither
    runs = [_pgd(tmp_path, "madry", 0, BASE[0], extra={"autoattack": "11000"}),
            _pgd(tmp_path, "madry", 1, BASE[1], extra={"autoattack": "11100"}),
            _pgd(tmp_path, "madry", 2, BASE[2]),
            _pgd(tmp_path, "madry+aad", 0, VARIANT[0], extra={"autoattack": "11100"}),
            _pgd(tmp_path, "madry+aad", 1, VARIANT[1], extra={"autoattack": "1100"}),
            _pgd(tmp_path, "madry+aad", 2, VARIANT[2])]
    (c,) = paired_comparisons(runs, ["madry:madry+aad"])["pairs"]
    aa = _metric(c, "autoattack")
    assert [(p["seed"], p["n"]) for p in aa["per_seed"]] == [(0, 5)]
    assert aa["per_seed"][0]["diff"] == pytest.approx(20) and aa["n_paired"] == 1 and aa["std"] is None
    assert aa["unpaired"] == [{"seed": 1, "reason": "n differs (5 in `madry`, 4 in `madry+aad`)"},
                              {"seed": 2, "reason": "not evaluated in either run"}]
    # worst case over every attack: s0 on the first 5 (11000 vs 11100: +20), s1 on 5 vs 4 -> not paired,
    # s2 over pgd-20 alone on all 10 (30 vs 40: +10)
    worst = _metric(c, "worst case")
    assert [(p["seed"], p["n"]) for p in worst["per_seed"]] == [(0, 5), (2, 10)]
    assert [p["diff"] for p in worst["per_seed"]] == pytest.approx([20, 10])
    assert [u["seed"] for u in worst["unpaired"]] == [1] and "n differs (5" in worst["unpaired"][0]["reason"]
    text, _ = paired_markdown(runs, ["madry:madry+aad"])
    row = next(line for line in text.splitlines() if line.startswith("| autoattack |"))
    assert "(1 seed, no std)" in row and "s1: n differs (5 in `madry`, 4 in `madry+aad`)" in row
    assert next(line for line in text.splitlines() if line.startswith("| worst case |")).startswith(
        "| worst case | 5/10 | s0 +20.0, s2 +10.0 |")


def test_worst_case_over_different_attacks_is_not_paired(tmp_path):
    runs = [_run(tmp_path, "madry", 0, "1111", {"pgd-20": "1100"}),
            _run(tmp_path, "madry+aad", 0, "1111", {"pgd-20": "1110", "fgsm": "1111"})]
    (c,) = paired_comparisons(runs, ["madry:madry+aad"])["pairs"]
    worst = _metric(c, "worst case")
    assert worst["per_seed"] == [] and "over different attacks" in worst["unpaired"][0]["reason"]
    assert _metric(c, "fgsm")["unpaired"] == [{"seed": 0, "reason": "not evaluated in the `madry` run"}]
    assert _metric(c, "pgd-20")["per_seed"][0]["diff"] == pytest.approx(25)


def test_a_seed_in_one_group_only_is_named(tmp_path):
    runs = [_pgd(tmp_path, "madry", s, BASE[s]) for s in (0, 1, 2)]
    runs += [_pgd(tmp_path, "madry+aad", s, VARIANT[s]) for s in (0, 1)]
    runs.append(_pgd(tmp_path, "madry+aad", 7, VARIANT[2]))
    text, result = paired_markdown(runs, ["madry:madry+aad"])
    (c,) = result["pairs"]
    assert c["seeds"] == [0, 1] and c["only_base"] == [2] and c["only_variant"] == [7]
    assert _metric(c, "clean")["n_paired"] == 2
    assert "Seeds only in `madry`: 2; only in `madry+aad`: 7." in text


def test_parse_pair_keeps_plus_and_minus():
    assert parse_pair("madry:madry+aad") == ("madry", "madry+aad")
    assert parse_pair("at-alp:at+alp") == ("at-alp", "at+alp")
    for bad in ("madry", "madry:", ":madry", "a:b:c", "madry:madry"):
        with pytest.raises(ConfigError):
            parse_pair(bad)


def test_two_runs_of_one_preset_at_one_seed_are_refused(tmp_path):
    runs = _three_seeds(tmp_path) + [_pgd(tmp_path, "madry", 0, BASE[1], name="madry-s0-again")]
    with pytest.raises(ConfigError, match="both `madry` at seed 0"):
        paired_comparisons(runs, ["madry:madry+aad"])


@pytest.mark.parametrize("pair, says", [
    ("madry", "expected BASE:VARIANT"), ("madry:madry+aad:x", "expected BASE:VARIANT"),
    ("madry:trades", "no run among RUN... has defense preset 'trades'"),
])
def test_cli_bad_pair_is_one_line_exit_2(tmp_path, capsys, pair, says):
    runs = [str(r) for r in _three_seeds(tmp_path)]
    table = tmp_path / "t.md"
    assert main(["report", *runs, "--paired", pair, "--markdown", str(table)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "Traceback" not in err
    assert not table.exists()  # refused before anything is written


def test_cli_no_seed_in_common_exits_2(tmp_path, capsys):
    runs = [_pgd(tmp_path, "madry", 0, BASE[0]), _pgd(tmp_path, "madry+aad", 1, VARIANT[1])]
    assert main(["report", *map(str, runs), "--paired", "madry:madry+aad"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no seed in common" in err and "`madry` 0, `madry+aad` 1" in err


def test_cli_appends_paired_tables_to_the_markdown(tmp_path, capsys, monkeypatch):
    runs = [str(r) for r in _three_seeds(tmp_path)]
    monkeypatch.chdir(tmp_path)
    assert main(["report", *runs, "--paired", "madry:madry+aad", "--markdown", "t.md"]) == 0
    text = (tmp_path / "t.md").read_text()
    assert text.index("| `madry` |") < text.index("### `madry` -> `madry+aad`")  # mean ± std table first
    assert "| clean | 10 | s0 -10.0, s1 0.0, s2 +20.0 |" in text
    assert not os.path.exists("report.html")  # --paired without --out: no HTML report
    # without --markdown the paired tables go to stdout, still no HTML
    capsys.readouterr()
    assert main(["report", *runs, "--paired", "madry:madry+aad", "--paired", "madry+aad:madry"]) == 0
    out = capsys.readouterr().out
    assert "### `madry` -> `madry+aad`" in out and "### `madry+aad` -> `madry`" in out
    assert not os.path.exists("report.html")


def test_cli_keeps_an_existing_table_without_force(tmp_path, capsys):
    runs = [str(r) for r in _three_seeds(tmp_path)]
    table = tmp_path / "t.md"
    table.write_text("a table someone kept\n")
    assert main(["report", *runs, "--markdown", str(table)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--force" in err and "Traceback" not in err
    assert table.read_text() == "a table someone kept\n"  # untouched
    html = tmp_path / "r.html"
    html.write_text("<p>kept</p>")
    assert main(["report", *runs, "--out", str(html)]) == 2 and html.read_text() == "<p>kept</p>"
    assert main(["report", *runs, "--markdown", str(table), "--force"]) == 0
    assert "| `madry` |" in table.read_text()
