"""Study ``defense-maps`` (AAD Fig. 10-11) end to end through the CLI, on two tiny LeNet runs.

The counts are checked against an independent recount (StepLL crafted on the clean model, the
default), so a study that crafted on the wrong model or mislabelled an outcome would fail; the
figure is checked as a PNG that is not blank.
"""

import json

import numpy as np
import pytest
import torch
import yaml
from _support import is_png, train_tiny_lenet

from attnguard.attacks.stepll import StepLL
from attnguard.cli import main
from attnguard.data import load_dataset
from attnguard.io import atomic_torch_save
from attnguard.rundir import RunDir


def _run(path, model, preset):
    cfg = {"data": {"name": "mnist-5k", "root": None}, "model": {"name": "lenet"}, "defense": {"preset": preset},
           "adversary": {"eps": 0.3}, "seed": 0}
    path.mkdir(parents=True)
    atomic_torch_save({"format": "attnguard-checkpoint", "model_config": model.config, "model": model.state_dict(),
                       "config": cfg}, path / "checkpoints" / "best.pt")
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    train = load_dataset("mnist-5k").train  # the runs' own dataset: faster than parsing the CSV again
    x, y = train.images.float() / 255, train.labels
    root = tmp_path_factory.mktemp("defense-maps")
    clean = train_tiny_lenet(x, y, steps=100)
    # a second, differently trained model stands in for the defended one
    defended = train_tiny_lenet(x, y, steps=40)
    return _run(root / "clean", clean, "standard"), _run(root / "defended", defended, "stepll-at")


def _recount(clean_run, defended_run, pool, on="clean"):
    clean, defended = RunDir(clean_run).model("cpu"), RunDir(defended_run).model("cpu")
    x, y = RunDir(defended_run).test_examples(pool)
    x_adv = StepLL(0.3)(clean if on == "clean" else defended, x, y)
    with torch.no_grad():
        eligible = (clean(x).argmax(1) == y) & (defended(x).argmax(1) == y)
        ok = defended(x_adv).argmax(1) == y
    return int(eligible.sum()), int((eligible & ok).sum())


def test_defense_maps_through_the_cli(runs, tmp_path, capsys):
    from matplotlib.image import imread

    clean_run, defended_run = runs
    out = tmp_path / "out"
    assert main(["study", "defense-maps", clean_run, defended_run, "--out", str(out), "--device", "cpu",
                 "--set", "n=2", "--set", "pool=64"]) == 0
    rec = json.loads((out / "defense-maps.json").read_text())
    num = rec["numbers"]
    eligible, success = _recount(clean_run, defended_run, 64)
    assert num["eligible"] == eligible > 0 and num["success"] == success
    assert num["success"] + num["failure"] == num["eligible"] and num["examples"] == 64
    assert num["success"] > 0 and num["failure"] > 0  # both panels have examples at this size
    assert len(num["shown"]["success"]) == 2 and len(num["shown"]["failure"]) == 2
    ious = num["iou_clean_vs_adversarial"]
    for group in ("all", "success", "failure"):
        assert all(0.0 <= ious[group][m] <= 1.0 for m in ("clean", "defended")), ious
    assert rec["options"]["crafted_on"] == "clean" and rec["paper"] == "AAD Fig. 10-11"
    png = out / "defense-maps.png"
    assert is_png(png)
    pixels = imread(str(png))
    assert pixels.shape[0] > 400 and float(np.var(pixels[..., :3])) > 0

    # crafted on the defended model (a white-box attack on it): other adversarial images, other counts
    assert main(["study", "defense-maps", clean_run, defended_run, "--out", str(tmp_path / "wb"), "--device",
                 "cpu", "--set", "n=1", "--set", "pool=64", "--set", "crafted_on=defended"]) == 0
    wb = json.loads((tmp_path / "wb" / "defense-maps.json").read_text())["numbers"]
    assert (wb["eligible"], wb["success"]) == _recount(clean_run, defended_run, 64, on="defended")
    assert wb["success"] != num["success"]


def test_defense_maps_bad_option_is_one_line(runs, tmp_path, capsys):
    assert main(["study", "defense-maps", *runs, "--out", str(tmp_path), "--set", "crafted_on=both"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "crafted_on must be one of clean, defended" in err
    assert main(["study", "defense-maps", runs[0], "--out", str(tmp_path)]) == 2
    assert "takes 2 run(s), got 1" in capsys.readouterr().err
