"""GPU training throughput: PGD-10 adversarial training (madry) of preact-resnet18 on 32x32 inputs.

Measures, on data resident on the device (random uint8 images, converted to [0, 1] floats per
batch as the trainer's loader does; no augmentation):

1. images/s of the training step the trainer runs (madry objective with PGD-10, eps 8/255,
   step 2/255, crafted in eval mode; backward; SGD step), in the trainer's default precision
   (CUDA: bf16 autocast + channels_last; CPU: fp32);
2. the utilization it implies: FLOP/s = img/s * 23 * MACs * 2 (PGD-10 training is about 23
   forward-equivalents per image: 10 attack steps of forward + input-gradient backward, plus the
   training forward + full backward; preact-resnet18 at 32x32 is 0.56 GMAC per forward), as a
   fraction of the device's dense bf16 peak;
3. the time of one 50,000-image epoch at that rate;
4. AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square) on ``--aa-points`` points, fp32, eval
   mode, labels = the model's own predictions so that every point is attacked. The model is
   untrained, so nearly every point falls to APGD-CE and this is a lower bound of the time on a
   robust model. With ``--aa-worst-points M`` the script also times each component at its full
   budget on M points of a wrapped model nothing can fool, and extrapolates the time on a model
   with ``--aa-clean`` clean and ``--aa-robust`` robust accuracy (an estimate, stated as such).

    python benchmarks/bench_training.py --device cuda           # ~3-5 min on an H100
    python benchmarks/bench_training.py                         # CPU smoke run (tiny settings)
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from attnguard import create_model  # noqa: E402
from attnguard.attacks import AutoAttack  # noqa: E402
from attnguard.attacks.square import run_reference  # noqa: E402
from attnguard.defenses import AdversaryConfig, DefenseConfig, build_objective  # noqa: E402

MACS_PER_IMAGE = 0.56e9  # preact-resnet18, 32x32, one forward (the figure)
FORWARD_EQUIVALENTS = 23
EPOCH = 50_000

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets.
PEAKS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
         ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0)]


def device_peak(device: torch.device, override):
    if override:
        return float(override), "given with --peak-tflops"
    if device.type != "cuda":
        return None, "no peak for a CPU"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAKS:
        if key.lower() in name.lower():
            return tflops, f"{key} dense bf16 data-sheet peak"
    return None, f"unknown peak for {name}; pass --peak-tflops"


class Unfoolable(nn.Module):
    """``net(x) * 1e-4 + 50 * e_0``: the full network runs forward and backward, but class 0 always wins.

    With labels 0, no attack can succeed, so every AutoAttack component spends its full budget.
    Used only to time the worst case.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        z = self.net(x) * 1e-4
        return z + torch.nn.functional.one_hot(torch.zeros(x.shape[0], dtype=torch.long, device=x.device),
                                               z.shape[1]).to(z.dtype) * 50.0


def measure_training(args, device, fast):
    model = create_model("preact-resnet18", width=args.width)
    model = model.to(device, memory_format=torch.channels_last if fast else torch.preserve_format).train()
    objective = build_objective(DefenseConfig(preset="madry"),
                                AdversaryConfig(eps=8 / 255, step_size=2 / 255, steps=args.pgd_steps))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    n_batches = max(1, min(args.steps_per_round, 8))
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (n_batches, args.batch_size, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    labels = torch.randint(0, 10, (n_batches, args.batch_size), generator=g).to(device)
    net = torch.compile(model) if args.compile else model

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if fast else contextlib.nullcontext()

    state = {"i": 0}

    def step():
        i = state["i"] % n_batches
        state["i"] += 1
        x = images[i].float().div_(255)
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            loss, _ = objective(net, x, labels[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def round_():
        for _ in range(args.steps_per_round):
            step()

    print(f"training: batch {args.batch_size}, {args.steps_per_round} steps per round, "
          f"{'bf16+channels_last' if fast else 'fp32'}{', compiled' if args.compile else ''}", file=sys.stderr)
    for _ in range(args.warmup_steps):
        step()
    t = C.time_interleaved({"train": round_}, device, warmup=0, repeats=args.repeats)["train"]
    ips = args.batch_size * args.steps_per_round / t.median
    macs = C.count_macs(model, images[0, :1].float())
    return model, ips, t, macs


def timed(fn, device):
    now = C.clock_fn()
    C.sync(device)
    t0 = now()
    out = fn()
    C.sync(device)
    return out, now() - t0


def measure_autoattack(args, device):
    # A freshly initialized model: the one timed above took a few SGD steps on random labels at lr 0.1
    # and may predict one class everywhere, which no attack can change (every component would then run
    # its full budget and the "lower bound" would not be one).
    torch.manual_seed(args.seed)
    model = create_model("preact-resnet18", width=args.width).to(device).eval()
    kw = {} if args.aa_version == "standard" else dict(version="custom", steps=2, n_queries=20, n_target_classes=2)
    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.rand((args.aa_points, 3, 32, 32), generator=g).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)  # every point counts as correctly classified, so every point is attacked
    aa = AutoAttack(eps=8 / 255, num_classes=10, seed=0, **kw)
    print(f"AutoAttack ({args.aa_version}) on {args.aa_points} points ...", file=sys.stderr, flush=True)
    _, secs = timed(lambda: aa(model, x, y), device)
    result = {"seconds": secs, "robust": dict(aa.last_robust)}
    if args.aa_worst_points:
        m = args.aa_worst_points
        wrapped = Unfoolable(model).eval()
        xw, yw = x[:m], torch.zeros(min(m, args.aa_points), dtype=torch.long, device=device)
        per_point = {}
        for name, atk in aa.components(wrapped, 0, device=device):
            print(f"  worst case: {name} on {len(yw)} points ...", file=sys.stderr, flush=True)
            adv, secs_c = timed(lambda: run_reference(atk.perturb, xw, yw), device)
            with torch.no_grad():
                fooled = int((wrapped(adv).argmax(1) != yw).sum())
            per_point[name] = (secs_c / len(yw), fooled)
        result["worst"] = per_point
    return result


def main(argv=None) -> str:
    p = C.base_parser(__doc__.splitlines()[0], cpu_batch=16, cuda_batch=512, cpu_repeats=2, cuda_repeats=5)
    p.add_argument("--width", type=float, default=1.0, help="preact-resnet18 width multiplier")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--steps-per-round", type=int, default=None, help="training steps per timed round "
                   "(default 2 on cpu, 20 on cuda)")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default 1 cpu, 10 cuda)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast + channels_last on cuda, fp32 on cpu (the trainer's defaults)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (the trainer's opt-in)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for the utilization figure")
    p.add_argument("--aa-points", type=int, default=None, help="AutoAttack points (default 4 cpu, 1000 cuda; 0 skips)")
    p.add_argument("--aa-worst-points", type=int, default=None,
                   help="points for the full-budget AutoAttack timing (default 0 cpu, 100 cuda; 0 skips)")
    p.add_argument("--aa-version", choices=("standard", "custom-tiny"), default="standard",
                   help="custom-tiny: 2 steps / 20 queries / 2 targets, for smoke tests only (not AutoAttack)")
    p.add_argument("--aa-clean", type=float, default=0.82, help="clean accuracy assumed in the AA estimate")
    p.add_argument("--aa-robust", type=float, default=0.48, help="robust accuracy assumed in the AA estimate")
    args = p.parse_args(argv)
    device = C.finish_args(args)
    cuda = device.type == "cuda"
    if args.steps_per_round is None:
        args.steps_per_round = 20 if cuda else 2
    if args.warmup_steps is None:
        args.warmup_steps = 10 if cuda else 1
    if args.aa_points is None:
        args.aa_points = 1000 if cuda else 4
    if args.aa_worst_points is None:
        args.aa_worst_points = 100 if cuda else 0
    fast = args.precision == "bf16" or (args.precision == "auto" and cuda)
    before = C.machine(device)

    _model, ips, t, macs = measure_training(args, device, fast)
    flops = ips * FORWARD_EQUIVALENTS * MACS_PER_IMAGE * 2
    flops_measured = ips * FORWARD_EQUIVALENTS * macs * 2
    peak, peak_note = device_peak(device, args.peak_tflops)
    util = f"{flops / (peak * 1e12):.1%} of {peak:g} TFLOP/s ({peak_note})" if peak else f"n/a ({peak_note})"
    prec = "bf16 autocast + channels_last" if fast else "fp32"
    rows = [
        ["PGD-10 adversarial training (madry), images/s", C.rate(ips)],
        ["target (one H100/H200)", ">= 10,000 images/s" + ("" if cuda else " (GPU target; not comparable on a CPU)")],
        ["step time (batch %d)" % args.batch_size, f"{t.median / args.steps_per_round * 1e3:,.1f} ms"],
        ["implied FLOP/s (img/s x 23 x 0.56 GMAC x 2)", f"{flops / 1e12:,.2f} TFLOP/s"],
        [f"same with counted MACs ({macs / 1e9:.3f} GMAC/forward at width {args.width:g})",
         f"{flops_measured / 1e12:,.2f} TFLOP/s"],
        ["utilization", util],
        ["one 50,000-image epoch (extrapolated)", f"{EPOCH / ips:,.1f} s"],
    ]
    sections = [C.table(["quantity", "value"], rows),
                f"preact-resnet18 width {args.width:g}, batch {args.batch_size}, {prec}"
                f"{', torch.compile' if args.compile else ''}, SGD lr 0.1 momentum 0.9, PGD-{args.pgd_steps} "
                f"(eps 8/255, step 2/255, random start, crafted in eval mode). Median of {args.repeats} rounds of "
                f"{args.steps_per_round} steps after {args.warmup_steps} warm-up steps; spread {t.spread:.0%}."]

    if args.aa_points:
        aa = measure_autoattack(args, device)
        label = "AutoAttack standard" if args.aa_version == "standard" else "AutoAttack custom-tiny (NOT standard)"
        robust = ", ".join(f"{k} {v}" for k, v in aa["robust"].items())
        aa_rows = [[f"{label}, {args.aa_points} points, fresh untrained model (lower bound)", f"{aa['seconds']:,.1f} s",
                    f"still robust after each component: {robust}"]]
        if "worst" in aa:
            w = aa["worst"]
            n = args.aa_points
            est = w["apgd-ce"][0] * args.aa_clean * n + sum(
                v[0] for k, v in w.items() if k != "apgd-ce") * args.aa_robust * n
            per = ", ".join(f"{k} {v[0] * 1e3:,.1f} ms/point (fooled {v[1]})" for k, v in w.items())
            aa_rows.append([f"full budget per point, measured on {args.aa_worst_points} unfoolable points",
                            "-", per])
            aa_rows.append([f"estimate ({label}): {n} points, {args.aa_clean:.0%} clean / {args.aa_robust:.0%} robust model",
                            f"{est:,.0f} s", "APGD-CE on the clean-correct points, the other components at full "
                            "budget on the robust ones; per-point costs at batch "
                            f"{args.aa_worst_points} (larger batches are cheaper per point on a GPU)"])
        sections += [C.table(["AutoAttack", "time", "detail"], aa_rows),
                     "AutoAttack runs in fp32, eval mode, eps 8/255, seed 0, labels = the model's predictions."]
    return C.report("Training throughput: PGD-10 adversarial training of preact-resnet18", device, sections, args,
                    before)


if __name__ == "__main__":
    main()
