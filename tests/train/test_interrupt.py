"""Nothing lost on an interrupt, through ``attnguard train``: Ctrl-C saves ``last.pt`` at the next step
boundary (exit 130, one line with the resume command), ``train.checkpoint_minutes`` checkpoints
mid-epoch on the wall clock, and ``--resume`` of a run killed before its first checkpoint starts
from step 0. A stop that cannot wait (a second Ctrl-C, or one during setup or the final evaluation) also
says what the run directory holds and the command that continues. Tiny runs: LeNet width 0.25, 6 steps of batch 50, CPU."""

import json
import os
import signal
from pathlib import Path

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

    def logged(run):  # the training lines, without their wall-clock field
        lines = [json.loads(t) for t in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in lines if r.get("split") == "train"]

    # a timed save neither adds a line nor restarts the running mean: the log does not depend on the clock
    assert [r["step"] for r in logged("a")] == [2, 4, 6] and logged("a") == logged("b")
    steps.clear()
    assert main(["train", *TINY, "--out", str(tmp_path / "c")]) == 0  # the default, 5 minutes: not reached
    assert steps == [6]


def test_resume_without_a_checkpoint_starts_from_step_0(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"

    def die(self):
        raise KeyboardInterrupt  # a hard stop inside the step: nothing can be saved consistently

    _step_hook(monkeypatch, 1, die)
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(run)]) == 130
    assert (run / "config.yaml").is_file() and not (run / "checkpoints" / "last.pt").exists()
    err = capsys.readouterr().err.strip().splitlines()  # what was saved, and the command that resumes
    assert len(err) == 1 and "no checkpoint yet" in err[0], err
    assert err[0].endswith(f"resume with: attnguard train --out {run} --resume")
    monkeypatch.undo()
    assert main(["train", "--out", str(run), "--resume", "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert "no checkpoint yet; training starts from step 0" in out
    assert _weights(run / "checkpoints" / "last.pt")["step"] == 6
    assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6, 6]


def _die(self):
    raise KeyboardInterrupt  # a second Ctrl-C: it cannot wait for the step boundary


def test_a_hard_stop_names_the_last_checkpoint_and_the_default_run_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no --out: the run directory is runs/<time>-..., named by the trainer
    _step_hook(monkeypatch, 4, _die)  # checkpoints after steps 1-3 (every step is past the interval)
    assert main(["train", *TINY, "--set", "train.checkpoint_minutes=1e-9"]) == 130
    run, = (tmp_path / "runs").iterdir()
    assert _weights(run / "checkpoints" / "last.pt")["step"] == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the last checkpoint is {Path('runs') / run.name / 'checkpoints' / 'last.pt'}" in err[0]
    assert err[0].endswith(f"resume with: attnguard train --out {Path('runs') / run.name} --resume"), err


def test_an_interrupt_during_the_final_evaluation_says_training_is_complete(tmp_path, monkeypatch, capsys):
    from attnguard import cli

    run = tmp_path / "run"
    monkeypatch.setattr(cli, "_final_eval", lambda run, cfg: _die(None))
    assert main(["train", *[a for a in TINY if a != "--no-eval"], "--out", str(run)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training of" in err[0] and "is complete" in err[0], err
    assert err[0].endswith(f"evaluate with: attnguard eval {run}")
    assert json.loads((run / "train.json").read_text())["complete"] and not (run / "eval.json").exists()


def test_ctrl_c_before_the_run_directory_exists(tmp_path, monkeypatch, capsys):
    from attnguard.train import trainer

    def stop(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "__init__", stop)  # e.g. while the dataset loads
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["interrupted before the run directory was written; nothing saved"]


def test_ctrl_c_in_the_last_validation_then_resume_finishes_the_run(tmp_path, monkeypatch, capsys):
    """The race behind a once-flaky gpu_session test: the stop lands after the last step, in the final
    epoch's validation. last.pt is then the end of training but train.json says complete: false; a
    resume has no step to train and must still mark the run complete (and evaluate it, unless --no-eval)."""
    from attnguard import cli

    run = tmp_path / "run"
    real = T.Trainer.validate

    def validate(self):
        out = real(self)
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, after the last step
        return out

    monkeypatch.setattr(T.Trainer, "validate", validate)
    assert main(["train", *TINY, "--out", str(run)]) == 130
    ck = _weights(run / "checkpoints" / "last.pt")
    assert (ck["epoch"], ck["batch"], ck["step"]) == (1, 0, 6)
    first = json.loads((run / "train.json").read_text())
    assert first["complete"] is False and first["seconds"] > 0
    monkeypatch.undo()
    evals = []
    monkeypatch.setattr(cli, "_final_eval", lambda r, cfg: evals.append(Path(r)))
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "is complete" in out and "marked" in out
    info = json.loads((run / "train.json").read_text())
    assert info["complete"] is True and info["steps"] == 6 and info["epochs"] == 1
    assert info["seconds"] == first["seconds"]  # the time counted so far is kept, not reset
    assert evals == [run]  # the final evaluation the stop skipped
    assert main(["train", "--out", str(run), "--resume"]) == 0  # now a plain finished run: nothing rewritten
    assert "marked" not in capsys.readouterr().out and evals == [run]
