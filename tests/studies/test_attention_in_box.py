"""``attention-in-box`` (AAD Tables 1-2 style, across models): the in-box share and the correlation helper on
hand-made numbers, then the study end to end through ``attnguard study`` on three tiny synthetic-boxes runs
(ResNet-9 width 0.125, 3 steps: standard seeds 0 and 1, madry seed 0) given hand-written eval files."""

import json
import math
import statistics

import numpy as np
import pytest
import torch

from _support import study_numbers
from attnguard.analysis.iou import boxes_to_mask
from attnguard.attention import grad_cam
from attnguard.cli import main
from attnguard.rundir import RunDir
from attnguard.studies.attention_in_box import _spearman, bootstrap_mean, box_mass_share, correlation

COMMON = ["--model", "resnet9", "--set", "model.width=0.125", "--dataset", "synthetic-boxes", "--set",
          "train.max_steps=3", "--set", "train.val_steps=1", "--set", "adversary.steps=1", "--set",
          "train.progress=false", "--device", "cpu", "--no-eval", "--epochs", "1", "--set", "data.val_size=50",
          "--set", "train.attention_snapshots=0"]


# ---------------------------------------------------------------- hand-made maps and numbers
def test_in_box_share_by_hand():
    # a 4x4 map: mass 1+2+3+4 = 10 in the top-left 2x2 box, 5 in one cell outside it
    cam = torch.zeros(3, 4, 4)
    cam[0, :2, :2] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    cam[0, 3, 3] = 5.0  # outside: share 10 / 15
    cam[0, 2, 0] = -7.0  # negative evidence: Grad-CAM's ReLU removes it, it moves no mass
    cam[1] = 1.0  # flat: the share is the box's area, 4 / 16
    # cam[2] stays all zero: no mass to place, so no share (NaN), not 0.5
    region = boxes_to_mask(torch.tensor([[0.0, 0.0, 2.0, 2.0]] * 3), 4, 4)
    assert int(region[0].sum()) == 4 and bool(region[0, :2, :2].all())
    share = box_mass_share(cam, region)
    assert share[0].item() == pytest.approx(10 / 15) and share[1].item() == pytest.approx(0.25)
    assert math.isnan(share[2].item())
    # an image without a box has no share either
    empty = region.clone()
    empty[1] = False
    assert math.isnan(box_mass_share(cam, empty)[1].item())
    # a 2x2 map upsampled to 4x4 (bilinear): mass only in its top-left cell; the 2x2 box of the image then
    # holds the weights 1, 3/4, 3/4, 9/16 of that cell out of the total (1 + 3/4 + 1/4)^2 = 4
    small = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    assert box_mass_share(small, region[:1]).item() == pytest.approx((1 + 0.75 + 0.75 + 0.5625) / 4)


def test_bootstrap_mean_skips_undefined_values():
    got = bootstrap_mean([0.2, float("nan"), 0.2, 0.2])
    assert got == {"mean": pytest.approx(0.2), "ci": [pytest.approx(0.2), pytest.approx(0.2)], "n": 3}
    got = bootstrap_mean([0.0, 1.0] * 50)
    assert got["mean"] == 0.5 and got["n"] == 100 and 0.35 < got["ci"][0] < 0.5 < got["ci"][1] < 0.65
    assert bootstrap_mean([float("nan")]) == {"mean": None, "ci": None, "n": 0}


def test_correlation_by_hand():
    c = correlation([1, 2, 3, 4], [2, 4, 6, 8], resamples=500)
    assert c["pearson"] == pytest.approx(1.0) and c["spearman"] == pytest.approx(1.0) and c["n_runs"] == 4
    assert c["pearson_ci"] == [pytest.approx(1.0), pytest.approx(1.0)] and c["spearman_ci"] == c["pearson_ci"]
    # resamples drawing one run 4 times have no variance: about 500 / 4^3 of them, skipped and counted
    assert 0 < c["skipped"] < 30 and "only 4 runs" in c["note"]
    assert c["pearson_ci_fisher"] == [pytest.approx(1.0), pytest.approx(1.0)]
    # Pearson: cov 8 / sqrt(10 * 10); Spearman: 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 4 / 120
    c = correlation([1, 2, 3, 4, 5], [1, 3, 2, 5, 4])
    assert c["pearson"] == pytest.approx(0.8) and c["spearman"] == pytest.approx(0.8)
    assert -1 <= c["pearson_ci"][0] < 0.8 < c["pearson_ci"][1] <= 1
    # Fisher z: tanh(atanh 0.8 -+ 1.96 / sqrt 2)
    assert c["pearson_ci_fisher"] == [pytest.approx(-0.27964, abs=1e-4), pytest.approx(0.98620, abs=1e-4)]
    # ten runs: no small-sample note; no Fisher interval below 4 runs
    assert correlation(range(10), [v * v for v in range(10)])["note"] is None
    assert correlation([1, 2, 3], [1, 3, 2])["pearson_ci_fisher"] is None
    # ties share their average rank: ranks (1.5, 1.5, 3) vs (1, 2, 3) -> 1.5 / sqrt(1.5 * 2)
    assert _spearman(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(1.5 / math.sqrt(3))
    # anti-correlated, a None pair dropped
    c = correlation([1, 2, None, 3], [3, 2, 9, 1])
    assert c["n_runs"] == 3 and c["pearson"] == pytest.approx(-1.0)
    for few in (([1, 2], [3, 4]), ([1, 2, 3], [1, None, None])):
        c = correlation(*few)
        assert c["pearson"] is None and c["pearson_ci"] is None and "at least 3" in c["note"]
    c = correlation([1, 2, 3], [5, 5, 5])
    assert c["pearson"] is None and c["spearman"] is None and "same for every run" in c["note"]


# ---------------------------------------------------------------- end to end
def _eval(path, eps, clean, attacks, n_per_attack, n_examples=100):
    path.write_text(json.dumps({"dataset": "synthetic-boxes", "model": "resnet9", "eps": eps, "n_examples": n_examples,
                                "clean": clean, "attacks": attacks, "n_per_attack": n_per_attack,
                                "worst_case": min(attacks.values()), "seconds": {}, "sanity": []}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("attention-in-box")
    out = {}
    for name, defense, seed in (("std0", "standard", 0), ("std1", "standard", 1), ("madry0", "madry", 0)):
        out[name] = root / name
        assert main(["train", "--out", str(out[name]), "--defense", defense, "--seed", str(seed), *COMMON]) == 0
    eps = RunDir(out["std0"]).eps
    _eval(out["std0"] / "eval.json", eps, 0.9, {"pgd-20": 0.3, "autoattack": 0.2}, {"pgd-20": 100, "autoattack": 50})
    # AutoAttack in later files beside eval.json, as `attnguard eval` writes them: the one on more examples counts
    _eval(out["std1"] / "eval.json", eps, 0.8, {"pgd-20": 0.4}, {"pgd-20": 100})
    _eval(out["std1"] / "eval-autoattack-n80.json", eps, 0.8, {"autoattack": 0.25}, {"autoattack": 80})
    _eval(out["std1"] / "eval-autoattack-n20.json", eps, 0.8, {"autoattack": 0.95}, {"autoattack": 20})
    # no AutoAttack at all, and its PGD-20 was run at another radius
    _eval(out["madry0"] / "eval.json", 2 * eps, 0.7, {"pgd-20": 0.55}, {"pgd-20": 100})
    return out


def test_end_to_end_shares_eval_numbers_and_presets(runs, tmp_path):
    dirs = [runs["std0"], runs["std1"], runs["madry0"]]
    got = study_numbers("attention-in-box", dirs, tmp_path, "n=16", "attack=pgd-2", "resamples=200")
    assert (got["n"], got["n_with_box"], got["boxes"], got["metric"]) == (16, 16, "dataset", "autoattack")
    run = RunDir(runs["std0"])
    x, y = run.test_examples(16)
    boxes = run.load_dataset().test.boxes[:16]
    region = boxes_to_mask(torch.as_tensor(boxes).float(), *x.shape[-2:])
    assert got["uniform"] == pytest.approx(float(region.float().mean()), abs=1e-6)
    # the clean share of std0, independently: Grad-CAM through the gradient path, share computed in place
    model = run.model("cpu").eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    cam = torch.nn.functional.interpolate(grad_cam(model, None, x, target=pred, closed_form=False)[:, None],
                                          size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    total = cam.flatten(1).sum(1)
    keep = total > 0
    share = ((cam * region).flatten(1).sum(1) / total)[keep]
    r0 = got["runs"][0]
    assert r0["clean"]["mean"] == pytest.approx(float(share.mean()), abs=1e-4)
    assert r0["clean"]["n"] == int(keep.sum()) and r0["clean"]["n_zero"] == 16 - int(keep.sum())
    for r in got["runs"]:
        for kind in ("clean", "adv"):
            s = r[kind]
            assert s["n"] + s["n_zero"] == 16 and s["ci"][0] <= s["mean"] <= s["ci"][1] and 0 <= s["mean"] <= 1
    # robust accuracy from the eval files: std1's from the AutoAttack file on 80 examples, not the one on 20
    e = [r["eval"] for r in got["runs"]]
    assert (e[0]["robust"], e[0]["n_robust"], e[0]["robust_file"]) == (0.2, 50, "eval.json")
    assert (e[1]["robust"], e[1]["n_robust"], e[1]["robust_file"]) == (0.25, 80, "eval-autoattack-n80.json")
    assert (e[0]["clean"], e[0]["n_clean"], e[1]["clean_file"]) == (0.9, 100, "eval.json")
    # the run without the metric: null and named in the notes, out of the correlation (2 runs: too few)
    assert e[2]["robust"] is None and e[2]["clean"] == 0.7
    assert any("madry0" in n and "autoattack" in n for n in got["notes"])
    assert got["correlation"]["adv"]["pearson"] is None and got["correlation"]["adv"]["n_runs"] == 2
    std, madry = got["presets"]["standard"], got["presets"]["madry"]
    assert std["runs"] == 2 and madry["runs"] == 1
    assert std["robust"]["mean"] == pytest.approx(0.225) and std["robust"]["std"] == pytest.approx(
        statistics.stdev([0.2, 0.25]))
    adv = [r["adv"]["mean"] for r in got["runs"][:2]]
    assert std["adv_share"]["mean"] == pytest.approx(sum(adv) / 2) and madry["robust"] == {
        "mean": None, "std": None, "n_runs": 0}
    table = (tmp_path / "attention-in-box.md").read_text()
    assert "| standard | 2 |" in table and "| madry | 1 |" in table and "null (2 run(s)" in table

    # with a metric every run has, the correlation is over 3 runs: Pearson as numpy computes it
    got = study_numbers("attention-in-box", dirs, tmp_path / "pgd", "n=16", "attack=pgd-2", "metric=pgd-20",
                        "resamples=200")
    c = got["correlation"]["adv"]
    adv = [r["adv"]["mean"] for r in got["runs"]]
    assert c["n_runs"] == 3 and c["pearson"] == pytest.approx(float(np.corrcoef(adv, [0.3, 0.4, 0.55])[0, 1]))
    assert c["pearson_ci"][0] <= c["pearson"] <= c["pearson_ci"][1] and c["skipped"] > 0
    assert any("madry0" in n and "eps" in n for n in got["notes"])  # its PGD-20 ran at another radius


def test_run_without_metric_and_bad_options(runs, tmp_path, capsys):
    got = study_numbers("attention-in-box", [runs["madry0"]], tmp_path / "a", "n=8", "attack=pgd-1",
                        "resamples=100")
    assert got["runs"][0]["eval"]["robust"] is None and got["presets"]["madry"]["robust"]["mean"] is None
    assert len(got["notes"]) == 1 and "no evaluation file holds 'autoattack'" in got["notes"][0]
    assert got["correlation"]["clean"]["pearson"] is None and "at least 3" in got["correlation"]["clean"]["note"]
    for bad in ("resamples=5", "metric=", "n=0"):
        argv = ["study", "attention-in-box", str(runs["madry0"]), "--out", str(tmp_path / "b"), "--set", bad]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
