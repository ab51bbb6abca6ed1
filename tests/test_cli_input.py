"""Consistent CLI input (issue 15): eps as 8/255 everywhere, eps range checks in explain and analyze,
``explain --only-fooled``, the table title at 120 columns, evaluating a .safetensors export, attack-name
suggestions, and a --help that does not wait for torch."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from attnguard.cli import main
from attnguard.io import atomic_torch_save, export_safetensors
from attnguard.rundir import RunDir
from _support import is_png, load_mnist, train_tiny_lenet

TINY = ["--model", "lenet", "--set", "model.width=0.25", "--epochs", "1", "--set", "train.max_steps=2",
        "--set", "data.val_size=50", "--set", "train.val_steps=1", "--set", "adversary.steps=1",
        "--set", "train.progress=false", "--device", "cpu", "--no-eval"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    pass


def _main(argv):
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage errors
        return e.code


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, request):
    """A run directory holding the tiny trained LeNet of _support (mnist-5k, eps 0.3): no training loop."""
    x, y = load_mnist(getattr(request.config, "cache", None))
    model = train_tiny_lenet(x, y)
    cfg = {"data": {"name": "mnist-5k"}, "model": {"name": "lenet"}, "adversary": {"eps": 0.3}, "seed": 0}
    run = tmp_path_factory.mktemp("input") / "tiny-run"
    atomic_torch_save({"format": "attnguard-checkpoint", "model_config": model.config, "model": model.state_dict(),
                       "config": cfg}, run / "checkpoints" / "best.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


# ---------------------------------------------------------------- eps as a fraction
def test_train_eps_flag_set_and_yaml_take_fractions(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _main(["train", *TINY, "--out", a, "--eps", "8/255", "--set", "eval.eps=4/255"]) == 0
    cfg = yaml.safe_load((a / "config.yaml").read_text())
    assert cfg["adversary"]["eps"] == 8 / 255 and cfg["eval"]["eps"] == 4 / 255
    file = tmp_path / "c.yaml"
    file.write_text("extends: aad/mnist5k-lenet-madry\nadversary:\n  eps: 16/255\n  step_size: 2/255\n")
    assert _main(["train", *TINY, "--config", file, "--out", b, "--set", "adversary.eps=8/255"]) == 0
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    assert cfg["adversary"]["eps"] == 8 / 255 and cfg["adversary"]["step_size"] == 2 / 255


@pytest.mark.parametrize("argv", [["--eps", "8/0"], ["--eps", "8/x"], ["--set", "adversary.eps=8/0"],
                                  ["--set", "adversary.eps=8/x"], ["--set", "eval.eps=1/0"]])
def test_bad_fractions_exit_2_with_one_line(tmp_path, capsys, argv):
    out = tmp_path / "run"
    assert _main(["train", *TINY, "--out", out, *argv]) == 2
    _one_line_error(capsys, argv[1].split("=")[-1])
    assert not out.exists()


def test_eval_eps_fraction_reaches_eval_json(tiny_run, tmp_path, capsys):
    out = tmp_path / "ev.json"
    assert _main(["eval", tiny_run, "--eps", "8/255", "--attacks", "fgsm", "--n-examples", "10", "--device", "cpu",
                  "--out", out]) == 0
    assert json.loads(out.read_text())["eps"] == 8 / 255


# ---------------------------------------------------------------- eps range checks
@pytest.mark.parametrize("cmd", ["explain", "analyze"])
@pytest.mark.parametrize("eps", ["2", "-1", "300/255"])
def test_explain_and_analyze_range_check_eps(tiny_run, tmp_path, capsys, cmd, eps):
    assert _main([cmd, tiny_run, "--eps", eps, "--out", tmp_path / "x.png", "--device", "cpu"]) == 2
    _one_line_error(capsys, "eps must be in [0, 1]")
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- explain --only-fooled
def _fooled_truth(run, indices):
    """Clean predictions of the run's model on the given test indices, computed here, apart from explain."""
    r = RunDir(run)
    x, y = r.test_examples()
    with torch.no_grad():
        pred = r.model("cpu")(x[indices]).argmax(1)
    return pred, y[indices]


def test_explain_only_fooled_shows_fooled_examples_only(tiny_run, tmp_path, capsys):
    plain = tmp_path / "plain.png"
    assert _main(["explain", tiny_run, "--attack", "fgsm", "--eps", "0.15", "--n", "8", "--out", plain,
                  "--device", "cpu"]) == 0
    shown = json.loads(plain.with_suffix(".json").read_text())
    ok = [t == c and t != a for t, c, a in zip(shown["true"], shown["pred_clean"], shown["pred_adv"])]
    assert shown["indices"] == list(range(8)) and not all(ok)  # the first 8 include examples not fooled

    out = tmp_path / "fooled.png"
    assert _main(["explain", tiny_run, "--attack", "fgsm", "--eps", "0.15", "--n", "8", "--only-fooled",
                  "--out", out, "--device", "cpu"]) == 0
    assert is_png(out)
    got = json.loads(out.with_suffix(".json").read_text())
    assert got["only_fooled"] and got["shown"] == 8 and len(got["indices"]) == 8
    assert got["indices"] == sorted(set(got["indices"])) and got["indices"] != list(range(8))
    # every row: correct clean and wrong after the attack (predictions of the gallery's own panels) ...
    assert all(t == c and t != a for t, c, a in zip(got["true"], got["pred_clean"], got["pred_adv"]))
    # ... and the indices point at those test examples (labels and clean predictions recomputed here)
    pred, labels = _fooled_truth(tiny_run, got["indices"])
    assert labels.tolist() == got["true"] and pred.tolist() == got["true"]


def test_explain_only_fooled_says_when_it_found_fewer(tiny_run, tmp_path, capsys):
    out = tmp_path / "few.png"
    # a tiny radius fools a handful of the 1,000 test digits: fewer than asked for, and the command says so
    assert _main(["explain", tiny_run, "--attack", "fgsm", "--eps", "0.005", "--n", "16", "--only-fooled",
                  "--out", out, "--device", "cpu"]) == 0
    got = json.loads(out.with_suffix(".json").read_text())
    assert 0 < got["shown"] < 16 and got["scanned"] == 1000
    assert f"found only {got['shown']} fooled examples of the 16" in capsys.readouterr().out
    # none fooled: nothing to draw, one line, exit 2
    assert _main(["explain", tiny_run, "--attack", "fgsm", "--eps", "0", "--n", "4", "--only-fooled",
                  "--out", tmp_path / "none.png", "--device", "cpu"]) == 2
    _one_line_error(capsys, "fooled none of the 1000 test examples")
    assert not (tmp_path / "none.png").exists()


# ---------------------------------------------------------------- the table title
def test_table_title_does_not_break_words_at_120_columns():
    from rich.console import Console

    from attnguard.evaluation.results import format_table

    model = "20250101-120000-mnist-5k-lenet-madry+aad-seed2-a-long-run-name (lenet)"
    result = {"dataset": "mnist-5k", "model": model, "eps": 0.3, "norm": "linf", "n_examples": 1000, "clean": 0.99,
              "attacks": {"fgsm": 0.9, "pgd-20": 0.5}, "worst_case": 0.5, "seconds": {"fgsm": 1.0, "pgd-20": 2.0},
              "sanity": []}
    console = Console(width=120, record=True)
    console.print(format_table(result))
    text = console.export_text()
    assert f"model: {model}" in text  # the run name on one line, not folded
    title_words = {w for line in text.splitlines()[:2] for w in line.split()}
    for w in ["model:", model.split()[0], "(lenet)", "dataset:", "mnist-5k", "eps:", "0.3", "(linf)", "examples:",
              "1000"]:
        assert w in title_words, text


@pytest.mark.parametrize("columns", [120, 200])
def test_eval_prints_the_title_unbroken_on_a_wide_terminal(tiny_run, tmp_path, capsys, monkeypatch, columns):
    run = tmp_path / "20250101-120000-mnist-5k-lenet-madry+aad-seed2-a-long-run-name"
    shutil.copytree(tiny_run, run)
    monkeypatch.setenv("COLUMNS", str(columns))  # rich's width where stdout is no terminal
    assert _main(["eval", run, "--attacks", "fgsm", "--n-examples", "10", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].strip() == f"model: {run.name} (lenet)", lines[:3]
    assert lines[1].split() == ["dataset:", "mnist-5k", "·", "eps:", "0.3", "(linf)", "·", "examples:", "10"]


# ---------------------------------------------------------------- exports
def test_eval_of_an_export_equals_eval_of_the_run(tiny_run, tmp_path, capsys):
    export = tmp_path / "m.safetensors"
    assert _main(["export", tiny_run, "--out", export]) == 0
    common = ["--eps", "0.3", "--n-examples", "20", "--attacks", "fgsm", "--device", "cpu"]
    assert _main(["eval", tiny_run, *common, "--out", tmp_path / "run.json"]) == 0
    assert _main(["eval", export, "--dataset", "mnist-5k", *common, "--out", tmp_path / "export.json"]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("run.json", "export.json"))
    assert b["dataset"] == "mnist-5k" and b["n_examples"] == 20
    for key in ("clean", "attacks", "worst_case", "eps", "per_example"):
        assert a[key] == b[key], key
    # the export records its run's dataset and eps, so neither flag is needed
    assert _main(["eval", export, "--n-examples", "20", "--attacks", "fgsm", "--device", "cpu",
                  "--out", tmp_path / "meta.json"]) == 0
    c = json.loads((tmp_path / "meta.json").read_text())
    assert c["attacks"] == a["attacks"] and c["eps"] == 0.3


def test_export_without_dataset_needs_the_flag(tiny_run, tmp_path, capsys):
    bare = tmp_path / "bare.safetensors"
    export_safetensors(RunDir(tiny_run).model(), bare)  # the library call records no dataset or eps
    assert _main(["eval", bare, "--eps", "0.3", "--attacks", "fgsm", "--device", "cpu"]) == 2
    _one_line_error(capsys, "no dataset", "--dataset")
    assert _main(["eval", bare, "--dataset", "mnist-5k", "--attacks", "fgsm", "--device", "cpu"]) == 2
    _one_line_error(capsys, "no eps", "--eps")
    assert not list(tmp_path.glob("*.json"))
    # a run knows its dataset: another one would mislabel the numbers
    assert _main(["eval", tiny_run, "--dataset", "fashion-mnist", "--attacks", "fgsm", "--device", "cpu"]) == 2
    _one_line_error(capsys, "mnist-5k", "fashion-mnist")


@pytest.mark.parametrize("name", ["m.pt", "m", "m.safetensors.bak"])
def test_export_refuses_a_name_that_is_not_safetensors(tiny_run, tmp_path, capsys, name):
    assert _main(["export", tiny_run, "--out", tmp_path / name]) == 2
    _one_line_error(capsys, ".safetensors")
    assert not (tmp_path / name).exists()


# ---------------------------------------------------------------- typos
@pytest.mark.parametrize("argv", [["eval", "{run}", "--attacks", "fgsm,pdg-20", "--device", "cpu"],
                                  ["explain", "{run}", "--attack", "pdg-20", "--device", "cpu"]])
def test_mistyped_attack_gets_a_suggestion(tiny_run, tmp_path, capsys, argv):
    argv = [str(tiny_run) if a == "{run}" else a for a in argv] + ["--out", str(tmp_path / "x.png")]
    if argv[0] == "eval":
        argv[-1] = str(tmp_path / "x.json")
    assert _main(argv) == 2
    _one_line_error(capsys, "pdg-20", "Did you mean 'pgd-20'?")


@pytest.mark.parametrize("argv", [
    ["train", *TINY, "--set", "eval.attacks=[fgsm,pdg-20]"],  # checked although --no-eval: resume may evaluate
    ["train", "--set", "eval.attacks=[pdg-20@100]"],
    ["sweep", "--grid", "defense.aad.alpha=0,1", "--eval-attacks", "fgsm,pdg-20"],
    ["sweep", "--grid", "eval.attacks=[fgsm],[pdg-20]"],
])
def test_mistyped_attack_in_config_and_sweep_gets_a_suggestion(tmp_path, capsys, argv):
    out = tmp_path / "out"
    assert _main([*argv, "--out", out]) == 2
    _one_line_error(capsys, "pdg-20", "Did you mean 'pgd-20'?")
    assert not out.exists()


# ---------------------------------------------------------------- AutoAttack's breakdown, eval to report
def _table_rows(text):
    return {r[0]: r for r in ([c.strip() for c in l.strip().strip("│").split("│")] for l in text.splitlines()
                              if "│" in l)}


def test_autoattack_breakdown_in_eval_json_table_and_report(tiny_run, tmp_path, capsys, monkeypatch):
    from attnguard.attacks.autoattack import AutoAttack

    real = AutoAttack.__init__

    def small(self, eps, **kw):  # the standard settings are checked in tests/attacks/test_autoattack.py
        real(self, eps, **{**kw, "version": "custom", "steps": 5, "n_queries": 50, "n_target_classes": 2})

    monkeypatch.setattr(AutoAttack, "__init__", small)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # report reads every eval*.json of the run: a copy of its own
    assert _main(["eval", run, "--attacks", "pgd-20,autoattack@24", "--n-examples", "48", "--eps", "0.1",
                  "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    ev = json.loads((run / "eval.json").read_text())
    entry = ev["autoattack_components"]["autoattack"]
    assert entry["n_examples"] == 24 and list(entry["robust"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    robust = entry["robust"]
    assert list(robust.values()) == sorted(robust.values(), reverse=True) and robust["square"] == ev["attacks"][
        "autoattack"]
    assert robust["apgd-ce"] < ev["clean"]  # a setting where the rows carry numbers, not all 100 or 0
    rows = _table_rows(text)
    for c, acc in robust.items():  # the terminal: one row per component, with its n
        assert rows[f"after {c}"][1:3] == [f"{100 * acc:.2f}", "24"], text
    md = (run / "eval.md").read_text()
    assert all(f"| autoattack, after {c} | {100 * acc:.2f} | 24 |" in md for c, acc in robust.items())

    html, table = tmp_path / "r.html", tmp_path / "r.md"
    assert _main(["report", run, "--out", html, "--markdown", table]) == 0
    page = html.read_text()
    for c, acc in robust.items():
        assert f">autoattack, after {c}<" in page
    head, _, row = table.read_text().splitlines()[:3]
    cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in row.split("|")]))
    assert [k for k in cells if k.startswith("autoattack")] == ["autoattack"] + [f"autoattack, after {c}"
                                                                                  for c in robust]
    for c, acc in robust.items():
        assert cells[f"autoattack, after {c}"] == f"{100 * acc:.1f}"
    assert cells["n (examples)"] == "48 (autoattack 24; worst case 24)"  # the table mixes subsets: it says so


# ---------------------------------------------------------------- progress by queries
@pytest.mark.parametrize("attack", ["square-40", "rays-40"])
def test_eval_shows_black_box_progress_by_queries(tiny_run, tmp_path, monkeypatch, attack):
    import io

    import tqdm.auto

    bars = []

    class Seen(tqdm.auto.tqdm):  # tqdm as the evaluation builds it, drawn on a terminal-like buffer
        def __init__(self, *a, **kw):
            super().__init__(*a, **{**kw, "disable": False, "file": io.StringIO()})
            bars.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", Seen)
    assert _main(["eval", tiny_run, "--attacks", attack, "--n-examples", "4", "--eps", "0.01", "--device", "cpu",
                  "--out", tmp_path / "ev.json"]) == 0
    queries = [b for b in bars if str(b.desc).endswith("queries")]
    # at eps 0.01 the digits stay robust: the search spends its whole budget, shown as queries used of 40
    assert queries and all(b.total == 40 and b.n == 40 and b.unit == "query" for b in queries), \
        [(b.desc, b.total, b.n) for b in bars]


# ---------------------------------------------------------------- fast help
def test_parser_and_package_import_no_torch():
    code = ("import sys, attnguard, attnguard.cli; attnguard.cli.build_parser(); "
            "print('torch' in sys.modules, attnguard.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False", out
    import attnguard  # the lazy names still resolve

    assert callable(attnguard.create_model) and attnguard.attacks.__name__ == "attnguard.attacks"
    assert attnguard.models.create_model is attnguard.create_model  # any subpackage, as before
    import attnguard.report  # its parser is imported by the CLI; build_report still resolves on first use

    assert attnguard.report.build_report.__module__ == "attnguard.report.build"
    with pytest.raises(AttributeError):
        attnguard.report.no_such_name
    assert {"create_model", "load_model", "evaluate", "MODELS"} <= set(dir(attnguard))
    with pytest.raises(AttributeError):
        attnguard.no_such_name


def test_python_m_attnguard_help_works():
    done = subprocess.run([sys.executable, "-m", "attnguard", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage: attnguard" in done.stdout and "explain" in done.stdout
