"""``attnguard sweep`` end to end through the CLI: a 2x2 grid over 2 seeds trained by child processes
(2 at a time), a second invocation that trains nothing, the table and the plot; an interrupted run
resumed by the sweep, with an extra evaluation; --print-commands. Tiny runs: LeNet width 0.25, 2 steps."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from _support import is_png
from attnguard.cli import main
from attnguard.train import trainer as T


def _tiny(steps=2, epochs=1):
    return ["--epochs", str(epochs), "--batch-size", "50", "--device", "cpu", "--set", "model.width=0.25",
            "--set", f"train.max_steps={steps}", "--set", "data.val_size=50", "--set", "train.val_steps=1",
            "--set", "adversary.steps=1", "--set", "train.progress=false", "--set", "eval.n_examples=20",
            "--set", "eval.attacks=[fgsm]"]


TINY = _tiny()
GRID = ["--grid", "defense.aad.alpha=0,0.01", "--grid", "adversary.eps=0.1,0.3", "--seeds", "0,1"]


def _mtimes(out):
    return {p.parent.parent.name: p.stat().st_mtime_ns for p in out.glob("*/checkpoints/last.pt")}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "s"
    argv = ["sweep", *GRID, "--jobs", "2", "--out", str(out), *TINY]
    assert main(argv) == 0
    return out, argv


def test_grid_runs_as_run_directories_and_a_second_invocation_trains_nothing(swept, capsys):
    out, argv = swept
    runs = sorted(p for p in out.iterdir() if (p / "config.yaml").is_file())
    assert len(runs) == 8
    assert out / "defense.aad.alpha=0.01,adversary.eps=0.3,seed=1" in runs
    for run in runs:
        assert json.loads((run / "train.json").read_text())["complete"] is True
        assert (run / "eval.json").is_file()  # train's own final evaluation, as configured
    before = _mtimes(out)
    for name in ("sweep.md", "sweep.png", "sweep.json"):
        (out / name).unlink()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "8 runs: 8 done, 0 to resume, 0 to train"
    assert "start" not in printed and _mtimes(out) == before  # nothing trained again
    assert all((out / n).is_file() for n in ("sweep.md", "sweep.png", "sweep.json"))  # regenerated anyway


def test_table_plot_and_numbers(swept):
    out, _ = swept
    md = (out / "sweep.md").read_text()
    rows = [l for l in md.splitlines() if l.startswith("| ") and "±" in l]
    assert len(rows) == 4, md
    head = next(l for l in md.splitlines() if l.startswith("| "))
    assert head.startswith("| defense.aad.alpha | adversary.eps | seeds |") and "| clean |" in head, head
    assert rows[0].startswith("| 0 | 0.1 | 2 |") and rows[3].startswith("| 0.01 | 0.3 | 2 |")
    data = json.loads((out / "sweep.json").read_text())
    assert data["keys"] == ["defense.aad.alpha", "adversary.eps"] and len(data["points"]) == 4
    for p in data["points"]:
        assert p["n"] == 2 and p["seeds"] == [0, 1] and len(p["clean"]["values"]) == 2 and not p["missing"]
        assert 0 <= p["worst_case"]["mean"] <= p["clean"]["mean"] <= 1
    assert is_png(out / "sweep.png")
    from matplotlib.image import imread

    img = imread(out / "sweep.png")
    assert img.shape[0] > 200 and img.shape[1] > 400 and img[..., :3].std() > 0.05  # drawn, not blank


def _sigint_after_step(monkeypatch, at_step):
    real = T.Trainer.train_step

    def step(self, x, y):
        real(self, x, y)
        if self.step + 1 == at_step:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C; the trainer saves last.pt and exits 130

    monkeypatch.setattr(T.Trainer, "train_step", step)


def test_an_interrupted_run_is_resumed_and_evaluated(tmp_path, monkeypatch, capsys):
    out = tmp_path / "s"
    argv = ["sweep", "--grid", "defense.aad.alpha=0.01", "--seeds", "3", "--out", str(out), *_tiny(3),
            "--eval-attacks", "fgsm", "--eval-n", "10"]
    assert main(argv + ["--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("OMP_NUM_THREADS=")  # nothing else on stdout
    steps = [shlex.split(s) for s in lines[0].split(" && ")]
    train, evaluate = (s[s.index("attnguard") + 1:] for s in steps)
    assert train[0] == "train" and evaluate[:2] == ["eval", str(out / "defense.aad.alpha=0.01,seed=3")]
    # the printed train line run here, stopped by Ctrl-C after step 2 of 3
    _sigint_after_step(monkeypatch, 2)
    assert main(train) == 130
    monkeypatch.undo()
    run = out / "defense.aad.alpha=0.01,seed=3"
    assert json.loads((run / "train.json").read_text())["complete"] is False
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "1 runs: 0 done, 1 to resume, 0 to train"
    info = json.loads((run / "train.json").read_text())
    assert info["complete"] is True and info["resumed"] is True and info["steps"] == 3
    assert (run / "eval.json").is_file() and (run / "eval-fgsm-n10.json").is_file()
    assert json.loads((run / "eval-fgsm-n10.json").read_text())["n_examples"] == 10
    assert main(argv + ["--print-commands"]) == 0 and capsys.readouterr().out == ""  # nothing left to do


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_and_the_same_command_continues(tmp_path):
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "attnguard", "sweep", "--grid", "defense.aad.alpha=0.01", "--seeds", "0,1",
           "--jobs", "1", "--out", str(out), *_tiny(400, epochs=5), "--no-eval"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "defense.aad.alpha=0.01,seed=0" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.2)  # the first run is training
    proc.send_signal(signal.SIGINT)  # to the sweep only, as its children have their own process group
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert "run the same attnguard sweep command again" in stderr.strip().splitlines()[-1]
    run = metrics.parent
    assert (run / "checkpoints" / "last.pt").is_file()
    assert json.loads((run / "train.json").read_text())["complete"] is False
    assert not (out / "defense.aad.alpha=0.01,seed=1").exists()  # not launched after the Ctrl-C
    dry = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.stdout.splitlines()[0] == "2 runs: 0 done, 1 to resume, 1 to train"


SMALL_FILES = ("config.yaml", "train.json", "eval.json", "eval.md")  # what a results commit keeps of a run


def test_runs_with_pruned_checkpoints_are_done_and_their_table_comes_back(swept, tmp_path, capsys):
    """Results kept as small files (no checkpoints) copied into a fresh sweep folder: nothing is trained
    again, the table is the same, and an evaluation they lack is reported as not possible, not attempted."""
    import shutil

    src, argv = swept
    out = tmp_path / "copied"
    for run in (p for p in src.iterdir() if (p / "config.yaml").is_file()):
        (out / run.name).mkdir(parents=True)
        for name in SMALL_FILES:
            shutil.copy2(run / name, out / run.name / name)
    here = argv[:argv.index("--out") + 1] + [str(out)] + argv[argv.index("--out") + 2:]
    capsys.readouterr()
    assert main(here) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "8 runs: 8 done (8 with checkpoints pruned), 0 to resume, 0 to train", printed
    assert not any(l.startswith(("start", "not possible")) for l in printed), printed
    assert not any((out / r / "checkpoints").exists() for r in os.listdir(out) if "seed=" in r)  # nothing trained
    points = json.loads((out / "sweep.json").read_text())["points"]
    assert points == json.loads((src / "sweep.json").read_text())["points"] and all(p["n"] == 2 for p in points)
    dry = main(here + ["--dry-run"]) == 0 and capsys.readouterr().out.splitlines()
    assert dry and sum(l.endswith(": done, checkpoints pruned") for l in dry) == 8, dry
    assert (out / "sweep.md").read_text().split("\n| ", 1)[1] == (src / "sweep.md").read_text().split("\n| ", 1)[1]
    # an extra evaluation: one line per run that lacks it, nothing launched, nothing written
    kept = out / "defense.aad.alpha=0,adversary.eps=0.1,seed=0"
    (kept / "eval-fgsm-n10.json").write_text((kept / "eval.json").read_text())  # stands for one that was made
    extra = here + ["--eval-attacks", "fgsm", "--eval-n", "10"]
    assert main(extra) == 0
    printed = capsys.readouterr().out.splitlines()
    lines = [l for l in printed if l.startswith("not possible: ")]
    assert len(lines) == 7 and not any(kept.name + ":" in l for l in lines), printed
    assert all("--eval-attacks fgsm on 10 examples (eval-fgsm-n10.json): its checkpoints were pruned" in l
               for l in lines), lines[0]
    assert not any(l.startswith("start") for l in printed) and len(list(out.glob("*/eval-fgsm-n10.json"))) == 1
    # --print-commands: no command to print; the same lines go to stderr, stdout stays commands only
    assert main(extra + ["--print-commands"]) == 0
    got = capsys.readouterr()
    assert got.out == "" and got.err.count("not possible: ") == 7
