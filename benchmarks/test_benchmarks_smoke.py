"""Smoke tests of the benchmark scripts at tiny settings (they are scripts, not tests of speed).

Run: ``OMP_NUM_THREADS=1 pytest benchmarks/test_benchmarks_smoke.py`` (about a minute on 2 cores).
Each script must run end to end, print its table and append it, with the command line and the
machine description, to the markdown file given by ``--doc``. The CUDA variants run only where a
GPU is present (the same code paths the real GPU runs take, at tiny sizes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_attacks  # noqa: E402
import bench_defenses  # noqa: E402
import bench_gradcam  # noqa: E402
import bench_training  # noqa: E402

TINY = {
    "attacks": (bench_attacks, ["--models", "lenet", "--batch-size", "4", "--steps", "2"],
                ["torchattacks.PGD fp32", "attnguard PGD fp32"]),
    "gradcam": (bench_gradcam, ["--no-imagenet", "--batch-size", "2"],
                ["pytorch-grad-cam", "closed form, full", "gradient path, raw map"]),
    "defenses": (bench_defenses, ["--models", "lenet", "--batch-size", "4", "--presets", "madry", "afm", "madry+aad",
                                  "--steps", "1"], ["| madry |", "| afm |", "| madry+aad |"]),
    "training": (bench_training, ["--batch-size", "2", "--steps-per-round", "1", "--warmup-steps", "0", "--width",
                                  "0.125", "--pgd-steps", "1", "--aa-points", "2", "--aa-version", "custom-tiny",
                                  "--aa-worst-points", "1"],
                 ["images/s", "one 50,000-image epoch", "AutoAttack custom-tiny (NOT standard)", "apgd-ce"]),
}
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(TINY))
def test_script_runs_and_appends(name, device, tmp_path, monkeypatch):
    module, argv, expected = TINY[name]
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text("# header kept\n")
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{module.__name__}.py"])
    text = module.main(argv + ["--device", device, "--repeats", "1", "--warmup", "0", "--doc", str(doc)])
    for s in expected:
        assert s in text
    written = doc.read_text()
    assert written.startswith("# header kept\n")  # appended, not overwritten
    assert text in written
    assert "Machine: cpu: " in written and "torch threads: " in written and f"torch: {torch.__version__}" in written
    assert f"python benchmarks/{module.__name__}.py" in written


def test_no_append_leaves_doc_alone(tmp_path, monkeypatch):
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text("unchanged")
    monkeypatch.setattr(sys, "argv", ["benchmarks/bench_attacks.py"])
    bench_attacks.main(["--models", "lenet", "--batch-size", "2", "--steps", "1", "--repeats", "1", "--warmup", "0",
                        "--doc", str(doc), "--no-append"])
    assert doc.read_text() == "unchanged"


def test_timing_helpers():
    import _common as C

    calls = []
    t = C.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"),
                           warmup=1, repeats=3, verbose=False)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up, then interleaved rounds
    assert len(t["a"].seconds) == 3 and t["a"].median >= 0
    assert C.table(["x", "y"], [["1", 2.0]]) == "| x | y |\n|---|---|\n| 1 | 2.0 |"
    assert C.ratio(3.0, 2.0) == "1.50x"
    assert C.rate(7.25) == "7.2" and C.rate(12345.0) == "12,345"
    # preact-resnet18 at 32x32: the 0.56 GMAC per forward
    from attnguard import create_model

    macs = C.count_macs(create_model("preact-resnet18"), torch.rand(1, 3, 32, 32))
    assert 0.55e9 < macs < 0.57e9


def test_cpu_clock_is_reported(tmp_path, monkeypatch):
    import _common as C

    monkeypatch.setattr(sys, "argv", ["benchmarks/bench_attacks.py"])
    try:
        text = bench_attacks.main(["--models", "lenet", "--batch-size", "2", "--steps", "1", "--repeats", "1",
                                   "--warmup", "0", "--clock", "cpu", "--doc", str(tmp_path / "p.md")])
    finally:
        C.CLOCK["name"] = "wall"
    assert "Clock: process CPU time" in text


@pytest.mark.slow
def test_gpu_session_dry_run(tmp_path):
    """benchmarks/gpu_session.py --dry-run: every step of a GPU session on the CPU at tiny sizes (~1-2 min).

    The fast pieces (and a rows-only dry run) are in tests/test_gpu_session.py, which CI runs.
    """
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "benchmarks/gpu_session.py", "--dry-run", "--out", str(out)],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=900)
    res = json.loads((out / "session.json").read_text())
    bad = [s for s in res["steps"] if s["status"] != "ok" and s["name"] != "env: wheels"]  # no .whl in CI
    assert r.returncode == 0 and not bad, bad
    names = [s["name"] for s in res["steps"]]
    assert names[1:7] == ["env: imports", "tests", "bench G3 (bench_attacks.py)", "bench G4 (bench_gradcam.py)",
                          "bench G2 (bench_defenses.py)", "bench G1 (bench_training.py)"]
    assert res["tests"]["tests"] >= 1  # the gpu-marked tests were collected (and skipped: no CUDA)
    for target in ("G1", "G2", "G4"):  # the verdicts were read off the scripts' own tables
        assert "CPU dry run" in res["targets"][target]
    assert (out / "perf.md").read_text().count("\n### ") == 4  # each script appended its table
    assert res["rows"][-1][0]["action"] == "none (found done)"
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back
