"""One source for the name of a run's further evaluations (evaluation/run.py: eval_file_name): what
``attnguard eval`` picks beside an existing eval.json is what ``attnguard sweep --eval-attacks`` looks
for to decide that a run is already evaluated. No model is evaluated here (milliseconds)."""

import pytest

from attnguard.errors import ConfigError
from attnguard.evaluation.run import choose_eval_out, eval_file_name
from attnguard.sweep import runner


@pytest.mark.parametrize("attacks,n,name", [
    (["fgsm"], 10, "eval-fgsm-n10.json"),
    (["fgsm", "pgd-20"], 1000, "eval-fgsm+pgd-20-n1000.json"),
    (["autoattack@300"], 1000, "eval-autoattack-300-n1000.json"),
    (["transfer:runs/a b:pgd-20"], 50, "eval-transfer-runs-a-b-pgd-20-n50.json"),
    (["a3s0.5-pgd-10"], 7, "eval-a3s0.5-pgd-10-n7.json"),
    (["@@"], 5, "eval-attack-n5.json"),  # nothing left of a name: a placeholder, never an empty tag
])
def test_names(attacks, n, name):
    assert eval_file_name(attacks, n) == name


def test_the_sweep_uses_the_evaluations_function():
    # not a copy that could drift: the sweep's name is the evaluation's own function
    assert runner.eval_file_name is eval_file_name


def test_choose_eval_out_first_then_named(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    attacks = ["fgsm", "autoattack@300"]
    first = choose_eval_out(run, None, attacks, 1000)
    assert first == run / "eval.json"
    first.write_text("{}")
    second = choose_eval_out(run, None, attacks, 1000)
    assert second == run / eval_file_name(attacks, 1000) == run / "eval-fgsm+autoattack-300-n1000.json"
    second.with_suffix(".md").write_text("")  # the .md alone already marks the name as taken
    with pytest.raises(ConfigError, match="exists"):
        choose_eval_out(run, None, attacks, 1000)
    assert choose_eval_out(run, None, attacks, 1000, force=True) == second
    assert choose_eval_out(run, None, attacks, 500) == run / "eval-fgsm+autoattack-300-n500.json"


def test_choose_eval_out_beside_a_file(tmp_path):
    # a checkpoint or export: the evaluation goes into the folder that holds it
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    (tmp_path / "eval.json").write_text("{}")
    assert choose_eval_out(f, None, ["pgd-20"], 100) == tmp_path / "eval-pgd-20-n100.json"
