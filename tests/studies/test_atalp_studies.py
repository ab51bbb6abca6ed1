"""AT+ALP's studies end to end through ``attnguard study`` on tiny runs: transfer-curves (Fig. 3), group-maps
(Fig. 4) and part-activations (Table 3).

Runs, CPU: two LeNet width 0.25 (seeds 0 and 1) and one small-cnn on mnist-5k, standard training, 30 steps
(enough to be right on most digits, so the transferred attack has something to do); ResNet-9 width 0.125 at+alp
and madry on synthetic-boxes, 3 steps. Each study writes a real, non-blank PNG and the numbers behind it, which
are checked against an independent computation where one exists."""

import math

import pytest
import torch

from attnguard.analysis._run import attack_all, make_attack
from attnguard.attacks.pgd import PGD
from attnguard.attention.hooks import forward_with_activations
from _support import study_numbers as _study
from attnguard.cli import main
from attnguard.defenses.at import attention_pairing
from attnguard.rundir import RunDir

COMMON = ["--set", "train.val_steps=1", "--set", "adversary.steps=1", "--set", "train.progress=false", "--device",
          "cpu", "--no-eval", "--epochs", "1", "--set", "data.val_size=50", "--set", "train.attention_snapshots=0"]
MNIST = ["--set", "model.width=0.25", "--defense", "standard", "--set", "train.max_steps=30", *COMMON]
BOXES = ["--model", "resnet9", "--set", "model.width=0.125", "--dataset", "synthetic-boxes", "--set",
         "train.max_steps=3", *COMMON]


@pytest.fixture(scope="module")
def mnist_runs(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("atalp-mnist")
    runs = {"l0": ("lenet", 0), "l1": ("lenet", 1), "s0": ("small-cnn", 0)}
    for name, (model, seed) in runs.items():
        assert main(["train", "--out", str(root / name), "--model", model, "--seed", str(seed), *MNIST]) == 0
    return {k: root / k for k in runs}


@pytest.fixture(scope="module")
def box_runs(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("atalp-boxes")
    for d in ("at+alp", "madry"):
        assert main(["train", "--out", str(root / d), "--defense", d, *BOXES]) == 0
    return [root / "at+alp", root / "madry"]


def test_transfer_curves_gray_and_black_box(mnist_runs, tmp_path):
    r = mnist_runs
    got = _study("transfer-curves", [r["l0"], r["l0"]], tmp_path, f"sources={r['l1']},{r['s0']}", "n=64",
                 "iterations=3,1")
    assert got["iterations"] == [1, 3] and got["n"] == 64 and got["eps"] == pytest.approx(0.3)
    gray, black = got["pairs"]
    assert (gray["setting"], black["setting"]) == ("gray-box", "black-box")  # lenet->lenet, small-cnn->lenet
    assert gray["source_arch"] == "lenet w0.25" and black["source_arch"].startswith("small-cnn")
    x, y = RunDir(r["l0"]).test_examples(64)
    target, source = RunDir(r["l0"]).model("cpu").eval(), RunDir(r["l1"]).model("cpu").eval()
    with torch.no_grad():
        clean_ok = target(x).argmax(1) == y
    assert gray["clean_accuracy"] == pytest.approx(float(clean_ok.float().mean()), abs=1e-4)
    assert gray["clean_accuracy"] > 0.5  # trained: the curves measure something
    for k, acc in zip(got["iterations"], gray["accuracy"]):
        # PGD-K on the seed-1 copy, every example perturbed; counted as the evaluation counts
        x_adv = PGD(0.3, 2.5 * 0.3 / k, k, skip_misclassified=False, seed=0)(source, x, y)
        with torch.no_grad():
            ok = clean_ok & (target(x_adv).argmax(1) == y)
        assert acc == pytest.approx(float(ok.float().mean()), abs=1e-4)
    for k, acc in zip(got["iterations"], got["white_box"][str(r["l0"])]):
        x_adv = make_attack(f"pgd-{k}", 0.3, seed=0)(target, x, y)
        with torch.no_grad():
            assert acc == pytest.approx(float((target(x_adv).argmax(1) == y).float().mean()), abs=1e-4)
    # the seed-1 copy's examples transfer, but less than the attack on the target itself
    assert got["white_box"][str(r["l0"])][-1] < gray["accuracy"][-1] <= gray["clean_accuracy"]


def test_transfer_curves_sources_are_checked(mnist_runs, tmp_path, capsys):
    r = mnist_runs
    assert main(["study", "transfer-curves", str(r["l0"]), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sources=SRC1,SRC2" in err
    argv = ["study", "transfer-curves", str(r["l0"]), str(r["l1"]), "--out", str(tmp_path / "b"), "--set",
            f"sources={r['l1']},{r['s0']},{r['l0']}"]
    assert main(argv) == 2
    assert "2 target run(s) but 3 sources" in capsys.readouterr().err


def test_runs_given_by_checkpoint_keep_their_run_name(box_runs):
    # RUN/checkpoints/last.pt picks the last epoch over best.pt; the legends must still say which run it is
    from attnguard.studies._runs import run_label, run_name

    last = RunDir(box_runs[0] / "checkpoints" / "last.pt")
    assert run_name(last) == "at+alp/last" and run_label(last) == "at+alp/last (at+alp)"
    assert run_name(RunDir(box_runs[1])) == "madry" and run_label(RunDir(box_runs[1])) == "madry"


def test_group_maps_distance_is_the_pairing_term(box_runs, tmp_path):
    got = _study("group-maps", box_runs, tmp_path, "n=2", "n_stats=16", "attack=pgd-2")
    assert got["n"] == 16 and got["n_shown"] == 2 and [r["defense"] for r in got["runs"]] == ["at+alp", "madry"]
    run = RunDir(box_runs[0])
    model = run.model("cpu").eval()
    x, y = run.test_examples(16)
    x_adv = attack_all(make_attack("pgd-2", got["eps"], seed=run.seed), model, x, y)
    layers = list(model.group_layers)
    with torch.no_grad():
        _, a_clean = forward_with_activations(model, x, layers)
        _, a_adv = forward_with_activations(model, x_adv, layers)
    groups = got["runs"][0]["groups"]
    assert [g["layer"] for g in groups] == layers
    for j, g in enumerate(groups):
        # the at+alp defense's own loss term (AT+ALP eq. 4, p = 2) for this group alone
        assert g["distance"] == pytest.approx(float(attention_pairing([a_clean[j]], [a_adv[j]])), abs=2e-4)
        assert 0 <= g["distance"] <= math.sqrt(2) and 0 <= g["iou_top"] <= 1
        h, w = g["grid"]
        assert g["top_cells"] == math.ceil(0.2 * h * w)


def test_part_activations_dataset_and_user_boxes(box_runs, tmp_path, capsys):
    got = _study("part-activations", box_runs, tmp_path / "a", "n=32", "attack=pgd-2")
    assert got["n"] == got["n_with_box"] == 32 and got["boxes"] == "dataset"
    boxes = RunDir(box_runs[0]).load_dataset().test.boxes[:32]
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).float().mean() / (32 * 32)
    assert got["box_share"] == pytest.approx(float(area), abs=2e-3)
    for rec in got["runs"]:
        assert len(rec["groups"]) == 3
        for g in rec["groups"]:
            for kind in ("clean", "adv"):
                assert 0 <= g[kind]["inside"] <= 1 and 0 <= g[kind]["outside"] <= 1 and 0 < g[kind]["mass_inside"] < 1
    table = (tmp_path / "a" / "part-activations.md").read_text()
    assert table.count("| at+alp |") == 3 and table.count("| madry |") == 3 and "clean inside" in table

    # user boxes covering whole images: everything is inside, nothing outside
    csv = tmp_path / "boxes.csv"
    csv.write_text("index,xmin,ymin,xmax,ymax\n" + "".join(f"{i},0,0,32,32\n" for i in range(8)))
    got = _study("part-activations", box_runs[:1], tmp_path / "b", "n=8", "attack=pgd-1", f"boxes={csv}")
    assert got["boxes"] == str(csv) and got["box_share"] == 1.0
    for g in got["runs"][0]["groups"]:
        assert g["clean"]["mass_inside"] == pytest.approx(1.0) and g["clean"]["outside"] is None


def test_part_activations_needs_boxes(mnist_runs, tmp_path, capsys):
    assert main(["study", "part-activations", str(mnist_runs["l0"]), "--out", str(tmp_path), "--set", "n=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs object boxes" in err and "--set boxes=" in err


def test_transfer_curves_setting_of_an_export_reads_its_architecture(mnist_runs, tmp_path):
    # an exported copy of a run has the run's architecture: gray-box against a run of that architecture,
    # black-box against another (before, an export had no model keys and every pair read as black-box)
    from attnguard.io import export_safetensors
    from attnguard.rundir import RunDir
    from attnguard.studies.transfer_curves import setting_of

    r = mnist_runs
    export_safetensors(RunDir(r["l1"]).model(), tmp_path / "l1.safetensors", dataset=RunDir(r["l1"]).dataset)
    exported = RunDir(tmp_path / "l1.safetensors")
    assert setting_of(exported, RunDir(r["l0"])) == "gray-box"
    assert setting_of(exported, RunDir(r["s0"])) == "black-box"


def test_transfer_curves_sources_named_as_a_sweep_names_runs(mnist_runs, tmp_path):
    # `attnguard sweep` names runs KEY=V,seed=S: such sources keep their commas through --set sources=
    r = mnist_runs
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "defense.preset=standard,seed=1").symlink_to(r["l1"], target_is_directory=True)
    (sweep / "model.name=small-cnn,seed=0").symlink_to(r["s0"], target_is_directory=True)
    got = _study("transfer-curves", [r["l0"], r["l0"]], tmp_path / "out",
                 f"sources={sweep / 'defense.preset=standard,seed=1'},{sweep / 'model.name=small-cnn,seed=0'}",
                 "n=16", "iterations=1", "white_box=false")
    assert [p["setting"] for p in got["pairs"]] == ["gray-box", "black-box"]
    assert got["pairs"][0]["source"].endswith("defense.preset=standard,seed=1")
