"""Divergence: a NaN or inf loss stops training with one line naming the epoch and step, exit
status 3, and the last good checkpoint left exactly as it was."""

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import attnguard.train.trainer as trainer_mod
from attnguard.cli import main
from attnguard.train.trainer import EXIT_DIVERGED

# standard training, batch 1000: 3 steps per epoch (3200 training digits), cheap steps
FAST = ["--model", "lenet", "--set", "model.width=0.25", "--defense", "standard", "--batch-size", "1000",
        "--set", "data.val_size=800", "--set", "train.val_steps=1", "--set", "train.progress=false",
        "--device", "cpu", "--no-eval", "--set", "train.log_every=100", "--set", "train.checkpoint_every=2"]


def _poison(monkeypatch, at_step, value):
    """Make the objective's loss ``value`` (NaN or inf) from call ``at_step`` on."""
    real = trainer_mod.build_objective
    calls = {"n": 0}

    class Poisoned:
        """The real objective (its ``layers``, ``base``, ... as they are), with the loss poisoned."""

        def __init__(self, obj):
            self.obj = obj

        def __getattr__(self, name):
            return getattr(self.obj, name)

        def __call__(self, model, x, y):
            calls["n"] += 1
            loss, parts = self.obj(model, x, y)
            if calls["n"] >= at_step:
                loss = loss * torch.tensor(value)
            return loss, parts

    def build(defense, adversary):
        return Poisoned(real(defense, adversary))

    monkeypatch.setattr(trainer_mod, "build_objective", build)


def _record_saves(monkeypatch):
    """sha256 of each checkpoint file right after each save."""
    saved = []
    real = trainer_mod.atomic_torch_save

    def save(obj, path):
        real(obj, path)
        saved.append((path.name, obj["step"], hashlib.sha256(path.read_bytes()).hexdigest(),
                      os.stat(path).st_mtime_ns))

    monkeypatch.setattr(trainer_mod, "atomic_torch_save", save)
    return saved


@pytest.mark.parametrize("value,at_step,epoch,last_good", [
    (float("nan"), 3, 1, 2),   # epoch 1: steps 1-3; checkpoint at step 2, NaN found at the epoch-end flush
    (float("inf"), 5, 2, 4),   # epoch 2: steps 4-6; the epoch-1 checkpoint (step 3) and step 4 are good
], ids=["nan-epoch1", "inf-epoch2"])
def test_divergence_stops_with_exit_3_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch,
                                                                     value, at_step, epoch, last_good):
    _poison(monkeypatch, at_step, value)
    saved = _record_saves(monkeypatch)
    run = tmp_path / "run"
    code = main(["train", *FAST, "--epochs", "3", "--out", str(run)])
    err = capsys.readouterr().err
    assert code == EXIT_DIVERGED == 3
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"NaN or inf at epoch {epoch}, step {at_step}" in lines[0]
    assert "last good checkpoint" in lines[0] and "kept unchanged" in lines[0]
    last = run / "checkpoints" / "last.pt"
    ck = torch.load(last, weights_only=True)
    assert ck["step"] == last_good < at_step
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    name, step, digest, mtime = [s for s in saved if s[0] == "last.pt"][-1]
    assert step == last_good and hashlib.sha256(last.read_bytes()).hexdigest() == digest
    assert os.stat(last).st_mtime_ns == mtime
    metrics = run / "metrics.jsonl"  # (checkpoints write no line: with log_every 100 there may be none yet)
    steps = [json.loads(l)["step"] for l in metrics.read_text().splitlines()] if metrics.is_file() else []
    assert max(steps, default=0) < at_step  # nothing was logged from the diverged steps


def test_divergence_before_any_checkpoint_says_so(tmp_path, capsys, monkeypatch):
    _poison(monkeypatch, 1, float("nan"))
    code = main(["train", *FAST, "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 3 and "epoch 1, step 1" in err and "no checkpoint had been written yet" in err
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_real_divergence_in_a_subprocess(tmp_path):
    """SGD with lr 3 and weight decay 1 multiplies the weights by -2 each step: the loss overflows within
    a few steps, for real (no monkeypatching)."""
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "attnguard", "train", "--model", "lenet", "--set", "model.width=0.25",
                        "--defense", "standard", "--set", "optim.optimizer=sgd", "--lr", "3", "--set",
                        "optim.momentum=0", "--set", "optim.weight_decay=1", "--set", "optim.schedule=constant",
                        "--set", "train.max_steps=60", "--set", "train.log_every=1", "--set",
                        "train.checkpoint_every=2", "--set", "train.progress=false", "--device", "cpu", "--no-eval",
                        "--out", str(run)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 3, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    m = re.search(r"NaN or inf at epoch (\d+), step (\d+)", lines[0])
    assert m and m.group(1) == "1", lines[0]
    bad = int(m.group(2))
    if bad > 2:
        ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        assert ck["step"] == (bad - 1) // 2 * 2  # the newest checkpoint before the bad step
        assert all(torch.isfinite(v).all() for v in ck["model"].values())
