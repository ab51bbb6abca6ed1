"""A sweep of malformed invocations: each gives one clear line, exit code 2, no traceback,
and no file of an existing run changes.

A module fixture trains one tiny real run, snapshots every file (bytes and mtime), then every
bad invocation below runs against it (some point --out or --resume at it); the snapshot must be
unchanged at the end. CLI cases run in-process through ``attnguard.cli.main`` (fast); a few run
through a real subprocess to check the exit status and stderr for real.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnguard
from attnguard import AttnGuardError
from attnguard.cli import main

TINY = ["--model", "lenet", "--set", "model.width=0.25", "--epochs", "1", "--batch-size", "50",
        "--set", "train.max_steps=2", "--set", "data.val_size=50", "--set", "train.val_steps=1",
        "--set", "adversary.steps=1", "--set", "train.progress=false", "--device", "cpu"]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["train", *TINY, "--no-eval", "--out", "run"]) == 0
    finally:
        os.chdir(cwd)
    run = root / "run"
    files = root / "files"
    files.mkdir()
    ck = (run / "checkpoints" / "last.pt").read_bytes()
    (files / "empty.pt").write_bytes(b"")
    (files / "truncated.pt").write_bytes(ck[: len(ck) // 3])
    (files / "random.pt").write_bytes(os.urandom(4096))
    (files / "model.json").write_text(json.dumps({"model": "lenet"}))
    torch.save(attnguard.create_model("lenet", width=0.25).state_dict(), files / "state_dict.pt")
    (files / "nockpt").mkdir()
    (files / "emptyparquet").mkdir()
    (files / "imgfolder" / "train" / "a").mkdir(parents=True)
    yaml_cases = {
        "unknown_top.yaml": "bogus: 1\n",
        "unknown_section_key.yaml": "train:\n  bogus: 1\n",
        "wrong_type_int.yaml": "train:\n  epochs: three\n",
        "wrong_type_float.yaml": "optim:\n  lr: [1]\n",
        "wrong_type_bool.yaml": "train:\n  deterministic: maybe\n",
        "eps_negative.yaml": "adversary:\n  eps: -0.1\n",
        "eps_big.yaml": "adversary:\n  eps: 1.5\n",
        "steps_zero.yaml": "adversary:\n  steps: 0\n",
        "epochs_zero.yaml": "train:\n  epochs: 0\n",
        "lr_negative.yaml": "optim:\n  lr: -1\n",
        "optimizer.yaml": "optim:\n  optimizer: rmsprop\n",
        "schedule.yaml": "optim:\n  schedule: triangle\n",
        "malformed.yaml": "train: [epochs: 1\n  bad\n",
        "list.yaml": "- train\n- model\n",
        "section_list.yaml": "train: [1, 2]\n",
        "defense_unknown_key.yaml": "defense:\n  preset: madry\n  gamma: 3\n",
        "binary.yaml": None,
    }
    for name, text in yaml_cases.items():
        if text is None:
            (files / name).write_bytes(b"\xff\xfe\x00\x81garbage")
        else:
            (files / name).write_text(text)
    snap = _snapshot(run)
    listing = sorted(p.name for p in root.iterdir())
    os.chdir(root)
    try:
        yield {"root": root, "run": run, "files": files}
    finally:
        os.chdir(cwd)
    # after every case of this module: the existing run is byte-for-byte and mtime-for-mtime unchanged,
    # and no bad invocation created a run directory
    assert _snapshot(run) == snap
    assert sorted(p.name for p in root.iterdir()) == listing


def _f(name):
    return f"files/{name}"


CONFIG_CASES = [
    (["train", "--config", _f("unknown_top.yaml")], "unknown config key 'bogus'"),
    (["train", "--config", _f("unknown_section_key.yaml")], "train.bogus"),
    (["train", "--config", _f("wrong_type_int.yaml")], "train.epochs must be a whole number"),
    (["train", "--config", _f("wrong_type_float.yaml")], "optim.lr must be a number"),
    (["train", "--config", _f("wrong_type_bool.yaml")], "true or false"),
    (["train", "--config", _f("eps_negative.yaml")], "eps"),
    (["train", "--config", _f("eps_big.yaml")], "eps"),
    (["train", "--config", _f("steps_zero.yaml")], "steps"),
    (["train", "--config", _f("epochs_zero.yaml")], "train.epochs"),
    (["train", "--config", _f("lr_negative.yaml")], "optim.lr"),
    (["train", "--config", _f("optimizer.yaml")], "sgd, adam"),
    (["train", "--config", _f("schedule.yaml")], "piecewise"),
    (["train", "--config", _f("malformed.yaml")], "not valid YAML"),
    (["train", "--config", _f("list.yaml")], "mapping"),
    (["train", "--config", _f("section_list.yaml")], "mapping"),
    (["train", "--config", _f("defense_unknown_key.yaml")], "gamma"),
    (["train", "--config", _f("binary.yaml")], "binary.yaml"),
    (["train", "--config", _f("missing.yaml")], "not found"),
]

FLAG_CASES = [
    (["train", "--dataset", "mnist-6k"], "Valid datasets: "),
    (["train", "--model", "lenet5"], "Valid models: "),
    (["train", "--defense", "madry+xyz"], "madry"),
    (["train", "--set", "eval.attacks=[pgd-20,bogus]"], "bogus"),
    (["train", "--eps", "2"], "adversary.eps"),
    (["train", "--eps", "-0.1"], "adversary.eps"),
    (["train", "--epochs", "0"], "train.epochs"),
    (["train", "--epochs", "three"], "invalid int value"),
    (["train", "--batch-size", "0"], "train.batch_size"),
    (["train", "--lr", "1e6"], "optim.lr"),
    (["train", "--lr", "-1"], "optim.lr"),
    (["train", "--set", "train.epochs"], "KEY=VALUE"),
    (["train", "--set", "=3"], "KEY=VALUE"),
    (["train", "--set", "train.bogus=1"], "train.bogus"),
    (["train", "--set", "bogus=1"], "bogus"),
    (["train", "--set", "train=3"], "train"),
    (["train", "--set", "train.amp=maybe"], "train.amp"),
    (["train", "--set", "optim.lr=1e-3x"], "optim.lr"),
    (["train", "--device", "tpu"], "device"),
    (["train", "--seed", "-1"], "seed"),
    (["train", "--set", "train.batch_size=5000", *TINY[:4], "--out", "x"], "larger than the training set"),
    (["eval", "run", "--attacks", "fgsm,nope"], "nope"),
    (["eval", "run", "--eps", "2"], "eps"),
    (["eval", "run", "--n-examples", "-1"], "n_examples"),
    (["eval", "run", "--n-examples", "0"], "n_examples"),
    (["explain", "run", "--attack", "nope"], "nope"),
    (["list", "things"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
    (["export", "run"], "--out"),
]

RUN_DIR_CASES = [
    (["train", *TINY, "--out", "run"], "already holds a run"),
    (["train", *TINY, "--out", "run", "--dataset", "nope"], "Valid datasets"),
    (["train", "--resume", "--out", "run", "--config", _f("list.yaml")], "drop --config"),
    (["train", "--resume"], "needs --out"),
    (["train", "--resume", "--out", "files/nockpt"], "not a run directory"),
    (["train", "--resume", "--out", "run", "--epochs", "0"], "train.epochs"),
    (["train", "--resume", "--out", "run", "--set", "model.width=1.0"], "model.width differ"),
    (["train", "--resume", "--out", "run", "--model", "small-cnn"], "model.name"),
    (["train", "--out", "files/model.json", *TINY], "is a file"),
]

CHECKPOINT_CASES = [
    (["eval", "files/missing.pt"], "no such run directory or checkpoint"),
    (["eval", "files/missing.pt", "--attacks", "pgd-20,nope"], "unknown attack 'nope'"),  # names before the path
    (["eval", "files/empty.pt"], "not a readable checkpoint"),
    (["eval", "files/truncated.pt"], "not a readable checkpoint"),
    (["eval", "files/random.pt"], "not a readable checkpoint"),
    (["eval", "files/model.json"], "not a readable checkpoint"),
    (["eval", "files/state_dict.pt"], "not an attnguard checkpoint"),
    (["eval", "files/nockpt"], "has no checkpoint"),
    (["eval", "files"], "has no checkpoint"),
    (["export", "files/truncated.pt", "--out", "files/x.safetensors"], "not a readable checkpoint"),
    (["export", "files/nockpt", "--out", "files/x.safetensors"], "has no checkpoint"),
    (["explain", "files/empty.pt", "--out", "files/x.png"], "checkpoint"),
    (["eval", "run", "--attacks", "fgsm", "--n-examples", "5", "--out", "files/state_dict.pt"], "is a file"),
    (["report", "files/missing"], "missing"),
]

DATASET_CASES = [
    (["train", "--dataset", "parquet:files/emptyparquet", *TINY[2:], "--out", "x"], "no train-*.parquet"),
    (["train", "--dataset", "parquet:files/absent", *TINY[2:], "--out", "x"], "not a directory"),
    (["train", "--dataset", "imagefolder:files/imgfolder", *TINY[2:], "--out", "x"], "val/"),
    (["train", "--dataset", "parquet:", *TINY[2:], "--out", "x"], "Valid datasets"),
]

ALL = CONFIG_CASES + FLAG_CASES + RUN_DIR_CASES + CHECKPOINT_CASES + DATASET_CASES


def _run_main(argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse usage errors
        return e.code


@pytest.mark.parametrize("argv,expect", ALL, ids=[" ".join(a)[:60] for a, _ in ALL])
def test_cli_bad_invocation(env, capsys, argv, expect):
    code = _run_main(list(argv))
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2, f"exit {code}: {err}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    assert expect.lower() in lines[0].lower(), lines[0]


def test_empty_config_file_means_defaults(tmp_path):
    from attnguard.train.config import RunConfig, resolve_config

    (tmp_path / "empty.yaml").write_text("")
    assert resolve_config(str(tmp_path / "empty.yaml")) == RunConfig()


@pytest.mark.parametrize("argv", [
    ["train", "--config", "files/malformed.yaml"],
    ["train", *TINY, "--out", "run"],
], ids=["yaml", "existing-run"])
def test_cli_bad_invocation_subprocess(env, argv):
    p = subprocess.run([sys.executable, "-m", "attnguard", *argv], cwd=env["root"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("attnguard")


# -- the Python API ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return attnguard.create_model("lenet", width=0.25).eval()


def _images(n=4):
    return torch.rand(n, 1, 28, 28)


API_CASES = {
    "images [N,H,W]": lambda m: attnguard.evaluate(m, _images()[:, 0], torch.zeros(4, dtype=torch.long), ["fgsm"], 0.1),
    "images uint8": lambda m: attnguard.evaluate(m, (_images() * 255).to(torch.uint8), torch.zeros(4, dtype=torch.long),
                                                 ["fgsm"], 0.1),
    "images > 1": lambda m: attnguard.evaluate(m, _images() * 255, torch.zeros(4, dtype=torch.long), ["fgsm"], 0.1),
    "images NaN": lambda m: attnguard.evaluate(m, _images().index_fill(0, torch.tensor([1]), float("nan")),
                                               torch.zeros(4, dtype=torch.long), ["fgsm"], 0.1),
    "wrong channels": lambda m: attnguard.evaluate(m, torch.rand(4, 3, 28, 28), torch.zeros(4, dtype=torch.long),
                                                   ["fgsm"], 0.1),
    "labels out of range": lambda m: attnguard.evaluate(m, _images(), torch.full((4,), 10), ["fgsm"], 0.1),
    "labels negative": lambda m: attnguard.evaluate(m, _images(), torch.full((4,), -1), ["fgsm"], 0.1),
    "labels float": lambda m: attnguard.evaluate(m, _images(), torch.zeros(4), ["fgsm"], 0.1),
    "labels wrong length": lambda m: attnguard.evaluate(m, _images(), torch.zeros(3, dtype=torch.long), ["fgsm"], 0.1),
    "eval eps 2": lambda m: attnguard.evaluate(m, _images(), torch.zeros(4, dtype=torch.long), ["fgsm"], 2.0),
    "unknown attack": lambda m: attnguard.evaluate(m, _images(), torch.zeros(4, dtype=torch.long), ["nope"], 0.1),
    "grad_cam 3-D": lambda m: attnguard.attention.grad_cam(m, None, _images()[:, 0]),
    "grad_cam bad layer": lambda m: attnguard.attention.grad_cam(m, "no.such.layer", _images()),
    "create_model unknown": lambda m: attnguard.create_model("lenet5"),
    "create_model bad option": lambda m: attnguard.create_model("lenet", colour=3),
    "create_model bad width": lambda m: attnguard.create_model("lenet", width=-1),
    "create_model bad input_size": lambda m: attnguard.create_model("lenet", input_size=(28, 28)),
    "create_model zero classes": lambda m: attnguard.create_model("lenet", num_classes=0),
    "load_model missing": lambda m: attnguard.load_model("does/not/exist.pt"),
}


@pytest.mark.parametrize("name", list(API_CASES))
def test_api_bad_input_is_one_line_error(model, name):
    with pytest.raises(AttnGuardError) as e:
        API_CASES[name](model)
    msg = str(e.value)
    assert msg and "\n" not in msg
