"""What ``best.pt`` keeps: the epoch with the best robust held-out accuracy for adversarial training (Rice et
al. 2020), the best clean accuracy for standard training, whose robust accuracy is noise around 0."""

import pytest
import torch

from attnguard.cli import main
from attnguard.train import trainer as T

TINY = ["--model", "lenet", "--set", "model.width=0.25", "--epochs", "3", "--batch-size", "50",
        "--set", "data.train_size=100", "--set", "data.val_size=50", "--set", "train.val_steps=1",
        "--set", "adversary.steps=1", "--set", "train.progress=false", "--device", "cpu", "--seed", "0",
        "--no-eval"]

# epoch 1: a few images robust by chance and poor clean accuracy; epochs 2-3: trained further
SCRIPTED = [{"acc_clean": 0.70, "acc_adv": 0.04}, {"acc_clean": 0.95, "acc_adv": 0.0},
            {"acc_clean": 0.97, "acc_adv": 0.02}]


@pytest.mark.parametrize("defense,best_epoch", [("standard", 3), ("madry", 1)])
def test_best_checkpoint_follows_the_defense(tmp_path, monkeypatch, defense, best_epoch):
    seen = iter(SCRIPTED)
    monkeypatch.setattr(T.Trainer, "validate", lambda self: {**next(seen), "n": 50, "attack": "pgd-1"})
    run = tmp_path / defense
    assert main(["train", *TINY, "--defense", defense, "--out", str(run)]) == 0
    best = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == best_epoch
    assert torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["epoch"] == 3
