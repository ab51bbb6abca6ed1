"""Nothing lost on an interrupt, through ``attnguard train``: Ctrl-C saves ``last.pt`` at the next step
boundary (exit 130, one line with the resume command), ``train.checkpoint_minutes`` checkpoints
mid-epoch on the wall clock, and ``--resume`` of a run killed before its first checkpoint starts
from step 0. Tiny runs: LeNet width 0.25, 6 steps of batch 50, CPU."""

import json
import os
import signal

import torch

from attnguard.cli import main
from attnguard.train import trainer as T

TINY = ["--model", "lenet", "--set", "model.width=0.25", "--epochs", "1", "--batch-size", "50",
        "--set", "train.max_steps=6", "--set", "data.val_size=50", "--set", "train.val_steps=1",
        "--set", "adversary.steps=1", "--set", "train.log_every=2", "--set", "train.progress=false",
        "--set", "train.deterministic=true", "--device", "cpu", "--seed", "4", "--no-eval"]


def _step_hook(monkeypatch, at_step, action):
    """Run ``action(trainer)`` right after the real training step number ``at_step`` (1-based)."""
    real = T.Trainer.train_step

    def step(self, x, y):
        real(self, x, y)
        if self.step + 1 == at_step:  # self.step counts completed steps; it is incremented after this call
            action(self)

    monkeypatch.setattr(T.Trainer, "train_step", step)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_ctrl_c_saves_at_the_step_boundary_and_resume_finishes_the_same_run(tmp_path, monkeypatch, capsys):
    ref = tmp_path / "ref"
    assert main(["train", *TINY, "--out", str(ref)]) == 0
    run = tmp_path / "run"
    _step_hook(monkeypatch, 3, lambda self: os.kill(os.getpid(), signal.SIGINT))  # a real Ctrl-C, mid-epoch
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(run)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "last.pt at step 3" in err[0] and err[0].endswith(f"resume with: attnguard train --out {run} --resume")
    ck = _weights(run / "checkpoints" / "last.pt")
    assert ck["step"] == ck["batch"] == 3 and ck["epoch"] == 0
    first = json.loads((run / "train.json").read_text())
    assert first["steps"] == 3 and first["seconds"] > 0 and 0 < first["cpu_seconds"]
    monkeypatch.undo()

    assert main(["train", "--out", str(run), "--resume", "--no-eval"]) == 0
    assert "resumed" in capsys.readouterr().out
    got, want = _weights(run / "checkpoints" / "last.pt"), _weights(ref / "checkpoints" / "last.pt")
    assert got["step"] == want["step"] == 6
    for k in want["model"]:
        assert torch.equal(got["model"][k], want["model"][k]), k
    info = json.loads((run / "train.json").read_text())
    assert info["steps"] == 6 and info["resumed"] and info["seconds"] > first["seconds"] and info["cpu_seconds"] > first["cpu_seconds"]  # wall clock and CPU time add up


def _saved_steps(monkeypatch):
    steps = []
    real = T.Trainer._save

    def save(self, *names):
        steps.append(self.step)
        real(self, *names)

    monkeypatch.setattr(T.Trainer, "_save", save)
    return steps


def test_checkpoint_minutes_saves_mid_epoch(tmp_path, monkeypatch):
    steps = _saved_steps(monkeypatch)
    # a tiny interval: every step is past it, so every step boundary checkpoints
    assert main(["train", *TINY, "--out", str(tmp_path / "a"), "--set", "train.checkpoint_minutes=1e-9"]) == 0
    assert steps == [1, 2, 3, 4, 5, 6, 6]  # then the epoch end
    steps.clear()
    assert main(["train", *TINY, "--out", str(tmp_path / "b"), "--set", "train.checkpoint_minutes=0"]) == 0
    assert steps == [6]  # 0: epoch ends only
    steps.clear()
    assert main(["train", *TINY, "--out", str(tmp_path / "c")]) == 0  # the default, 5 minutes: not reached
    assert steps == [6]


def test_resume_without_a_checkpoint_starts_from_step_0(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"

    def die(self):
        raise KeyboardInterrupt  # a hard stop inside the step: nothing can be saved consistently

    _step_hook(monkeypatch, 1, die)
    assert main(["train", *TINY, "--out", str(run)]) == 130
    assert (run / "config.yaml").is_file() and not (run / "checkpoints" / "last.pt").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert "no checkpoint yet; training starts from step 0" in out
    assert _weights(run / "checkpoints" / "last.pt")["step"] == 6
    assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6, 6]
