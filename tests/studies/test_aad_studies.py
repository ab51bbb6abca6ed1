"""AAD's attention studies end to end through ``attnguard study`` on tiny runs: attention-evolution
(Fig. 6), attack-rounds (Fig. 2/12) and ablation-maps (Fig. 9). Each writes a real, non-blank PNG
and the numbers behind it. Runs: LeNet width 0.25 on mnist-5k, CPU; the AAD run trains 2 epochs of 3
steps (batch 1,000) with snapshots, the other three 2 steps each."""

import json

import pytest
import torch
from matplotlib.image import imread

from attnguard.cli import main

BASE = ["--model", "lenet", "--set", "model.width=0.25", "--set", "train.val_steps=1", "--set", "adversary.steps=1",
        "--set", "train.progress=false", "--device", "cpu", "--no-eval"]
SHORT = ["--epochs", "1", "--set", "train.max_steps=2", "--set", "data.val_size=50",
         "--set", "train.attention_snapshots=0"]
ABLATION = {"raw": ["--set", "defense.preset=madry"], "rect": ["--set", "defense.aad.beta=0"],
            "pres": ["--set", "defense.aad.alpha=0"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("aad-studies")
    out = {}
    for name, extra in ABLATION.items():
        out[name] = root / name
        assert main(["train", *BASE, *SHORT, *extra, "--out", str(out[name])]) == 0
    out["both"] = root / "both"  # madry+aad, alpha = beta = 0.01; snapshots on (the default, 8)
    assert main(["train", *BASE, "--epochs", "2", "--batch-size", "1000", "--set", "data.val_size=800",
                 "--out", str(out["both"])]) == 0
    return out


def _study(name, run_dirs, out, *sets):
    argv = ["study", name, *map(str, run_dirs), "--out", str(out), "--device", "cpu"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    png = out / f"{name}.png"
    img = imread(png)  # a real PNG (imread fails on anything else), and not a blank canvas
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300 and float(img[..., :3].var()) > 1e-3
    return json.loads((out / f"{name}.json").read_text())["numbers"]


def test_attention_evolution(runs, tmp_path):
    got = _study("attention-evolution", [runs["both"]], tmp_path, "n=3", "columns=2")
    epochs = got["per_epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2] and [e["step"] for e in epochs] == [0, 3, 6]
    assert got["epochs_shown"] == [0, 2]  # two columns: the first and the last epoch
    assert got["n_shown"] == 3 and got["n_snapshot"] == 8 and got["attack"] == "pgd-1" and got["eps"] == 0.3
    assert all(0 <= e[k] <= 1 for e in epochs for k in ("iou_clean_adv", "acc_clean", "acc_adv"))
    assert epochs[2]["acc_clean"] != epochs[0]["acc_clean"] or epochs[2]["iou_clean_adv"] != epochs[0]["iou_clean_adv"]


def test_attention_evolution_without_snapshots_is_one_line(runs, tmp_path, capsys):
    assert main(["study", "attention-evolution", str(runs["raw"]), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no attention snapshots" in err and "train.attention_snapshots" in err


def test_attack_rounds(runs, tmp_path):
    got = _study("attack-rounds", [runs["both"]], tmp_path, "rounds=3", "n=2")
    assert list(got["attacks"]) == ["iter-stepll-3", "a3-iter-stepll-3"] and got["rounds"] == [0, 1, 2, 3]
    for stats in got["attacks"].values():
        assert len(stats["fooled"]) == len(stats["iou_clean"]) == 4
        assert stats["fooled"][0] == 0.0 and stats["iou_clean"][0] == pytest.approx(1.0)  # round 0: the clean image
    # round k is the attack's own output: its fooled fraction is the attack's, run on its own
    from attnguard.attacks.registry import build_attack
    from attnguard.rundir import RunDir

    run = RunDir(runs["both"])
    model = run.model("cpu")
    x, y = run.test_examples(200)
    idx = torch.tensor(got["examples"])
    for name, stats in got["attacks"].items():
        attack = build_attack(name, 0.3, seed=run.seed)
        attack.skip_misclassified = False
        fooled = float((model(attack(model, x[idx], y[idx])).argmax(1) != y[idx]).float().mean())
        assert stats["fooled"][-1] == fooled, name


@pytest.mark.parametrize("attacks,message", [("iter-stepll-5", "without the step count"),
                                              ("square", "needs iterative attacks")])
def test_attack_rounds_bad_attacks_are_one_line(runs, tmp_path, capsys, attacks, message):
    assert main(["study", "attack-rounds", str(runs["both"]), "--out", str(tmp_path), "--device", "cpu",
                 "--set", f"attacks={attacks}", "--set", "rounds=2", "--set", "n=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_ablation_maps(runs, tmp_path):
    order = [runs[k] for k in ("raw", "rect", "pres", "both")]
    got = _study("ablation-maps", order, tmp_path, "attack=pgd-2", "n=3")
    models = got["models"]
    assert [m["role"] for m in models] == ["raw model", "rectification only", "preservation only",
                                           "rectification + preservation"]
    assert [(m["preset"], m["alpha"], m["beta"]) for m in models] == [
        ("madry", None, None), ("madry+aad", 0.01, 0.0), ("madry+aad", 0.0, 0.01), ("madry+aad", 0.01, 0.01)]
    assert got["notes"] == [] and got["n"] == 3 and got["attack"] == "pgd-2"
    assert all(0 <= m["acc_adv"] <= m["acc_clean"] <= 1 and 0 <= m["iou_clean_adv"] <= 1 for m in models)


def test_ablation_maps_names_runs_out_of_place(runs):
    from attnguard.rundir import RunDir
    from attnguard.studies.ablation_maps import _misfit, defense_of

    placed = [_misfit(i, defense_of(RunDir(runs[k]))) for i, k in enumerate(("both", "raw", "rect", "pres"))]
    assert all(placed) and "'raw model' position" in placed[0] and "madry+aad" in placed[0]
    assert _misfit(3, defense_of(RunDir(runs["both"]))) is None


def test_ablation_maps_takes_four_runs(runs, tmp_path, capsys):
    assert main(["study", "ablation-maps", str(runs["raw"]), str(runs["both"]), "--out", str(tmp_path)]) == 2
    assert "takes 4 run(s), got 2" in capsys.readouterr().err
