"""Every fast-path switch of the trainer runs on the CPU: bf16 autocast, fp16 + GradScaler, channels_last,
the device-resident loader, torch.compile (with its eager fallback); the ``auto`` decisions; and the
fixes of the CUDA-path defects the CPU can reach (unwrap of compile wrappers, scheduler after a
skipped fp16 step, fp32 attacks inside autocast, batches sent to the device).

Each switch is checked the same way: one evaluation of the objective on a fixed batch with a fixed
``x_adv`` (the base's ``craft`` is replaced), switch on and off; the loss and every parameter
gradient agree (1e-4 relative for exact switches, 5e-2 for half precision), and every attention
term still has a non-zero gradient.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch import nn

from attnguard import create_model
from attnguard.data.base import Split
from attnguard.data.loader import PAD, BatchLoader
from attnguard.defenses import AdversaryConfig, DefenseConfig, build_objective
from attnguard.defenses.base import unwrap
from attnguard.utils import fastpath as FP
from attnguard.utils.precision import full_precision

SHAPES = {"lenet": (1, 28, 28), "resnet9": (3, 32, 32)}
CASES = [("lenet", "madry+aad"), ("lenet", "alp+at"), ("resnet9", "madry+aad"), ("resnet9", "alp+at")]
EXACT, HALF = 1e-4, 5e-2
B = 8


# ------------------------------------------------------------------------------------------- helpers

class _Spy:
    """A regularizer that records the terms it returns (still attached to the graph)."""

    def __init__(self, reg, terms):
        self._reg, self._terms = reg, terms

    def __getattr__(self, name):
        return getattr(self._reg, name)

    def __call__(self, ctx):
        out = self._reg(ctx)
        self._terms.update(out)
        return out


def _case(arch, preset, *, seed=0):
    """A fresh model (same weights for the same seed), its objective, a fixed batch and a fixed x_adv."""
    torch.manual_seed(seed)
    model = create_model(arch, width=0.25).train()
    eps = 0.3 if arch == "lenet" else 8 / 255
    objective = build_objective(DefenseConfig(preset=preset), AdversaryConfig(eps=eps, step_size=eps / 4, steps=1))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, *SHAPES[arch], generator=g)
    y = torch.randint(0, 10, (B,), generator=g)
    x_adv = torch.rand(x.shape, generator=g)
    return model, objective, x, y, x_adv


def _evaluate(model, objective, x, y, x_adv, *, autocast=None, channels_last=False, scaler=None):
    """``(loss, [parameter gradients], {term: [its gradients]})`` of one objective evaluation."""
    if channels_last:
        unwrap(model).to(memory_format=torch.channels_last)
        x, x_adv = (t.contiguous(memory_format=torch.channels_last) for t in (x, x_adv))
    objective.base.craft = lambda _inner, _x, _y: x_adv
    terms = {}
    objective.regularizers = [_Spy(r, terms) for r in objective.regularizers]
    params = list(unwrap(model).parameters())
    for p in params:
        p.grad = None
    ctx = torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext()
    with ctx:
        loss, _parts = objective(model, x, y)
    # The training gradient first: inductor's compiled backward is exact only the first time it runs
    # on a graph (a second pass with retain_graph gave a relative error of 4.8 on resnet9 madry+aad,
    # torch 2.14); the trainer runs one backward, so the term gradients below only show that they flow.
    grads = torch.autograd.grad(scaler.scale(loss) if scaler else loss, params, retain_graph=True)
    for p, g in zip(params, grads):
        p.grad = g
    if scaler is not None:
        scaler.unscale_(torch.optim.SGD(params, lr=0.0))
    term_grads = {k: torch.autograd.grad(t, params, retain_graph=True, allow_unused=True) for k, t in terms.items()}
    return loss.detach().float(), [p.grad.detach().clone() for p in params], term_grads


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def _assert_close(on, off, tol):
    """Loss and the whole parameter gradient (one vector) within ``tol`` relative; every attention term
    has a non-zero gradient with the switch on."""
    loss_on, grads_on, terms_on = on
    loss_off, grads_off, terms_off = off
    assert _rel(loss_on, loss_off) <= tol, (float(loss_on), float(loss_off))
    err = _rel(torch.cat([g.flatten() for g in grads_on]), torch.cat([g.flatten() for g in grads_off]))
    assert err <= tol, f"relative gradient error {err:.2e} > {tol}"
    assert terms_on.keys() == terms_off.keys() and terms_on, "the attention terms ran in both"
    for name, grads in terms_on.items():
        total = sum(float(g.abs().sum()) for g in grads if g is not None)
        assert total > 0, f"{name}: zero gradient with the switch on"


# Tolerances. LeNet (no BatchNorm) meets the plain ones: 1e-4 for switches that only reorder fp32
# arithmetic, 5e-2 for half precision. resnet9 trains its BatchNorm layers in train mode, and at a
# fresh initialization BN's backward, g - mean(g) - x_hat * mean(g * x_hat), cancels most of its
# upstream gradient, so rounding errors in that gradient come out ~50x larger in the conv weights
# before it (the fc layer, after the last BN, agrees to 3e-3 in bf16; the conv weights 20-28%).
# Measured whole-gradient errors on resnet9 w0.25, batch 8, fresh weights: bf16 0.11-0.15; channels_last
# 0.8e-3-1.9e-3 (torch's NHWC BatchNorm backward on the CPU is 20-50x less accurate than its NCHW one:
# 1.4e-6 vs 6.6e-8 against float64 for BN alone), while fp32 NCHW agrees with float64 to 1.3e-6.
TOL = {("lenet", "half"): HALF, ("resnet9", "half"): 0.25,
       ("lenet", "channels_last"): EXACT, ("resnet9", "channels_last"): 5e-3}


# --------------------------------------------------------------------------------- auto decisions

def test_cpu_flags_parse(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert FP.cpu_flags(str(f)) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert FP.cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize("flags, dtype, why", [
    ({"avx2", "avx512f"}, None, "auto: cpu lacks"),
    ({"avx2", "avx512_bf16"}, torch.bfloat16, "auto: cpu has avx512_bf16"),
    ({"amx_bf16", "amx_tile"}, torch.bfloat16, "auto: cpu has amx_bf16"),
])
def test_amp_auto_on_cpu_follows_the_flags(flags, dtype, why):
    c = FP.amp_choice("auto", "cpu", flags=flags)
    assert c.value is dtype and c.why.startswith(why)


def test_amp_auto_on_cuda_falls_back_to_fp16_without_bf16():
    assert FP.amp_choice("auto", "cuda", cuda_bf16=lambda: True).value is torch.bfloat16
    c = FP.amp_choice("auto", "cuda", cuda_bf16=lambda: False)  # V100, T4
    assert c.value is torch.float16 and "lacks native bf16" in c.why
    # explicit settings win; the probe is not even asked
    boom = lambda: pytest.fail("probed")  # noqa: E731
    assert FP.amp_choice("bf16", "cuda", cuda_bf16=boom).value is torch.bfloat16
    assert FP.amp_choice("off", "cuda", cuda_bf16=boom).value is None
    assert FP.amp_choice("fp16", "cpu", flags=set()).value is torch.float16
    assert FP.amp_choice("auto", "mps").value is None


def test_cuda_only_switches():
    assert FP.cuda_only_choice("compile", "auto", "cuda").value is True
    assert FP.cuda_only_choice("compile", "auto", "cpu").value is False
    assert FP.cuda_only_choice("compile", "on", "cpu").value is True
    assert FP.channels_last_choice("auto", "cuda").value is True
    # measured faster on the CPU with and without native bf16 (docs/PERFORMANCE.md, "CPU fast path")
    assert FP.channels_last_choice("auto", "cpu").value is True
    assert FP.channels_last_choice("off", "cpu").value is False
    assert FP.channels_last_choice("auto", "mps").value is False


def test_describe_for_train_json():
    d = FP.describe({"amp": FP.Choice(torch.bfloat16, "auto: cpu has avx512_bf16"),
                     "channels_last": FP.Choice(False, "off: set in the config")})
    assert d == {"amp": {"used": "bf16", "why": "auto: cpu has avx512_bf16"},
                 "channels_last": {"used": False, "why": "off: set in the config"}}
    json.dumps(d)


# --------------------------------------------------------------------------- switches, objective level

@pytest.mark.parametrize("arch, preset", CASES)
def test_bf16_autocast_matches_fp32(arch, preset, one_thread):
    off = _evaluate(*_case(arch, preset))
    on = _evaluate(*_case(arch, preset), autocast=torch.bfloat16)
    _assert_close(on, off, TOL[arch, "half"])


@pytest.mark.parametrize("arch, preset", [("lenet", "madry+aad"), ("resnet9", "alp+at")])
def test_fp16_with_grad_scaler_matches_fp32(arch, preset, one_thread):
    try:
        scaler = torch.amp.GradScaler("cpu")
        on = _evaluate(*_case(arch, preset), autocast=torch.float16, scaler=scaler)
    except (RuntimeError, NotImplementedError) as e:  # an op without a CPU fp16 kernel in this torch
        pytest.skip(f"fp16 autocast on the CPU unsupported here: {str(e).splitlines()[0][:120]}")
    assert scaler.get_scale() == 65536.0  # no overflow: the step would have been taken
    off = _evaluate(*_case(arch, preset))
    _assert_close(on, off, TOL[arch, "half"])


@pytest.mark.parametrize("arch, preset", CASES)
def test_channels_last_matches(arch, preset, one_thread):
    off = _evaluate(*_case(arch, preset))
    on = _evaluate(*_case(arch, preset), channels_last=True)
    _assert_close(on, off, TOL[arch, "channels_last"])


def _compiled(model, backend):
    torch._dynamo.reset()
    return torch.compile(model, backend=backend)


# aot_eager: dynamo capture + AOTAutograd, the parts that decide what can be differentiated, without
# inductor's C++ build (minutes on two shared cores); the inductor case is the slow test below.
@pytest.mark.parametrize("arch, preset", [("lenet", "alp+at"), ("resnet9", "madry+aad"), ("resnet9", "alp+at")])
def test_compile_matches_eager(arch, preset, one_thread):
    off = _evaluate(*_case(arch, preset))
    model, *rest = _case(arch, preset)
    on = _evaluate(_compiled(model, "aot_eager"), *rest)
    _assert_close(on, off, EXACT)


@pytest.mark.slow
def test_compile_inductor_matches_eager(one_thread):
    off = _evaluate(*_case("resnet9", "madry+aad"))
    model, *rest = _case("resnet9", "madry+aad")
    on = _evaluate(_compiled(model, "inductor"), *rest)
    _assert_close(on, off, EXACT)


@pytest.mark.parametrize("arch, preset, blocked", [
    ("lenet", "madry+aad", True), ("lenet", "alp+afm", True), ("lenet", "madry+at", False),
    ("resnet9", "madry+aad", False), ("resnet9", "alp+afm", False), ("lenet", "madry", False),
])
def test_compile_blocker(arch, preset, blocked):
    from attnguard.train.fast import compile_blocker

    model, objective, *_ = _case(arch, preset)
    why = compile_blocker(objective, model)
    assert (why is not None) == blocked
    if blocked:
        assert "double backward" in why and arch in why


# ------------------------------------------------------------------------------------------- unwrap

def test_unwrap_strips_compile_and_data_parallel_in_any_nesting():
    m = create_model("lenet", width=0.25)
    dp = nn.DataParallel  # the same ``.module`` convention as DDP, without a process group
    for wrapped in (m, torch.compile(m), dp(m), torch.compile(dp(m)), dp(torch.compile(m)),
                    torch.compile(dp(torch.compile(m)))):
        assert unwrap(wrapped) is m


# ------------------------------------------------------------------------------------ the loader

def _rgb_split(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g))


def _host_batches(split, loader, epoch):
    """The host path, written independently: per example, pad, crop, flip on the CPU, then send."""
    order = loader.order(epoch)
    dx, dy, flip = loader._draws(epoch)
    out = []
    for b in range(len(loader)):
        idx = order[b * loader.batch_size:(b + 1) * loader.batch_size]
        xs = []
        for i in idx.tolist():
            img = torch.nn.functional.pad(split.images[i], (PAD, PAD, PAD, PAD))
            img = img[:, int(dy[i]):int(dy[i]) + 32, int(dx[i]):int(dx[i]) + 32]
            xs.append(img.flip(-1) if bool(flip[i]) else img)
        out.append((torch.stack(xs).float() / 255.0, split.labels[idx]))
    return out


def test_device_resident_loader_gives_the_host_path_batches(one_thread):
    split = _rgb_split()
    loader = BatchLoader(split, B, shuffle=True, augment="crop-flip", device="cpu", seed=5, drop_last=True)
    loader.set_epoch(2)
    resident = list(loader)
    host = _host_batches(split, loader, 2)
    assert len(resident) == len(host) == 40 // B
    for (xr, yr), (xh, yh) in zip(resident, host):
        assert torch.equal(xr, xh) and torch.equal(yr, yh)
    # and the objective sees the same thing from either path
    model, objective, _x, _y, _ = _case("resnet9", "alp+at")
    (xr, yr), (xh, yh) = resident[0], host[0]
    x_adv = (xh + 8 / 255).clamp(0, 1)
    a = _evaluate(model, objective, xr, yr, x_adv)
    model2, objective2, *_ = _case("resnet9", "alp+at")
    b = _evaluate(model2, objective2, xh, yh, x_adv)
    _assert_close(a, b, EXACT)


def test_loader_sends_host_batches_to_the_target():
    """gpu_resident=off: batches made from host memory go to the run's device (meta stands in for a GPU)."""
    split = _rgb_split()
    host = BatchLoader(split, B, augment="crop-flip", device="cpu", seed=1)
    sent = BatchLoader(split, B, augment="crop-flip", device="cpu", seed=1, target="meta")
    assert sent.images.device.type == "cpu"  # the split itself stays in host memory
    for (xh, yh), (xs, ys) in zip(host, sent):
        assert xs.device.type == ys.device.type == "meta"
        assert xs.dtype == torch.float32 and xs.shape == xh.shape and ys.dtype == yh.dtype


# ------------------------------------------------------------------------------ trainer level (CPU)

def _cfg(out, **train):
    from attnguard.train.config import resolve_config

    return resolve_config(None, {
        "model": {"width": 0.25}, "data": {"val_size": 100}, "adversary": {"steps": 1}, "out": str(out),
        "train": {"epochs": 1, "batch_size": 50, "max_steps": 2, "log_every": 1, "val_steps": 1,
                  "progress": False, "device": "cpu", **train}})


def test_compile_falls_back_to_eager_for_lenet_aad(tmp_path, one_thread):
    from attnguard.train import trainer as T

    lines = []
    t = T.Trainer(_cfg(tmp_path / "r", compile="on"), echo=lines.append)
    assert t.model is t.inner  # not compiled
    run = t.fit()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "double backward" in warnings[0] and "\n" not in warnings[0]
    info = json.loads((run / "train.json").read_text())
    fast = info["fast_path"]
    assert fast["compile"]["used"] is False and fast["compile"]["why"].startswith("fell back to eager")
    auto = FP.amp_choice("auto", "cpu")
    assert fast["amp"] == {"used": "bf16" if auto.value is torch.bfloat16 else "off", "why": auto.why}
    assert set(fast) == {"amp", "channels_last", "compile", "gpu_resident"}


def test_compiled_training_crafts_through_the_compiled_model(tmp_path, monkeypatch, one_thread):
    """compile on lenet madry (no double backward): the main forward and the adversary both run the
    compiled model; the first step's loss equals the eager run's."""
    from torch._dynamo.eval_frame import OptimizedModule

    from attnguard.train import trainer as T

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real(m, backend="aot_eager", **kw))
    torch._dynamo.reset()
    seen = []

    def run(out, mode):
        cfg = _cfg(out, compile=mode)
        cfg.defense = DefenseConfig(preset="madry")
        t = T.Trainer(cfg, echo=lambda *a: None)
        attack = t.objective.base.attack
        t.objective.base.attack = lambda model, x, y: (seen.append((mode, type(model))), attack(model, x, y))[1]
        return t, t.fit()

    t_on, run_on = run(tmp_path / "on", "on")
    t_off, run_off = run(tmp_path / "off", "off")
    assert isinstance(t_on.model, OptimizedModule) and unwrap(t_on.model) is t_on.inner
    assert {m for mode, m in seen if mode == "on"} == {OptimizedModule}
    assert {m for mode, m in seen if mode == "off"} == {type(t_off.inner)}
    first = [json.loads((r / "metrics.jsonl").read_text().splitlines()[0]) for r in (run_on, run_off)]
    assert abs(first[0]["loss"] - first[1]["loss"]) <= EXACT * abs(first[1]["loss"])


def test_scheduler_does_not_step_when_the_scaler_skips(tmp_path, one_thread):
    """fp16 + GradScaler on the CPU: an overflowing step is skipped by the scaler, and the lr schedule
    must not advance for it (it did: sched.step() ran unconditionally)."""
    from attnguard.train import trainer as T

    t = T.Trainer(_cfg(tmp_path / "r", amp="fp16"), echo=lambda *a: None)
    assert t.amp_dtype is torch.float16 and t.scaler is not None
    x, y = next(iter(t.loader))
    before = [p.detach().clone() for p in t.inner.parameters()]
    real = t.objective

    def overflowing(model, x, y):
        loss = model(x).float().mean() * torch.tensor(float("inf"))
        return loss, {}

    t.objective = overflowing
    t.train_step(x, y)
    assert t.sched.last_epoch == 0, "the schedule advanced on a skipped step"
    assert all(torch.equal(a, p) for a, p in zip(before, t.inner.parameters()))
    assert t.scaler.get_scale() < 65536.0  # the scaler saw the overflow
    assert not t.opt.state, "the optimizer ran"
    t.objective = real
    t.train_step(x, y)
    assert t.sched.last_epoch == 1 and t.opt.state, "a finite step is taken and advances the schedule"


def test_validation_runs_in_fp32_under_bf16_training(tmp_path, monkeypatch, one_thread):
    from attnguard.attacks import PGD
    from attnguard.train import holdout, trainer as T

    seen = []

    class Probe(PGD):
        def __call__(self, model, x, y):
            seen.append((torch.is_autocast_enabled("cpu"), model(x).dtype, torch.backends.cudnn.conv.fp32_precision))
            return super().__call__(model, x, y)

    monkeypatch.setattr(holdout, "PGD", Probe)
    t = T.Trainer(_cfg(tmp_path / "r", amp="bf16"), echo=lambda *a: None)
    assert t.amp_dtype is torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):  # even an outer autocast does not reach it
        val = t.validate()
    assert val["n"] == 100 and seen and all(s == (False, torch.float32, "ieee") for s in seen)


# ------------------------------------------------------------------------- evaluate() inside autocast

def test_evaluate_inside_autocast_gives_the_fp32_result(one_thread):
    from attnguard import evaluate

    torch.manual_seed(0)
    model = create_model("lenet", width=0.25).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(24, 1, 28, 28, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # every example counts as correct, so every example is attacked
    seen = []

    def probe(m, xb, yb):
        seen.append((torch.is_autocast_enabled("cpu"), m(xb).dtype))
        return xb

    kw = dict(eps=0.3, batch_size=12, progress=False, seed=0, return_per_example=True)
    ref, ref_per = evaluate(model, x, y, ["pgd-3", probe], **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_per = evaluate(model, x, y, ["pgd-3", probe], **kw)
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert drop(got) == drop(ref)
    for name in ref_per.attacks:
        assert torch.equal(got_per.attacks[name], ref_per.attacks[name])
    assert seen and all(s == (False, torch.float32) for s in seen)


def test_full_precision_restores_the_settings():
    matmul_before = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with full_precision("cpu"):
            assert not torch.is_autocast_enabled("cpu")
            if matmul_before is not None:
                assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.is_autocast_enabled("cpu")
    assert getattr(torch.backends.cuda.matmul, "fp32_precision", None) == matmul_before
    with pytest.raises(KeyError):
        with full_precision("cpu"):
            raise KeyError("x")
    assert getattr(torch.backends.cuda.matmul, "fp32_precision", None) == matmul_before


# ------------------------------------------------------------------------------------- on a GPU

@pytest.mark.gpu
def test_gpu_resident_off_sends_batches_to_the_gpu(tmp_path):
    from attnguard.train import trainer as T

    t = T.Trainer(_cfg(tmp_path / "r", device="cuda", gpu_resident="off"), echo=lambda *a: None)
    assert t.loader.images.device.type == "cpu" and t.loader.target.type == "cuda"
    x, y = next(iter(t.loader))
    assert x.device.type == y.device.type == "cuda"
    t.fit()
