"""DDP through the real torchrun path on the CPU (gloo), against what it must equal.

``python -m torch.distributed.run --nproc-per-node 2 -m attnguard train`` with a global batch of
100 (50 per rank), ``madry+aad``, 12 Adam steps, no random start, is compared with two runs in
this process (both with one intra-op thread, like each torchrun worker):

* the **two-shard reference**: ``attnguard train`` with batch 100 whose objective is replaced by
  what DDP must compute: the gradient of the objective on rank 0's shard ``x[0::2]`` and on
  rank 1's ``x[1::2]`` (the docs' sharding), each taken on its own, then ``(g0 + g1) / 2``. The
  ranks do the same float operations, so the DDP run must end on these weights and Adam moments
  up to 1e-6 (measured: bitwise equal). A missing all-reduce, a sum instead of a mean, a wrong
  shard or a rank on another seed each move the weights by >= 5e-3 and Adam's moments by > 50 %.
* the **single process with batch 100** (what a user compares with). Its per-parameter gradient
  sums run in another order than the sum of two half-batch gradients (relative difference about
  1e-6). With a smooth objective that stays at 2e-8..3e-6 on the weights, but PGD's L-inf sign
  steps and AAD's hard attention mask (``g >= mean g``) turn it into discrete flips: on the
  AMD EPYC CI machine seed 1 flips the PGD signs of 8 pixels of one example at step 6 and the
  runs end 1.7e-3 apart (8 of 15 seeds flip). So this comparison checks only what survives a
  flip (bands measured over seeds; see docs/DISTRIBUTED.md).

LeNet has no BatchNorm and no dropout, and there is no random start, so per-rank batch
statistics and random draws play no part.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

# DDP vs the two-shard reference (same float operations): measured 0 on weights and Adam state,
# relative <= 1.4e-7 on the logged means (their sums over steps run in another order); one flip
# moves the weights by >= 1e-4.
SHARD_TOL = 1e-6
SHARD_METRIC_REL = 1e-6
# DDP vs one process with batch 100, flips or none: about 3x the worst of 15 seeds on the AMD EPYC
# machine (weights 4.3e-3, losses 8.2e-4, train accuracies 0.01, validation 0.025); see docs/DISTRIBUTED.md
SINGLE_WEIGHT_TOL = 1.5e-2
SINGLE_LOSS_TOL = 2.5e-3  # loss, ce, aad_rect, aad_pres
SINGLE_ACC_TOL = 0.05  # train accuracies (means of 400 examples: 2.5e-3 per example); 0.03 was exceeded
# by one step's 0.030 on a 2-core Intel Xeon (2026-12-02): the tolerance is per machine, this one covers both
SINGLE_VAL_TOL = 0.05  # validation accuracies (200 examples)

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


class TwoShards:
    """The objective DDP over two ranks must amount to, in one process: each rank's gradient on its
    shard, then their mean, in DDP's float order.

    Rank ``r``'s batch is ``x[r::2]`` of the single-process batch (BatchLoader's sharding, the
    docs' contract). Each shard's gradient is taken on its own (as each rank's backward does)
    and the two are averaged as DDP's all-reduce does (``g0 / 2 + g1 / 2``, which equals
    ``(g0 + g1) / 2`` bit for bit). Backpropagating ``(l0 + l1) / 2`` instead would let autograd
    interleave the two shards' contributions to a parameter: another summation order, enough for
    a PGD sign flip. The trainer backpropagates the returned surrogate, whose gradient is exactly
    the averaged one, and logs ``parts`` (``parts["loss"]`` is the shards' mean loss).
    """

    def __init__(self, objective):
        self.objective = objective

    def __getattr__(self, name):
        return getattr(self.objective, name)

    def __call__(self, model, x, y):
        params = [p for p in model.parameters() if p.requires_grad]
        grads, parts = [], []
        for r in range(2):
            loss, p = self.objective(model, x[r::2], y[r::2])
            grads.append(torch.autograd.grad(loss, params))
            parts.append(p)
        mean = [g0 * 0.5 + g1 * 0.5 for g0, g1 in zip(*grads)]
        surrogate = sum((p * g).sum() for p, g in zip(params, mean))
        return surrogate, {k: (parts[0][k] + parts[1][k]) * 0.5 for k in parts[0]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    import attnguard.train.trainer as trainer_module
    from attnguard.cli import main

    root = tmp_path_factory.mktemp("ddp")
    # no --out under torchrun: rank 0's timestamped name must reach rank 1
    ddp = _start([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                  "-m", "attnguard", "train", *ARGS], cwd=root)
    try:  # the references run in this process meanwhile, on one thread (one_thread) like each worker
        assert main(["train", *ARGS, "--no-eval", "--out", str(root / "single")]) == 0
        build = trainer_module.build_objective
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(trainer_module, "build_objective", lambda *a, **k: TwoShards(build(*a, **k)))
            assert main(["train", *ARGS, "--no-eval", "--out", str(root / "shards")]) == 0
    finally:
        ddp = _wait(ddp)
    made = list((root / "runs").iterdir())
    assert len(made) == 1, f"ranks disagreed on the run directory: {made}"
    return {"ddp": made[0], "single": root / "single", "shards": root / "shards", "proc": ddp}


def _records(run, split):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if json.loads(l)["split"] == split]


def _last(run):
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in b)


def test_ddp_is_the_mean_of_the_shard_gradients(runs):
    """Tight: DDP ends where the two-shard reference ends (weights, Adam moments, logged means)."""
    a, r = _last(runs["ddp"]), _last(runs["shards"])
    assert a["world_size"] == 2 and r["world_size"] == 1 and a["step"] == r["step"] == 12
    worst = _max_diff(a["model"], r["model"])
    assert worst <= SHARD_TOL, f"max |w_ddp - w_shards| = {worst:.3g}"
    # Adam is almost blind to a gradient's scale (a sum instead of a mean barely moves the weights);
    # its moments are not: exp_avg is linear in the gradients
    sa, sr = a["optimizer"]["state"], r["optimizer"]["state"]
    assert sorted(sa) == sorted(sr) and sa
    for i in sr:
        for key in ("exp_avg", "exp_avg_sq"):
            rel = ((sa[i][key] - sr[i][key]).abs().max() / sr[i][key].abs().max()).item()
            assert rel <= SHARD_TOL, f"Adam {key} of parameter {i}: relative difference {rel:.3g}"
    moved = _max_diff(a["model"], torch.load(runs["ddp"] / "checkpoints" / "best.pt", weights_only=True)["model"])
    assert moved == 0.0  # one epoch: best is last
    ta, tr = _records(runs["ddp"], "train"), _records(runs["shards"], "train")
    # log lines every 4 steps; the checkpoint at step 6 checks for NaN but writes no line of its own
    assert [x["step"] for x in ta] == [x["step"] for x in tr] == [4, 8, 12]
    for ra, rr in zip(ta, tr):
        assert ra.keys() == rr.keys()
        for k in ("loss", "ce", "aad_rect", "aad_pres", "acc_clean", "acc_adv", "lr"):
            assert ra[k] == pytest.approx(rr[k], rel=SHARD_METRIC_REL, abs=1e-7), (ra["step"], k)
    va, vr = _records(runs["ddp"], "val"), _records(runs["shards"], "val")
    assert len(va) == len(vr) == 1
    assert (va[0]["acc_clean"], va[0]["acc_adv"]) == (vr[0]["acc_clean"], vr[0]["acc_adv"])


def test_ddp_matches_single_process_up_to_flips(runs):
    """Loose: what a PGD sign or AAD mask flip leaves of the equivalence with one process, batch 100."""
    a, b = _last(runs["ddp"]), _last(runs["single"])
    assert b["world_size"] == 1 and a["step"] == b["step"] == 12
    worst = _max_diff(a["model"], b["model"])
    assert worst <= SINGLE_WEIGHT_TOL, f"max |w_ddp - w_single| = {worst:.3g}"
    ta, tb = _records(runs["ddp"], "train"), _records(runs["single"], "train")
    assert [x["step"] for x in ta] == [x["step"] for x in tb] == [4, 8, 12]  # no line at the step-6 checkpoint
    for ra, rb in zip(ta, tb):
        assert ra.keys() == rb.keys() and ra["epoch"] == rb["epoch"]
        assert ra["lr"] == rb["lr"]  # the schedule counts global steps, whatever the world size
        for k, tol in [("loss", SINGLE_LOSS_TOL), ("ce", SINGLE_LOSS_TOL), ("aad_rect", SINGLE_LOSS_TOL),
                       ("aad_pres", SINGLE_LOSS_TOL), ("acc_clean", SINGLE_ACC_TOL), ("acc_adv", SINGLE_ACC_TOL)]:
            assert ra[k] == pytest.approx(rb[k], abs=tol), (ra["step"], k)
    va, vb = _records(runs["ddp"], "val"), _records(runs["single"], "val")
    assert len(va) == len(vb) == 1
    for k in ("acc_clean", "acc_adv"):
        assert va[0][k] == pytest.approx(vb[0][k], abs=SINGLE_VAL_TOL), k


def test_only_rank0_writes_and_evaluates(runs):
    ddp, proc = runs["ddp"], runs["proc"]
    assert sorted(p.name for p in ddp.iterdir()) == ["attention", "checkpoints", "config.yaml", "eval.json",
                                                      "eval.md", "metrics.jsonl", "train.json"]
    # attention snapshots are rank 0's too: one file per epoch boundary, none written twice or torn
    assert sorted(p.name for p in (ddp / "attention").iterdir()) == ["epoch-000.npz", "epoch-001.npz"]
    assert json.loads((ddp / "train.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert proc.stdout.count("run directory:") == 1  # rank 0 speaks; rank 1 is quiet
    assert proc.stdout.count("wrote ") == 1  # the final evaluation ran once, on rank 0
    assert len(_records(ddp, "val")) == 1 and len(_records(ddp, "train")) == 3  # no line written twice (steps 4, 8, 12)
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
