"""CLI smoke test: listings, help, a tiny real ``attnguard train`` and the files it writes,
``attnguard eval`` on it, and ``attnguard export`` (safetensors read back by ``load_model``)."""

import json
from pathlib import Path

import pytest
import torch
import yaml

import attnguard
from attnguard.cli import main
from attnguard.evaluation.results import KEYS
from attnguard.errors import AttnGuardError
from attnguard.train.config import resolve_config
from attnguard.train.snapshots import read_snapshot

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "lenet", "--set", "model.width=0.25", "--epochs", "1", "--set", "train.max_steps=10",
        "--set", "data.val_size=100", "--set", "train.val_steps=2", "--set", "adversary.steps=2",
        "--set", "eval.n_examples=100", "--set", "train.log_every=4", "--set", "train.progress=false",
        "--device", "cpu", "--seed", "5"]


def _main(argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("what,expect", [
    ("datasets", ["mnist-5k", "cifar10", "imagefolder:<dir>", "parquet:<dir>"]),
    ("models", ["lenet", "small-cnn", "resnet9"]),
    ("defenses", ["madry", "madry+aad", "alp+aad", "at+alp", "trades", "afm"]),
    ("regularizers", ["aad", "at", "afm"]),
    ("attacks", ["fgsm", "pgd", "autoattack"]),
    ("configs", ["aad/cifar10-resnet9-madry+aad"]),
])
def test_list(capsys, monkeypatch, what, expect):
    monkeypatch.chdir(REPO)
    assert main(["list", what]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) >= len(expect)
    names = {l.split()[0] for l in lines}
    for name in expect:
        assert any(n == name or n.startswith(name) for n in names), (name, out)
    assert all(len(l.split(None, 1)) == 2 for l in lines), "every entry has a description"


def test_help_reads_well(capsys):
    assert _main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("train", "eval", "explain", "analyze", "report", "export", "list"):
        assert cmd in out
    assert "exit status" in out and "3 training diverged" in out and "torchrun" in out
    assert _main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--dataset", "--model", "--defense", "--epochs", "--eps", "--resume", "--set",
                 "--out", "--no-eval"):
        assert flag in out
    assert _main(["--version"]) == 0
    assert attnguard.__version__ in capsys.readouterr().out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_train_writes_the_documented_files(run):
    assert sorted(p.name for p in run.iterdir()) == ["attention", "checkpoints", "config.yaml", "eval.json",
                                                      "eval.md", "metrics.jsonl", "train.json"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    # attention/: one snapshot before the first step (epoch 0) and one per epoch end (AAD Fig. 6),
    # train.attention_snapshots (default 8) test examples each
    assert sorted(p.name for p in (run / "attention").iterdir()) == ["epoch-000.npz", "epoch-001.npz"]
    snap = read_snapshot(run / "attention" / "epoch-001.npz")
    assert snap["epoch"] == 1 and snap["step"] == 10 and snap["attack"] == "pgd-2"
    assert snap["clean_cam"].shape[0] == snap["adv_cam"].shape[0] == len(snap["labels"]) == 8
    # config.yaml: the full resolved config, which resolves to itself
    cfg = resolve_config(str(run / "config.yaml"))
    assert cfg.model.width == 0.25 and cfg.train.max_steps == 10 and cfg.seed == 5
    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg.to_dict()
    # metrics.jsonl: train lines every log_every steps (and at the end), then one val line per epoch
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in recs] == [("train", 4), ("train", 8), ("train", 10), ("val", 10)]
    for r in recs[:-1]:
        assert {"epoch", "step", "split", "lr", "seconds", "loss", "ce", "acc_clean", "acc_adv",
                "aad_rect", "aad_pres"} <= r.keys()
        assert all(isinstance(v, float) for k, v in r.items() if k not in ("epoch", "step", "split"))
    assert {"epoch", "step", "split", "seconds", "acc_clean", "acc_adv", "n", "attack"} <= recs[-1].keys()
    assert recs[-1]["n"] == 100 and recs[-1]["attack"] == "pgd-2"
    info = json.loads((run / "train.json").read_text())
    assert info["steps"] == 10 and info["epochs"] == 1 and info["world_size"] == 1 and info["seconds"] > 0
    assert info["cpu_seconds"] > 0
    assert info["system"]["device"] == "cpu" and info["system"]["torch"] == torch.__version__
    # checkpoints
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["format"] == "attnguard-checkpoint" and ck["step"] == 10 and ck["epoch"] == 1
    assert {"model", "model_config", "optimizer", "scheduler", "rng", "config", "best_score"} <= ck.keys()
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["best_score"] == pytest.approx(recs[-1]["acc_adv"], abs=1e-5)  # clean accuracy breaks ties
    # eval.json / eval.md
    ev = json.loads((run / "eval.json").read_text())
    assert set(KEYS) <= ev.keys()
    assert ev["n_examples"] == 100 and ev["eps"] == 0.3
    assert list(ev["attacks"]) == ["fgsm", "pgd-20", "cw-20", "autoattack"]  # the default: autoattack@100
    assert 0 <= ev["worst_case"] <= min(ev["attacks"].values()) <= ev["clean"] <= 1
    md = (run / "eval.md").read_text()
    assert md.startswith("# Robustness evaluation") and "worst case" in md


def test_eval_writes_out(run, tmp_path, capsys):
    out = tmp_path / "ev.json"
    assert main(["eval", str(run), "--attacks", "fgsm,pgd-5", "--n-examples", "50", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert "pgd-5" in capsys.readouterr().out
    ev = json.loads(out.read_text())
    assert list(ev["attacks"]) == ["fgsm", "pgd-5"] and ev["n_examples"] == 50
    assert (tmp_path / "ev.md").is_file()


def _snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_eval_never_overwrites_another_evaluation(run, tmp_path, capsys):
    before = _snapshot(run)
    argv = ["eval", str(run), "--attacks", "fgsm", "--n-examples", "10", "--device", "cpu"]
    assert main(argv) == 0
    extra = run / "eval-fgsm-n10.json"
    assert f"wrote {extra}" in capsys.readouterr().out
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if k in before} == before  # train's eval.json and eval.md untouched
    assert set(after) - set(before) == {extra.relative_to(run), extra.with_suffix(".md").relative_to(run)}
    assert json.loads(extra.read_text())["n_examples"] == 10
    # the same evaluation again: refused before evaluating (one line), unless --force
    extra.write_text("{}")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(extra) in err[0] and "--force" in err[0] and "--out" in err[0]
    assert extra.read_text() == "{}"
    assert main(argv + ["--force"]) == 0
    assert json.loads(extra.read_text())["n_examples"] == 10
    # an explicit --out that exists: refused, unless --force
    out = tmp_path / "mine.json"
    out.write_text("keep")
    assert main(argv + ["--out", str(out)]) == 2
    assert out.read_text() == "keep" and "exists" in capsys.readouterr().err
    assert main(argv + ["--out", str(out), "--force"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and json.loads(out.read_text())["n_examples"] == 10
    for p in (extra, extra.with_suffix(".md")):
        p.unlink()  # leave the shared run as train wrote it


def test_resume_with_conflicting_flags_changes_nothing(run, capsys):
    before = _snapshot(run)
    for extra, keys in [(["--defense", "trades"], "defense.preset"), (["--set", "train.epochs=2"], "train.epochs"),
                        (["--eps", "0.1", "--lr", "0.5"], "adversary.eps, optim.lr")]:
        assert _main(["train", "--out", str(run), "--resume", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and keys in err[0], err
        assert "resumed" not in err[0]
        assert _snapshot(run) == before


def test_resume_of_a_finished_run_says_complete(run, capsys):
    before = _snapshot(run)
    # harmless keys are allowed; the run is finished, so nothing trains and nothing is rewritten
    assert main(["train", "--out", str(run), "--resume", "--device", "cpu", "--set", "train.progress=true",
                 "--set", "eval.n_examples=5"]) == 0
    out = capsys.readouterr().out
    assert "is complete" in out and "epoch 1, step 10" in out and "resumed" not in out
    assert _snapshot(run) == before


def test_export_safetensors(run, tmp_path, capsys):
    from safetensors import safe_open

    out = tmp_path / "model.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "attnguard-checkpoint" and meta["model"] == "lenet" and meta["num_classes"] == "10"
    mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
    assert len(mean) == len(std) == 1 and 0.1 < mean[0] < 0.2 and 0.25 < std[0] < 0.35  # MNIST statistics
    back = attnguard.load_model(out)
    ref = attnguard.load_model(run)
    assert not back.training and back.arch == "lenet" and back.num_classes == 10
    assert back.config == ref.config
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(back(x), ref(x))
    assert main(["export", str(run), "--out", str(tmp_path / "last.safetensors"), "--which", "last"]) == 0
    # the run's defense and seed travel with the weights: an export is labelled as its run is
    from attnguard.rundir import RunDir

    src, exp = RunDir(run), RunDir(out)
    assert meta["defense"] == src.get("defense.preset") and exp.get("defense.preset") == src.get("defense.preset")
    assert exp.seed == src.seed and exp.get("model.name") == "lenet" and exp.dataset == src.dataset


def test_set_reads_exponent_numbers():
    """YAML 1.1 (PyYAML) reads ``1e-3`` as a string; ``--set`` takes it as the number it looks like."""
    from attnguard.train.overrides import parse_set as _parse_set

    assert _parse_set(["optim.lr=1e-3", "train.epochs=2", "seed=7", "train.amp=off", "eval.attacks=[fgsm]",
                       "optim.grad_clip=null"]) == {
        "optim": {"lr": 1e-3, "grad_clip": None}, "train": {"epochs": 2, "amp": "off"}, "seed": 7,
        "eval": {"attacks": ["fgsm"]}}
    assert resolve_config(None, _parse_set(["optim.lr=2E-4"])).optim.lr == 2e-4
    # YAML 1.1 would make on/off booleans; the switches take them as words (the help's own example)
    assert _parse_set(["train.channels_last=on", "train.deterministic=true"]) == {
        "train": {"channels_last": "on", "deterministic": True}}
    assert resolve_config(None, _parse_set(["train.amp=off"])).train.amp == "off"


def test_config_file_reads_yaml11_words_and_exponents(tmp_path):
    """In a YAML file, ``amp: off`` is a YAML 1.1 boolean and ``lr: 1e-3`` a string; both mean what they look like."""
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  amp: off\n  channels_last: on\n  epochs: 2\noptim:\n  lr: 1e-3\n  weight_decay: 5E-4\n")
    cfg = resolve_config(str(f))
    assert cfg.train.amp == "off" and cfg.train.channels_last == "on" and cfg.train.epochs == 2
    assert cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 5e-4
    f.write_text("optim:\n  lr: fast\n")
    with pytest.raises(AttnGuardError, match="optim.lr must be a number"):
        resolve_config(str(f))
    f.write_text("train:\n  amp: yes\n")
    with pytest.raises(AttnGuardError, match="train.amp"):
        resolve_config(str(f))
