"""Attacks run on a prefix of the examples (``autoattack@300``): parsing, the evaluation's numbers, n in
every row of every table (terminal, eval.md, report --markdown, HTML) and the worst cases' coverage."""

from __future__ import annotations

import json

import pytest
import torch
from _support import hand_examples
from torch import nn

from attnguard.attacks.registry import ATTACKS, build_attack, parse_attack
from attnguard.errors import ConfigError
from attnguard.evaluation import evaluate, format_table, to_markdown, validate_result
from attnguard.evaluation.results import worst_cases

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread


class Threshold(nn.Module):
    """Two classes on 1x2x2 images: class 1 iff pixel (0, 0) > 0.5."""

    input_size = (1, 2, 2)
    num_classes = 2

    def forward(self, x):
        z = (x[:, 0, 0, 0] - 0.5) * 10
        return torch.stack([-z, z], 1)


class Flip:
    """Moves pixel (0, 0) across 0.5 for the examples whose id (pixel (1, 1) * 10) is listed."""

    norm = "linf"

    def __init__(self, ids, eps):
        self.ids, self.eps = set(ids), eps

    def __call__(self, model, x, y):
        ids = (x[:, 0, 1, 1] * 10).round().long()
        hit = torch.tensor([int(i) in self.ids for i in ids])
        x_adv = x.clone()
        step = torch.where(x[:, 0, 0, 0] < 0.5, self.eps, -self.eps)
        x_adv[:, 0, 0, 0] = torch.where(hit, x[:, 0, 0, 0] + step, x[:, 0, 0, 0])
        return x_adv


@pytest.fixture
def flip_family():
    """A registered toy family ``flip-<ids>`` (e.g. flip-012 fools examples 0, 1, 2), so names with @N work."""
    ATTACKS.add("flip-IDS", lambda eps, spec, **_: Flip(map(int, spec.params["ids"]), eps),
                "test family: fools the listed example ids", pattern=r"flip-(?P<ids>[0-9]+)", example="flip-012")
    yield
    ATTACKS.remove("flip-IDS")


def test_parse_attack_reads_the_suffix_in_one_place():
    spec = parse_attack("autoattack@300")
    assert (spec.name, spec.family, spec.subset) == ("autoattack", "autoattack", 300)
    assert parse_attack("a3-pgd-20@5").subset == 5 and parse_attack("a3-pgd-20@5").name == "a3-pgd-20"
    assert parse_attack("pgd-20").subset is None
    # a transfer source path may hold an "@" that is not a subset
    assert parse_attack("transfer:runs/a@b/run").params["path"] == "runs/a@b/run"
    for bad in ("pgd-20@0", "pgd-20@x", "pgd-20@", "pgd-20@1.5"):
        with pytest.raises(ConfigError, match="first N examples"):
            parse_attack(bad)
    # outside an evaluation's list the suffix would be silently ignored: refused instead
    with pytest.raises(ConfigError, match="@N"):
        build_attack("fgsm@10", 0.1)


def test_eval_attacks_in_configs_accept_the_suffix():
    from attnguard.train.config import resolve_config
    from attnguard.train.validate import check_names

    cfg = resolve_config(None, {"eval": {"attacks": ["fgsm", "autoattack@300"]}})
    check_names(cfg)  # no error
    with pytest.raises(ConfigError, match="first N"):
        check_names(resolve_config(None, {"eval": {"attacks": ["fgsm", "autoattack@0"]}}))


def test_evaluate_runs_an_attack_on_the_first_n(flip_family):
    x, y = hand_examples()
    # batch 3: the subset of 4 ends inside the second batch
    r, per = evaluate(Threshold(), x, y, ["flip-012", "flip-237@4"], 0.1, progress=False, batch_size=3,
                      return_per_example=True)
    validate_result(r)
    assert r["n_examples"] == 8 and r["n_per_attack"] == {"flip-012": 8, "flip-237": 4}
    assert per.attacks["flip-237"].tolist() == [True, True, False, False]
    assert r["attacks"]["flip-012"] == pytest.approx(4 / 8)  # 3, 4, 5, 6 robust
    assert r["attacks"]["flip-237"] == pytest.approx(2 / 4)  # of 0..3, 2 and 3 fooled
    # over every attack, on the first 4: flip-012 fools 0, 1, 2 and flip-237 fools 3 -> none robust
    assert r["n_worst"] == 4 and r["worst_case"] == 0.0
    assert r["worst_cases"] == [{"n_examples": 4, "attacks": ["flip-012", "flip-237"], "accuracy": 0.0},
                                {"n_examples": 8, "attacks": ["flip-012"], "accuracy": 0.5}]
    json.dumps(r)


def test_worst_cases_by_hand():
    clean = [True, True, True, False]
    out = worst_cases(clean, {"a": [True, False, True, True], "b": [False, True]})
    assert out == [{"n_examples": 2, "attacks": ["a", "b"], "accuracy": 0.0},
                   {"n_examples": 4, "attacks": ["a"], "accuracy": 0.5}]
    assert worst_cases(clean, {}) == [{"n_examples": 4, "attacks": [], "accuracy": 0.75}]


def _subset_result():
    return {"dataset": "mnist", "model": "m", "eps": 0.3, "norm": "linf", "n_examples": 1000, "clean": 0.99,
            "attacks": {"fgsm": 0.9, "pgd-20": 0.8, "autoattack": 0.6},
            "n_per_attack": {"fgsm": 1000, "pgd-20": 1000, "autoattack": 300},
            "worst_case": 0.55, "n_worst": 300,
            "worst_cases": [{"n_examples": 300, "attacks": ["fgsm", "pgd-20", "autoattack"], "accuracy": 0.55},
                            {"n_examples": 1000, "attacks": ["fgsm", "pgd-20"], "accuracy": 0.78}],
            "seconds": {"fgsm": 1.0, "pgd-20": 2.0, "autoattack": 30.0}, "sanity": []}


def _terminal(result, width=160):
    from rich.console import Console

    console = Console(width=width, record=True)
    console.print(format_table(result))
    return console.export_text()


def _cells(text, start):
    """The cells of the terminal table's row whose first cell starts with ``start``."""
    rows = [[c.strip() for c in l.strip().strip("│").split("│")] for l in text.splitlines() if "│" in l]
    return next(r for r in rows if r[0].startswith(start))


def test_every_row_says_its_n_in_the_terminal_and_in_eval_md():
    r = _subset_result()
    md = to_markdown(r)
    assert "| fgsm | 90.00 | 1000 | 1.0 |" in md and "| autoattack | 60.00 | 300 | 30.0 |" in md
    assert "| clean | 99.00 | 1000 | |" in md
    assert "| **worst case** (first 300 examples, over all attacks) | **55.00** | 300 | 33.0 |" in md
    assert "| **worst case** (all 1000 examples, over fgsm, pgd-20) | **78.00** | 1000 | |" in md
    text = _terminal(r)
    assert _cells(text, "autoattack")[1:3] == ["60.00", "300"]
    assert _cells(text, "fgsm")[1:3] == ["90.00", "1000"]
    assert _cells(text, "worst case (first 300 examples, over all attacks)")[1:3] == ["55.00", "300"]
    assert _cells(text, "worst case (all 1000 examples, over fgsm, pgd-20)")[1:3] == ["78.00", "1000"]


def test_an_old_eval_json_without_per_attack_n_shows_the_one_n():
    r = _subset_result()
    for k in ("n_per_attack", "n_worst", "worst_cases"):
        r.pop(k)
    md = to_markdown(validate_result(r))
    assert "| autoattack | 60.00 | 1000 | 30.0 |" in md
    assert "| **worst case** (robust to every attack) | **55.00** | 1000 | 33.0 |" in md
    text = _terminal(r)
    assert _cells(text, "worst case") == ["worst case", "55.00", "1000", "33.0"]


@pytest.mark.parametrize("key,value", [("n_per_attack", {"fgsm": 0}), ("n_per_attack", {"cw-20": 10}),
                                       ("n_worst", 5000), ("worst_cases", [{"n_examples": 3}])])
def test_validate_result_checks_the_counts(key, value):
    r = _subset_result()
    r[key] = value
    with pytest.raises(Exception, match=key.split("_")[0]):
        validate_result(r)


def _evals_on_two_subsets():
    """eval.json: fgsm and pgd-20 on 10 examples; eval-autoattack-n4.json: autoattack on the first 4."""
    def ev(clean, atks):
        n = len(clean)
        return {"dataset": "d", "model": "m", "eps": 0.3, "n_examples": n, "clean": clean.count("1") / n,
                "attacks": {k: v.count("1") / len(v) for k, v in atks.items()},
                "worst_case": 0.0, "seconds": {k: 1.0 for k in atks}, "sanity": [],
                "per_example": {"clean": clean, "attacks": atks}}

    return (ev("1111111110", {"fgsm": "1111111000", "pgd-20": "0111111100"}),
            ev("1111", {"autoattack": "1010"}))


def test_merge_evals_says_each_attacks_n_and_both_worst_cases():
    from attnguard.report.aggregate import merge_evals

    m = merge_evals(list(_evals_on_two_subsets()))
    assert m["n"] == {"clean": 10, "fgsm": 10, "pgd-20": 10, "autoattack": 4}
    # first 4: pgd-20 fools 0, autoattack fools 1, 3 -> only 2 robust
    assert m["n_worst"] == 4 and m["worst_case"] == 0.25
    # all 10, fgsm and pgd-20: robust 1..6
    assert m["worst_cases"][-1] == {"n_examples": 10, "attacks": ["fgsm", "pgd-20"], "accuracy": 0.6}
    # a file with @N runs inside: its attacks' n come from n_per_attack
    one = {**_evals_on_two_subsets()[0], "n_per_attack": {"fgsm": 10, "pgd-20": 6}}
    one["per_example"] = {"clean": "1111111110", "attacks": {"fgsm": "1111111000", "pgd-20": "011111"}}
    m = merge_evals([one])
    assert m["n"]["pgd-20"] == 6 and m["n_worst"] == 6 and m["worst_case"] == pytest.approx(5 / 6)


def _run_dir(tmp_path):
    import yaml

    d = tmp_path / "run"
    d.mkdir()
    cfg = {"data": {"name": "mnist-5k"}, "model": {"name": "lenet"}, "defense": {"preset": "madry"},
           "adversary": {"eps": 0.3}, "seed": 0}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    base, aa = _evals_on_two_subsets()
    (d / "eval.json").write_text(json.dumps(base))
    (d / "eval-autoattack-n4.json").write_text(json.dumps(aa))
    return d


def test_report_markdown_and_html_say_n_in_every_row(tmp_path):
    from attnguard.report import build_report
    from attnguard.report.aggregate import aggregate_markdown

    d = _run_dir(tmp_path)
    table = aggregate_markdown([d])
    head, _, row = table.splitlines()[:3]
    cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in row.split("|")]))
    assert cells["n (examples)"] == "10 (autoattack 4; worst case 4)"  # columns on other n are named
    assert cells["worst case"] == "25.0" and cells["worst case (attacks run on the most examples)"] == "60.0"

    html = build_report(d, tmp_path / "r.html", compute_missing=False).read_text()
    tbl = html[html.index('class="data eval"'):]
    tbl = tbl[:tbl.index("</table>")]
    rows = {r.split("</th>")[0].split(">")[-1]: r for r in tbl.split("<tr")[1:]}
    assert 'n=4' in rows["autoattack"] and "n=10" in rows["fgsm"] and "n=10" in rows["clean"]
    first = rows["worst case (all attacks, on the examples they all ran on)"]
    assert "25.0%" in first and "n=4" in first
    second = rows["worst case (the attacks run on the most examples)"]
    assert "60.0%" in second and "n=10" in second
