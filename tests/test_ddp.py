"""DDP through the real torchrun path on the CPU (gloo), against a single process with the same global batch.

``python -m torch.distributed.run --nproc-per-node 2 -m attnguard train`` with a global batch of
100 (50 per rank) must end with the weights of ``attnguard train`` with batch 100: the two ranks'
batches together are the single-process batch (BatchLoader sharding), DDP averages the
per-rank gradients of per-rank means (= the gradient of the global mean), and the adversary has
no random start (``adversary.random_start=false``) so per-rank random draws play no part.
LeNet has no BatchNorm, so what remains is float summation order.

Tolerance (also in docs/DISTRIBUTED.md): final weights max |diff| <= 1e-4, logged train metrics
within 1e-4 absolute. Measured here: about 1e-7 on the weights after 12 Adam steps.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

WEIGHT_TOL = 1e-4
METRIC_TOL = 1e-4

ARGS = ["--dataset", "mnist-5k", "--model", "lenet", "--defense", "madry+aad", "--set", "model.width=0.25",
        "--epochs", "1", "--batch-size", "100", "--set", "train.max_steps=12", "--set", "data.val_size=200",
        "--set", "train.val_steps=2", "--set", "adversary.steps=2", "--set", "adversary.random_start=false",
        "--set", "train.log_every=4", "--set", "train.checkpoint_every=6", "--set", "train.progress=false",
        "--device", "cpu", "--seed", "1", "--set", "eval.n_examples=20", "--set", "eval.attacks=[fgsm]"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _start(cmd, cwd):
    # own session: on a timeout the whole group (torchrun and its workers) is killed
    return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _descendants(pid):
    """PIDs of every process below ``pid`` (Linux /proc); torchrun starts its workers in new sessions,
    so killing torchrun's process group would leave them running."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_job(proc):
    """SIGKILL torchrun's workers, then torchrun: the whole job dies at once, as in a node crash."""
    for pid in _descendants(proc.pid) + [proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait(proc, timeout=300):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_job(proc)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s\n{out[-3000:]}\n{err[-3000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from attnguard.cli import main

    root = tmp_path_factory.mktemp("ddp")
    # no --out under torchrun: rank 0's timestamped name must reach rank 1
    ddp = _start([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                  "-m", "attnguard", "train", *ARGS], cwd=root)
    try:  # the single-process reference runs in this process meanwhile
        assert main(["train", *ARGS, "--out", str(root / "single")]) == 0
    finally:
        ddp = _wait(ddp)
    made = list((root / "runs").iterdir())
    assert len(made) == 1, f"ranks disagreed on the run directory: {made}"
    return made[0], root / "single", ddp


def _records(run, split):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if json.loads(l)["split"] == split]


def test_ddp_matches_single_process(runs):
    ddp, single, _ = runs
    a = torch.load(ddp / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(single / "checkpoints" / "last.pt", weights_only=True)
    assert a["world_size"] == 2 and b["world_size"] == 1 and a["step"] == b["step"] == 12
    worst = max((a["model"][k] - b["model"][k]).abs().max().item() for k in b["model"])
    assert worst <= WEIGHT_TOL, f"max |w_ddp - w_single| = {worst:.3g}"
    moved = max((a["model"][k] - torch.load(ddp / "checkpoints" / "best.pt", weights_only=True)["model"][k])
                .abs().max().item() for k in b["model"])
    assert moved == 0.0  # one epoch: best is last
    ta, tb = _records(ddp, "train"), _records(single, "train")
    assert [r["step"] for r in ta] == [r["step"] for r in tb] == [4, 6, 8, 12]
    for ra, rb in zip(ta, tb):
        assert ra.keys() == rb.keys()
        for k in ("loss", "ce", "aad_rect", "aad_pres", "acc_clean", "acc_adv", "lr"):
            assert ra[k] == pytest.approx(rb[k], abs=METRIC_TOL), (ra["step"], k)
    va, vb = _records(ddp, "val"), _records(single, "val")
    assert len(va) == len(vb) == 1 and va[0]["acc_clean"] == pytest.approx(vb[0]["acc_clean"], abs=0.011)


def test_only_rank0_writes_and_evaluates(runs):
    ddp, _, proc = runs
    assert sorted(p.name for p in ddp.iterdir()) == ["checkpoints", "config.yaml", "eval.json", "eval.md",
                                                      "metrics.jsonl", "train.json"]
    assert json.loads((ddp / "train.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert proc.stdout.count("run directory:") == 1  # rank 0 speaks; rank 1 is quiet
    assert proc.stdout.count("wrote ") == 1  # the final evaluation ran once, on rank 0
    assert len(_records(ddp, "val")) == 1 and len(_records(ddp, "train")) == 4  # no line written twice
    ck = torch.load(ddp / "checkpoints" / "last.pt", weights_only=True)
    assert len(ck["rng_ranks"]) == 2  # each rank's RNG stream is kept for a resume
    assert not torch.equal(ck["rng_ranks"][0]["torch"], ck["rng_ranks"][1]["torch"])
    assert "destroy_process_group" not in proc.stderr  # the process group was shut down cleanly


@pytest.mark.slow
def test_ddp_sigkill_and_resume_is_bitwise(tmp_path):
    """SIGKILL the whole torchrun job (workers and launcher) after a checkpoint and resume it under torchrun:
    with each rank's own RNG stream restored (random starts on), it ends bitwise where an uninterrupted
    2-process run ends. The uninterrupted run goes in parallel."""
    import time

    i = ARGS.index("adversary.random_start=false")
    args = ARGS[:i - 1] + ARGS[i + 1:]  # random starts on: each rank draws from its own stream
    args += ["--set", "train.log_every=1", "--set", "train.checkpoint_every=5", "--set", "train.max_steps=30",
             "--no-eval"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "attnguard", "train", *args]
    ref = _start(cmd + ["--out", "ref"], cwd=tmp_path)
    run = tmp_path / "killed"
    proc = _start(cmd + ["--out", "killed"], cwd=tmp_path)
    deadline = time.monotonic() + 240

    def last_step():
        path = run / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return max((json.loads(l)["step"] for l in lines if l.endswith("}")), default=0)

    while last_step() < 12:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:] if proc.poll() else ""
        time.sleep(0.005)
    workers = _descendants(proc.pid)
    _kill_job(proc)
    proc.wait()
    for pid in workers:  # all dead (zombies at most) before anything is read
        while _alive(pid):
            time.sleep(0.01)
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert 10 <= ck["step"] < 30 and len(ck["rng_ranks"]) == 2
    assert ck["step"] <= last_step() < 30  # killed mid-run, lines after the checkpoint to drop
    resumed = _wait(_start(cmd + ["--out", "killed", "--resume"], cwd=tmp_path))
    assert resumed.stdout.count("resumed") == 1
    _wait(ref)

    def strip(path):
        return [{k: v for k, v in json.loads(l).items() if k != "seconds"} for l in path.read_text().splitlines()]

    assert strip(run / "metrics.jsonl") == strip(tmp_path / "ref" / "metrics.jsonl")
    a = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
