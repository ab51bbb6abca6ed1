"""Attention snapshots during training (train/snapshots.py, AAD Fig. 6): one file per epoch boundary,
training bitwise unchanged with them on, and a run interrupted mid-epoch and resumed continues the
series with the same maps as an uninterrupted run. Tiny runs: LeNet width 0.25, madry (PGD-1 with a
random start from the global RNG), 2 epochs of 3 steps of batch 1,000, CPU, deterministic."""

import json
import os
import signal

import numpy as np
import pytest
import torch

from attnguard.cli import main
from attnguard.train import trainer as T
from attnguard.train.snapshots import read_snapshot, snapshot_files

TINY = ["--model", "lenet", "--set", "model.width=0.25", "--epochs", "2", "--batch-size", "1000",
        "--set", "defense.preset=madry",
        "--set", "data.val_size=800", "--set", "train.val_steps=1", "--set", "adversary.steps=1",
        "--set", "train.progress=false", "--set", "train.deterministic=true", "--device", "cpu", "--seed", "2",
        "--no-eval"]
KEYS = ("clean_cam", "adv_cam", "clean_pred", "clean_conf", "adv_pred", "adv_conf", "labels")


def _weights(run):
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    run = tmp_path_factory.mktemp("snap") / "ref"
    assert main(["train", *TINY, "--out", str(run), "--set", "train.attention_snapshots=5"]) == 0
    return run


def test_one_snapshot_per_epoch_boundary(reference):
    files = snapshot_files(reference)
    assert [f.name for f in files] == ["epoch-000.npz", "epoch-001.npz", "epoch-002.npz"]
    snaps = [read_snapshot(f) for f in files]
    assert [s["epoch"] for s in snaps] == [0, 1, 2] and [s["step"] for s in snaps] == [0, 3, 6]
    first = snaps[0]
    assert first["clean_cam"].shape == first["adv_cam"].shape == (5, 14, 14)
    assert first["attack"] == "pgd-1" and first["eps"] == pytest.approx(0.3) and first["seconds"] > 0
    from attnguard.data import load_dataset

    assert list(first["labels"]) == [int(v) for v in load_dataset("mnist-5k").test.labels[:5]]  # the first 5 digits
    assert all(np.array_equal(s["labels"], first["labels"]) for s in snaps)
    # training changes the maps, and the attack changes them within an epoch
    assert not np.array_equal(snaps[0]["clean_cam"], snaps[2]["clean_cam"])
    assert not np.array_equal(snaps[2]["clean_cam"], snaps[2]["adv_cam"])


def test_training_is_bitwise_the_same_without_snapshots(reference, tmp_path, one_thread):
    off = tmp_path / "off"
    assert main(["train", *TINY, "--out", str(off), "--set", "train.attention_snapshots=0"]) == 0
    assert not (off / "attention").exists()
    got, want = _weights(off), _weights(reference)
    for k in want["model"]:
        assert torch.equal(got["model"][k], want["model"][k]), k
    strip = lambda p: [{k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
                       for line in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(off) == strip(reference)


def test_interrupted_run_continues_the_series(reference, tmp_path, monkeypatch, one_thread):
    run = tmp_path / "run"
    real = T.Trainer.train_step

    def step(self, x, y):
        real(self, x, y)
        if self.step + 1 == 5:  # mid epoch 2: Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(T.Trainer, "train_step", step)
    assert main(["train", *TINY, "--out", str(run), "--set", "train.attention_snapshots=5"]) == 130
    assert [f.name for f in snapshot_files(run)] == ["epoch-000.npz", "epoch-001.npz"]
    monkeypatch.undo()
    assert main(["train", "--out", str(run), "--resume", "--no-eval"]) == 0
    got, want = snapshot_files(run), snapshot_files(reference)
    assert [f.name for f in got] == [f.name for f in want]
    for g, w in zip(got, want):
        a, b = read_snapshot(g), read_snapshot(w)
        for k in KEYS:
            assert np.array_equal(a[k], b[k]), (g.name, k)
