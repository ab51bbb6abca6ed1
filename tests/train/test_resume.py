"""Crash resume: a real ``attnguard train`` subprocess is SIGKILLed mid-epoch and resumed with
``--resume``; the final weights and every metrics.jsonl line (but "seconds") must equal those
of an uninterrupted run bitwise (CPU, ``train.deterministic=true``, one thread).

The run: LeNet width 0.25 on mnist-5k, madry+aad (PGD-2 with random start, Grad-CAM double
backward), batch 100 over 3,200 training digits (32 steps per epoch), 2 epochs cut at step 40,
a checkpoint every 5 steps and a metrics line every step. The fast test kills once in epoch 2
after the step-35 checkpoint (so epoch, best.pt score, loader epoch and the RNG mid-epoch all
come from the checkpoint); the slow one also kills in epoch 1 after the step-10 checkpoint, so
a resumed process crosses the epoch end. The reference run goes in parallel with the killed one.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

ARGS = ["--dataset", "mnist-5k", "--model", "lenet", "--set", "model.width=0.25", "--epochs", "2",
        "--batch-size", "100", "--set", "train.max_steps=40", "--set", "data.val_size=800",
        "--set", "train.val_steps=2", "--set", "adversary.steps=2", "--set", "train.checkpoint_every=5",
        "--set", "train.checkpoint_minutes=0",
        "--set", "train.log_every=1", "--set", "train.deterministic=true", "--set", "train.progress=false",
        "--device", "cpu", "--no-eval", "--seed", "3"]
STEPS_PER_EPOCH = 32
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "attnguard", "train", *ARGS, "--out", str(out), *extra],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    return out


def _last_step(metrics):
    if not metrics.exists():
        return 0
    steps = []
    for line in metrics.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return max(steps, default=0)


def _kill_after(proc, metrics, step, timeout=240):
    """SIGKILL ``proc`` once metrics.jsonl shows ``step`` (it must still be running then)."""
    deadline = time.monotonic() + timeout
    while _last_step(metrics) < step:
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before step {step}: " \
                                    f"{proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return _last_step(metrics)


def _records(run):
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec.pop("seconds")
        out.append(rec)
    return out


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


class _Reference:
    """The uninterrupted run, started at once and waited for only when a test compares with it."""

    def __init__(self, run):
        self.run, self.proc = run, _train(run)

    def get(self):
        if self.proc is not None:
            _finish(self.proc)
            self.proc = None
        return self.run


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = _Reference(tmp_path_factory.mktemp("resume") / "ref")
    yield ref
    if ref.proc is not None and ref.proc.poll() is None:
        ref.proc.kill()
        ref.proc.wait()


def _assert_same_as_reference(run, reference):
    assert _records(run) == _records(reference)
    for name in ("last", "best"):
        got, want = _weights(run / "checkpoints" / f"{name}.pt"), _weights(reference / "checkpoints" / f"{name}.pt")
        assert got["step"] == want["step"] and got["best_score"] == want["best_score"]
        assert got["model"].keys() == want["model"].keys()
        for k in want["model"]:
            assert torch.equal(got["model"][k], want["model"][k]), f"{name}.pt: {k} differs"
        for a, b in zip(got["optimizer"]["state"].values(), want["optimizer"]["state"].values()):
            for k in b:
                assert torch.equal(a[k], b[k]), f"{name}.pt optimizer state {k} differs"
        assert got["scheduler"] == want["scheduler"]
        assert torch.equal(got["rng"]["torch"], want["rng"]["torch"])
    assert not list((run / "checkpoints").glob(".*.tmp")), "temp files of killed writes were cleaned up"


def _kill_in_epoch2(run, proc):
    killed_at = _kill_after(proc, run / "metrics.jsonl", 37)
    assert STEPS_PER_EPOCH < killed_at < 40, "the kill should land in epoch 2"
    ckpt = _weights(run / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["step"] >= 35 and ckpt["batch"] == ckpt["step"] - STEPS_PER_EPOCH
    assert ckpt["best_score"] > 0  # epoch 1 was validated before the kill


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(reference, tmp_path):
    run = tmp_path / "killed"
    _kill_in_epoch2(run, _train(run))
    # lines for steps after the checkpoint were written: the resume must drop them
    assert _last_step(run / "metrics.jsonl") > _weights(run / "checkpoints" / "last.pt")["step"]
    out = _finish(_train(run, "--resume"))
    assert "resumed" in out
    _assert_same_as_reference(run, reference.get())


@pytest.mark.slow
def test_two_kills_one_in_each_epoch(reference, tmp_path):
    run = tmp_path / "killed2"
    metrics = run / "metrics.jsonl"
    killed_at = _kill_after(_train(run), metrics, 12)
    ckpt = _weights(run / "checkpoints" / "last.pt")
    assert killed_at < STEPS_PER_EPOCH and ckpt["epoch"] == 0 and ckpt["step"] == ckpt["batch"] >= 10
    assert _last_step(metrics) > ckpt["step"], "lines after the checkpoint exist, so truncation is exercised"
    _kill_in_epoch2(run, _train(run, "--resume"))
    _finish(_train(run, "--resume"))
    _assert_same_as_reference(run, reference.get())


@pytest.mark.slow
def test_resuming_a_finished_run_changes_nothing(reference, tmp_path):
    """``--resume`` of a finished run trains no step: the weights and the metrics stay as they were."""
    run = tmp_path / "done"
    shutil.copytree(reference.get(), run)
    before = (run / "metrics.jsonl").read_text()
    _finish(_train(run, "--resume"))
    assert (run / "metrics.jsonl").read_text() == before
    got, want = _weights(run / "checkpoints" / "last.pt"), _weights(reference.get() / "checkpoints" / "last.pt")
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])


def test_crash_after_validation_before_epoch_end_save(tmp_path, monkeypatch):
    """In-process: the last step is also a checkpoint step, the val line is written, then the process dies
    before the epoch-end save. The resume must validate again and write best.pt, with no duplicated line."""
    from attnguard.train import trainer as T
    from attnguard.train.config import resolve_config

    def cfg(out):
        return resolve_config(None, {
            "model": {"width": 0.25}, "data": {"val_size": 100},
            "adversary": {"steps": 1}, "out": str(out),
            "train": {"epochs": 1, "batch_size": 100, "max_steps": 4, "checkpoint_every": 4, "log_every": 2,
                      "val_steps": 1, "progress": False, "device": "cpu"}})

    ref = T.train(cfg(tmp_path / "ref"))

    real_save = T.Trainer._save

    def dying_save(self, *names):
        if "best" in names:
            raise KeyboardInterrupt("simulated kill after validation")
        real_save(self, *names)

    monkeypatch.setattr(T.Trainer, "_save", dying_save)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg(run))
    monkeypatch.undo()
    assert [json.loads(l)["split"] for l in (run / "metrics.jsonl").read_text().splitlines()] == \
        ["train", "train", "val"]
    assert not (run / "checkpoints" / "best.pt").exists()

    T.Trainer(cfg(run), resume=True).fit()
    assert _records(run) == _records(ref)
    for name in ("last", "best"):
        got, want = _weights(run / "checkpoints" / f"{name}.pt"), _weights(ref / "checkpoints" / f"{name}.pt")
        assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
        assert got["best_score"] == want["best_score"] and got["step"] == want["step"] == 4


def test_a_checkpoint_with_the_old_best_robust_key_resumes(tmp_path):
    """Checkpoints written before the key was renamed to ``best_score`` (it holds the best.pt selection
    score, which is clean accuracy for ``standard``) name it ``best_robust``; they still resume, with the
    same score."""
    from attnguard.io import atomic_torch_save
    from attnguard.train import trainer as T
    from attnguard.train.config import resolve_config

    out = tmp_path / "run"
    cfg = resolve_config(None, {
        "model": {"width": 0.25}, "data": {"val_size": 100}, "adversary": {"steps": 1}, "out": str(out),
        "train": {"epochs": 1, "batch_size": 100, "max_steps": 2, "val_steps": 1, "progress": False,
                  "device": "cpu"}})
    T.train(cfg)
    path = out / "checkpoints" / "last.pt"
    state = _weights(path)
    score = state.pop("best_score")
    assert score > 0
    atomic_torch_save({**state, "best_robust": score}, path)
    trainer = T.Trainer(cfg, resume=True)
    assert trainer.best == pytest.approx(score) and trainer.step == 2


def test_validation_leaves_the_global_rng_alone(tmp_path, monkeypatch):
    from attnguard.attacks import PGD
    from attnguard.train import holdout, trainer as T
    from attnguard.train.config import resolve_config

    class GlobalRngPGD(PGD):  # even a validation attack drawing from the global RNG must not shift training
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "seed": None})

    monkeypatch.setattr(holdout, "PGD", GlobalRngPGD)
    cfg = resolve_config(None, {"model": {"width": 0.25}, "data": {"val_size": 50}, "out": str(tmp_path / "r"),
                                "train": {"val_steps": 2, "progress": False, "device": "cpu"}})
    t = T.Trainer(cfg)
    state = torch.get_rng_state()
    assert t.validate()["n"] == 50
    assert torch.equal(torch.get_rng_state(), state)


def test_cuda_rng_state_is_the_run_devices(monkeypatch):
    """A run on cuda:1 saves and restores cuda:1's generator, not the current device's (cuda:0).
    CUDA is faked: the test runs on CPU-only machines."""
    from attnguard.utils import runtime

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    def get(device="cuda"):
        calls.append(("get", torch.device(device)))
        return torch.zeros(4, dtype=torch.uint8)

    monkeypatch.setattr(torch.cuda, "get_rng_state", get)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device="cuda": calls.append(("set", torch.device(device))))
    state = runtime.rng_state(torch.device("cuda", 1))
    runtime.set_rng_state(state, torch.device("cuda", 1))
    assert calls == [("get", torch.device("cuda", 1)), ("set", torch.device("cuda", 1))]
    calls.clear()
    runtime.set_rng_state(runtime.rng_state(torch.device("cuda")), torch.device("cuda"))  # "cuda": the current one
    assert calls == [("get", torch.device("cuda", 0)), ("set", torch.device("cuda", 0))]
