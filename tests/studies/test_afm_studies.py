"""AFM's studies end to end through ``attnguard study`` on tiny runs: loss-surface (Fig. 7) and tsne (Fig. 6).

Runs: afm, fm-single and fm-multi, LeNet width 0.25 on mnist-5k, 3 training steps each, CPU. Each study
writes a real, non-blank PNG and the numbers behind it."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _support import study_numbers as _study
from attnguard.cli import main
from attnguard.rundir import RunDir
from attnguard.studies.tsne_study import _nearest_true, _silhouette

BASE = ["--model", "lenet", "--set", "model.width=0.25", "--set", "train.val_steps=1", "--set", "adversary.steps=1",
        "--set", "train.progress=false", "--device", "cpu", "--no-eval", "--epochs", "1", "--set", "train.max_steps=3",
        "--set", "data.val_size=50", "--set", "train.attention_snapshots=0"]
DEFENSES = ("afm", "fm-single", "fm-multi")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("afm-studies")
    out = {}
    for d in DEFENSES:
        out[d] = root / d
        assert main(["train", "--out", str(out[d]), "--defense", d, *BASE]) == 0
    return out


def test_loss_surface_side_by_side(runs, tmp_path):
    got = _study("loss-surface", [runs[d] for d in DEFENSES], tmp_path, "steps=5")
    assert [r["defense"] for r in got["runs"]] == list(DEFENSES)
    assert got["indices"] == [0, 1] and got["span"] == got["eps"] == 0.3 and got["a"][2] == 0.0
    x, y = RunDir(runs["fm-single"]).test_examples(2)
    model = RunDir(runs["fm-single"]).model("cpu")
    with torch.no_grad():
        ce = F.cross_entropy(model(x), y, reduction="none")
    for rec in got["runs"]:
        for ex in rec["examples"]:
            z = np.asarray(ex["loss"])
            assert z.shape == (5, 5)
            assert z[2, 2] == pytest.approx(ex["center_loss"], abs=1e-4)  # a = b = 0 is the example itself
            # the JSON rounds to 5 decimals: up to 5e-6 either side
            assert got["loss_range"][0] <= z.min() + 1e-5 and z.max() <= got["loss_range"][1] + 1e-5
            assert ex["rise"] == pytest.approx(z.max() - ex["center_loss"], abs=1e-4)
    fm = got["runs"][1]["examples"]
    assert [e["center_loss"] for e in fm] == pytest.approx(ce.tolist(), abs=1e-4)  # that model's own loss


def test_loss_surface_options(runs, tmp_path, capsys):
    got = _study("loss-surface", [runs["afm"]], tmp_path, "indices=3,7", "kind=contour", "steps=3", "span=0.1")
    assert got["indices"] == [3, 7] and got["span"] == 0.1 and got["a"] == pytest.approx([-0.1, 0.0, 0.1])
    assert [e["index"] for e in got["runs"][0]["examples"]] == [3, 7]
    assert main(["study", "loss-surface", str(runs["afm"]), "--out", str(tmp_path / "b"), "--set", "indices=5000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "indices must be test-set indices from 0 to 999" in err


def test_runs_on_different_datasets_are_refused(runs, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(runs["afm"], other)
    cfg = other / "config.yaml"
    cfg.write_text(cfg.read_text().replace("name: mnist-5k", "name: fmnist", 1))
    assert main(["study", "tsne", str(runs["afm"]), str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different datasets" in err and "other: fmnist" in err


def test_tsne_two_classes_per_run(runs, tmp_path):
    got = _study("tsne", [runs["afm"], runs["fm-single"]], tmp_path, "n=8", "attack=pgd-2", "classes=3,7")
    assert got["classes"] == ["3", "7"] and got["n_per_class"] == [8, 8] and got["attack"] == "pgd-2"
    labels = RunDir(runs["afm"]).test_examples()[1][got["test_indices"]]
    assert labels.tolist() == [3] * 8 + [7] * 8  # the first 8 test images of each class
    assert [r["defense"] for r in got["runs"]] == ["afm", "fm-single"]
    for r in got["runs"]:
        assert -1 <= r["silhouette_clean_vs_adv"] <= 1 and 0 <= r["adv_nearest_true_class"] <= 1
        assert 0 <= r["adversarial_accuracy"] <= r["clean_accuracy"] <= 1  # the attack skips misclassified images


def test_tsne_bad_classes_are_one_line(runs, tmp_path, capsys):
    for classes, msg in (("3", "two different classes"), ("3,3", "two different classes"), ("3,12", "unknown class")):
        assert main(["study", "tsne", str(runs["afm"]), "--out", str(tmp_path / classes), "--set",
                     f"classes={classes}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err


def test_separation_numbers_by_hand():
    """Adversarial points far from the clean ones score near 1; the same points interleaved score below 0."""
    clean = np.array([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
    cls = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    adv = np.array([False] * 4 + [True] * 4)
    apart = np.concatenate([clean, clean + [0.0, 100.0]])
    assert _silhouette(apart, adv) > 0.9
    mixed = np.concatenate([clean, clean + [0.0, 0.5]])
    assert _silhouette(mixed, adv) < 0.1
    # class 0's adversarial points moved next to class 1's centroid (10, 0.5): half land nearer the wrong class
    moved = np.concatenate([clean, [[9.0, 0.0], [0.0, 0.5], [10.0, 0.0], [10.0, 1.0]]])
    assert _nearest_true(moved, cls, adv, (0, 1)) == 0.75
