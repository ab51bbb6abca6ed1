"""The benchmarks keep their candidates apart, and the issue-14 modes run end to end at tiny sizes.

Run: ``OMP_NUM_THREADS=1 pytest benchmarks/test_bench_candidates.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_attacks  # noqa: E402
import bench_gradcam  # noqa: E402


def test_gradcam_candidates_time_separate_models(tmp_path, monkeypatch):
    """pytorch-grad-cam hooks its model for its whole life; attnguard's timed calls must not run on that
    model (issue 14, defect 7: on CUDA each of their hooks copies activations to the host)."""
    import pytorch_grad_cam

    ours, theirs = set(), set()
    real_cam, real_pgc = bench_gradcam.grad_cam, pytorch_grad_cam.GradCAM

    def spy_cam(model, *a, **k):
        ours.add(id(model))
        return real_cam(model, *a, **k)

    def spy_pgc(*a, model, **k):
        theirs.add(id(model))
        return real_pgc(*a, model=model, **k)

    monkeypatch.setattr(bench_gradcam, "grad_cam", spy_cam)
    monkeypatch.setattr(pytorch_grad_cam, "GradCAM", spy_pgc)
    monkeypatch.setattr(sys, "argv", ["benchmarks/bench_gradcam.py"])
    bench_gradcam.main(["--no-imagenet", "--batch-size", "2", "--repeats", "1", "--warmup", "0", "--no-append"])
    assert ours and theirs and not ours & theirs


def test_hook_count_sees_a_forward_hook():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert bench_gradcam._hook_count(model) == 0
    model[0].register_forward_hook(lambda *a: None)
    assert bench_gradcam._hook_count(model) == 1


def test_evaluation_mode_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmarks/bench_attacks.py"])
    text = bench_attacks.main(["--evaluation", "--n-examples", "8", "--batch-size", "4", "--steps", "1",
                               "--repeats", "1", "--warmup", "0", "--doc", str(tmp_path / "p.md")])
    for s in ("torchattacks", "attnguard, last iterate, NCHW", "attnguard pgd-1, NCHW (early stop)",
              "attnguard pgd-1 (early stop + channels_last)", "Robust accuracy", "paired per round"):
        assert s in text
    assert text in (tmp_path / "p.md").read_text()
