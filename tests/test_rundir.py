"""``RunDir``: one reader of run directories (config, eps, checkpoint choice, model, test data, results),
and the config's ``eval.checkpoint`` honoured by every command that takes a run."""

import json
import sys
import types

import pytest
import torch
import yaml

import attnguard
from attnguard.cli import main
from attnguard.errors import CheckpointError, ConfigError
from attnguard.io import FORMAT, atomic_torch_save, export_safetensors, weights_fingerprint
from attnguard.rundir import RunDir, parse_eps

CONFIG = {"data": {"name": "fake-digits", "root": "/some/root"}, "model": {"name": "lenet", "width": 0.25},
          # the new nested defense section and an old flat key: RunDir returns both as written
          "defense": {"preset": "madry+aad", "aad": {"alpha": 0.5}, "aad_beta": 2.0},
          "adversary": {"eps": 0.3}, "seed": 3}


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def always(cls: int, num_classes: int = 10):
    """A tiny LeNet that predicts ``cls`` for every input (its classifier bias dominates)."""
    model = attnguard.create_model("lenet", width=0.25, num_classes=num_classes)
    head = model.net.fc2
    with torch.no_grad():
        head.weight.mul_(1e-3)
        head.bias.zero_()
        head.bias[cls] = 100.0
    return model.eval()


def save(model, path, config=None):
    ckpt = {"format": FORMAT, "model_config": model.config, "model": model.state_dict()}
    if config is not None:
        ckpt["config"] = config
    atomic_torch_save(ckpt, path)
    return path


def make_run(path, config=CONFIG, best=0, last=1):
    """A run directory whose best.pt always predicts class ``best`` and last.pt class ``last``."""
    path.mkdir(parents=True)
    if config is not None:
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    for name, cls in (("best", best), ("last", last)):
        if cls is not None:
            save(always(cls), path / "checkpoints" / f"{name}.pt", config)
    return path


def predicted(model) -> int:
    return int(model(torch.rand(1, 1, 28, 28)).argmax(1))


def with_checkpoint(which):
    return {**CONFIG, "eval": {"checkpoint": which}}


# ---------------------------------------------------------------- construction and config
def test_config_is_the_file_as_written(tmp_path):
    run = RunDir(make_run(tmp_path / "r"))
    assert run.config == CONFIG and run.name == "r" and run.path == tmp_path / "r"
    assert run.get("defense.aad.alpha") == 0.5 and run.get("defense.aad_beta") == 2.0
    assert run.get("defense.nope") is None and run.get("defense.preset.deeper", "d") == "d"
    assert run.dataset == "fake-digits" and run.data_root == "/some/root" and run.seed == 3
    assert "fake-digits" in run.config_text


def test_missing_or_broken_directories_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such run directory"):
        RunDir(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        RunDir(bad)
    assert "\n" not in str(e.value)
    (bad / "config.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        RunDir(bad)
    assert RunDir(bad, config={}).config == {}  # a caller may still look at the rest of it


def test_eps_is_the_eval_eps_else_the_training_eps(tmp_path):
    run = RunDir(make_run(tmp_path / "a"))
    assert run.eps == 0.3
    assert RunDir(tmp_path / "a", config={**CONFIG, "eval": {"eps": 0.1}}).eps == 0.1
    assert RunDir(tmp_path / "a", config={**CONFIG, "adversary": {"eps": "8/255"}}).eps == pytest.approx(8 / 255)
    with pytest.raises(ConfigError, match="pass eps"):
        _ = RunDir(tmp_path / "a", config={"data": {"name": "x"}}).eps
    with pytest.raises(ConfigError, match="data.name"):
        _ = RunDir(tmp_path / "a", config={}).dataset
    assert parse_eps(" 2/255 ") == pytest.approx(2 / 255) and parse_eps(1) == 1.0
    with pytest.raises(ConfigError):
        parse_eps("eight")


# ---------------------------------------------------------------- checkpoints and model
def test_checkpoint_follows_eval_checkpoint(tmp_path):
    plain = RunDir(make_run(tmp_path / "plain"))
    assert plain.checkpoint().name == "best.pt" and plain.checkpoint("last").name == "last.pt"
    assert predicted(plain.model()) == 0 and predicted(plain.model(which="last")) == 1
    last = RunDir(make_run(tmp_path / "last", with_checkpoint("last")))
    assert last.checkpoint().name == "last.pt" and predicted(last.model()) == 1
    assert last.checkpoint("best").name == "best.pt"  # an explicit choice wins over the config
    # io.load_model reads run directories through RunDir, so it follows the config too
    assert predicted(attnguard.load_model(tmp_path / "last")) == 1
    assert predicted(attnguard.load_model(tmp_path / "plain")) == 0
    with pytest.raises(ConfigError, match="best, last"):
        RunDir(tmp_path / "plain").checkpoint("middle")


def test_checkpoint_falls_back_to_the_one_there_is(tmp_path):
    only_last = RunDir(make_run(tmp_path / "a", best=None, last=1))
    assert only_last.checkpoint().name == "last.pt" and only_last.has_checkpoint()
    only_best = RunDir(make_run(tmp_path / "b", with_checkpoint("last"), best=0, last=None))
    assert only_best.checkpoint().name == "best.pt"
    none = RunDir(make_run(tmp_path / "c", best=None, last=None))
    assert not none.has_checkpoint()
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        none.checkpoint()


def test_checkpoint_and_export_files(tmp_path):
    run = make_run(tmp_path / "r", with_checkpoint("last"))
    ckpt = RunDir(run / "checkpoints" / "best.pt")
    assert ckpt.checkpoint() == run / "checkpoints" / "best.pt" and ckpt.checkpoint("last") == ckpt.checkpoint()
    assert ckpt.name == "best" and ckpt.path == run / "checkpoints"
    assert ckpt.config["eval"] == {"checkpoint": "last"} and ckpt.dataset == "fake-digits"  # stored in the .pt
    assert predicted(ckpt.model()) == 0
    export_safetensors(always(7), tmp_path / "w.safetensors")
    weights = RunDir(tmp_path / "w.safetensors")
    assert predicted(weights.model()) == 7
    with pytest.raises(ConfigError, match="without a run config"):
        _ = weights.config
    # the model section comes from the model config every export holds: the same keys a run writes
    assert weights.get("model.name") == "lenet" and weights.get("model.width") == 0.25
    assert weights.get("model.options") == {k: v for k, v in always(7).config["kwargs"].items() if k != "width"}
    # a directory without config.yaml: the config stored in its checkpoint
    bare = make_run(tmp_path / "bare", None)
    save(always(2), bare / "checkpoints" / "best.pt", {"data": {"name": "stored"}})
    assert RunDir(bare).dataset == "stored" and RunDir(bare).config_text is None


# ---------------------------------------------------------------- data and results
def fake_data(monkeypatch, n=16, label=1):
    g = torch.Generator().manual_seed(0)
    test = types.SimpleNamespace(images=torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                                 labels=torch.full((n,), label, dtype=torch.int64))
    info = types.SimpleNamespace(num_classes=10, input_size=(1, 28, 28), class_names=[str(i) for i in range(10)],
                                 mean=(0.0,), std=(1.0,))
    seen = []
    # the real module's names stay (a lazy ``from ..data import DATASETS`` elsewhere must still work when
    # this test runs first), with load_dataset replaced
    import attnguard.data as real

    mod = types.ModuleType("attnguard.data")
    mod.__dict__.update({k: v for k, v in vars(real).items() if k != "__name__"})

    def load_dataset(name, root=None, **kw):
        seen.append((name, root))
        return types.SimpleNamespace(info=info, train=test, test=test)

    mod.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "attnguard.data", mod)
    return test, seen


def test_test_examples_are_the_first_n_as_floats(tmp_path, monkeypatch):
    test, seen = fake_data(monkeypatch)
    x, y = RunDir(make_run(tmp_path / "r")).test_examples(5)
    assert seen == [("fake-digits", "/some/root")]
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, test.images[:5].float() / 255) and torch.equal(y, test.labels[:5])
    assert len(RunDir(tmp_path / "r").test_examples(100)[1]) == 16


def test_evals_metrics_and_train_info(tmp_path):
    run = make_run(tmp_path / "r")
    for name, clean in (("eval-b.json", 0.2), ("eval.json", 0.9), ("eval-aa.json", 0.5)):
        (run / name).write_text(json.dumps({"clean": clean}))
    rd = RunDir(run)
    assert [(p.name, e["clean"]) for p, e in rd.evals()] == [("eval.json", 0.9), ("eval-aa.json", 0.5),
                                                              ("eval-b.json", 0.2)]
    (run / "eval-b.json").write_text("{cut")
    with pytest.raises(CheckpointError, match="eval-b.json is not valid JSON"):
        rd.evals()
    notes = []
    assert [p.name for p, _ in rd.evals(notes)] == ["eval.json", "eval-aa.json"]
    assert notes and "eval-b.json" in notes[0] and "left out" in notes[0]
    assert rd.metrics() == [] and rd.train_info() == {} and rd.analysis() is None
    (run / "metrics.jsonl").write_text('{"step": 1, "seconds": 2.0}\n\n{"step": 2, "seconds": 4.0}\n{"step": 3, "se')
    (run / "train.json").write_text('{"seconds": 9.5}')
    assert [m["step"] for m in rd.metrics()] == [1, 2] and rd.train_info() == {"seconds": 9.5}


def test_an_export_reads_only_its_own_evaluations(tmp_path):
    """Two exports in one folder: ``attnguard eval`` writes both files there, and each export's evals()
    holds its own (the file records the checkpoint it measured); a file from before that key is kept only
    where the export is alone in its folder."""
    export_safetensors(always(7), tmp_path / "a.safetensors")
    export_safetensors(always(3), tmp_path / "b.safetensors")
    (tmp_path / "eval.json").write_text(json.dumps({"clean": 0.1, "checkpoint": "a.safetensors"}))
    (tmp_path / "eval-pgd-20-n10.json").write_text(json.dumps({"clean": 0.2, "checkpoint": "b.safetensors"}))
    (tmp_path / "eval-old.json").write_text(json.dumps({"clean": 0.3}))
    notes = []
    a = RunDir(tmp_path / "a.safetensors").evals(notes)
    assert [(p.name, e["clean"]) for p, e in a] == [("eval.json", 0.1)]
    assert notes == ["a.safetensors: 1 evaluation file(s) beside it measured other weights (the checkpoint name "
                     "and weights each records) and were left out, e.g. eval-pgd-20-n10.json",
                     "a.safetensors: eval-old.json beside it do(es) not say which model was evaluated, and other "
                     "model files share the folder; left out"]
    b = RunDir(tmp_path / "b.safetensors").evals()
    assert [(p.name, e["clean"]) for p, e in b] == [("eval-pgd-20-n10.json", 0.2)]
    # a run's evaluation of last.pt copied beside that checkpoint's export: the weights say it is this model
    fp = weights_fingerprint(attnguard.load_model(tmp_path / "b.safetensors"))
    (tmp_path / "eval-run.json").write_text(json.dumps({"clean": 0.4, "checkpoint": "last.pt", "weights": fp}))
    assert [p.name for p, _ in RunDir(tmp_path / "b.safetensors").evals()][-1] == "eval-run.json"
    assert "eval-run.json" not in [p.name for p, _ in RunDir(tmp_path / "a.safetensors").evals()]
    assert len(RunDir(tmp_path).evals()) == 4  # a folder given as a run directory: every file, as before
    alone = tmp_path / "alone"
    alone.mkdir()
    export_safetensors(always(7), alone / "c.safetensors")
    (alone / "eval.json").write_text(json.dumps({"clean": 0.3}))
    assert [p.name for p, _ in RunDir(alone / "c.safetensors").evals()] == ["eval.json"]


# ---------------------------------------------------------------- eval.checkpoint through the CLI
@pytest.fixture
def used(monkeypatch):
    """The checkpoint file of every model a command loads."""
    paths = []
    model = RunDir.model

    def spy(self, device="cpu", which=None):
        paths.append(self.checkpoint(which))
        return model(self, device, which)

    monkeypatch.setattr(RunDir, "model", spy)
    return paths


@pytest.mark.parametrize("which,clean", [("last", 1.0), ("best", 0.0)])
def test_eval_checkpoint_is_what_eval_evaluates(tmp_path, monkeypatch, used, which, clean):
    fake_data(monkeypatch, label=1)  # best.pt always says 0, last.pt always 1
    run = make_run(tmp_path / "r", with_checkpoint(which))
    assert main(["eval", str(run), "--attacks", "fgsm", "--n-examples", "8", "--device", "cpu"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["clean"] == clean and ev["n_examples"] == 8
    assert used == [run / "checkpoints" / f"{which}.pt"]


def test_eval_checkpoint_last_for_explain_analyze_report_export(tmp_path, monkeypatch, used, capsys):
    fake_data(monkeypatch, label=1)
    run = make_run(tmp_path / "r", with_checkpoint("last"))
    last = run / "checkpoints" / "last.pt"
    assert main(["explain", str(run), "--attack", "fgsm", "--n", "2", "--out", str(tmp_path / "g.png"),
                 "--device", "cpu"]) == 0
    assert used == [last]
    assert main(["analyze", str(run), "--attack", "fgsm", "--n-examples", "8", "--device", "cpu"]) == 0
    assert used == [last] * 2 and str(run / "analysis" / "analysis.json") in capsys.readouterr().out
    assert json.loads((run / "analysis" / "analysis.json").read_text())["n_correct"] == 8  # last.pt: all right
    (run / "analysis" / "analysis.json").unlink()  # so the report computes one, with the run's model
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    assert used == [last] * 4  # gallery and analysis
    assert main(["export", str(run), "--out", str(tmp_path / "m.safetensors")]) == 0
    assert used[-1] == last and predicted(attnguard.load_model(tmp_path / "m.safetensors")) == 1
    assert main(["export", str(run), "--which", "best", "--out", str(tmp_path / "b.safetensors")]) == 0
    assert used[-1] == run / "checkpoints" / "best.pt"


def test_the_final_evaluation_after_training_uses_eval_checkpoint(tmp_path, used):
    out = tmp_path / "run"
    argv = ["train", "--model", "lenet", "--set", "model.width=0.25", "--epochs", "1", "--set", "train.max_steps=2",
            "--set", "data.val_size=50", "--set", "train.val_steps=1", "--set", "adversary.steps=1",
            "--set", "eval.n_examples=20", "--set", "eval.attacks=[fgsm]", "--set", "train.progress=false",
            "--set", "eval.checkpoint=last", "--device", "cpu", "--seed", "1", "--out", str(out)]
    assert main(argv) == 0
    assert used == [out / "checkpoints" / "last.pt"]
    assert json.loads((out / "eval.json").read_text())["n_examples"] == 20


def test_errors_stay_one_line_through_the_cli(tmp_path, capsys):
    run = make_run(tmp_path / "r", {**CONFIG, "eval": {"checkpoint": "middle"}})
    assert main(["eval", str(run), "--attacks", "fgsm", "--n-examples", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "eval.checkpoint" in err
    (run / "config.yaml").write_text("{broken")
    for argv in (["eval", str(run)], ["explain", str(run), "--out", str(tmp_path / "g.png")],
                 ["report", str(run), "--markdown", str(tmp_path / "t.md")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "not valid YAML" in err, (argv, err)
