"""Defense cost: one training step of every preset in attnguard.defenses.PRESETS, relative to madry.

A step is what the trainer does per batch: ``loss, parts = objective(model, x, y)`` (the defense
crafts its adversarial batch, runs its forward pass(es) and regularizers), ``zero_grad``,
``backward``, ``optimizer.step()``. Every preset gets a copy of the same initial model and its own
SGD optimizer, the same batch, and the same in-training adversary:
``AdversaryConfig(eps, step_size, steps=10)`` (CIFAR-size: eps 8/255, step 2/255; MNIST-size:
eps 0.3, step 0.01), with the other settings at their defaults (random start, crafting in eval
mode). Precision follows the trainer's defaults: on CUDA bf16 autocast + channels_last, on CPU fp32.

Models: preact-resnet18 at 3x32x32 (width 0.5 on CPU by default to keep the run short: ~1/4 of
the FLOPs, same structure; width 1.0 on CUDA) and lenet at 1x28x28.

    python benchmarks/bench_defenses.py                    # CPU, batch 32, ~2 min on 2 cores
    python benchmarks/bench_defenses.py --device cuda      # batch 512, width 1.0
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from attnguard import create_model  # noqa: E402
from attnguard.defenses import PRESETS, AdversaryConfig, DefenseConfig, build_objective  # noqa: E402

TARGETS = {"at": 1.15, "afm": 1.15, "madry+aad": 1.4}  # GPU targets of the project's issue


def step_fn(objective, model, opt, x, y, autocast):
    def run():
        with autocast():
            loss, _parts = objective(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return run


def main(argv=None) -> str:
    p = C.base_parser(__doc__.splitlines()[0], cpu_batch=32, cuda_batch=512)
    p.add_argument("--models", nargs="+", choices=("preact-resnet18", "lenet"), default=["preact-resnet18", "lenet"])
    p.add_argument("--width", type=float, default=None,
                   help="preact-resnet18 width multiplier (default 0.5 on cpu, 1.0 on cuda)")
    p.add_argument("--presets", nargs="+", default=list(PRESETS), help="presets to time (madry is always added)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps of the in-training adversary")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast + channels_last on cuda, fp32 on cpu (the trainer's defaults)")
    args = p.parse_args(argv)
    device = C.finish_args(args)
    cuda = device.type == "cuda"
    width = args.width if args.width is not None else (1.0 if cuda else 0.5)
    fast = args.precision == "bf16" or (args.precision == "auto" and cuda)
    presets = ["madry"] + [n for n in args.presets if n != "madry"]

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if fast else contextlib.nullcontext()

    before = C.machine(device)
    rows = []
    for key in args.models:
        if key == "lenet":
            base = create_model("lenet")
            shape, adv = (1, 28, 28), AdversaryConfig(eps=0.3, step_size=0.01, steps=args.steps)
            label = "lenet 1x28x28"
        else:
            base = create_model("preact-resnet18", width=width)
            shape, adv = (3, 32, 32), AdversaryConfig(eps=8 / 255, step_size=2 / 255, steps=args.steps)
            label = f"preact-resnet18 w{width:g} 3x32x32"
        base = base.to(device, memory_format=torch.channels_last if fast else torch.preserve_format).train()
        x, y = C.random_batch(args.batch_size, shape, base.num_classes, device, args.seed)
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        cands = {}
        for name in presets:
            model = copy.deepcopy(base)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            objective = build_objective(DefenseConfig(preset=name), adv)
            cands[name] = step_fn(objective, model, opt, x, y, autocast)
        print(f"{label}: batch {args.batch_size}, {device}, {'bf16+channels_last' if fast else 'fp32'}",
              file=sys.stderr)
        t = C.time_interleaved(cands, device, warmup=args.warmup, repeats=args.repeats)
        ref = t["madry"].median
        for name in presets:
            r = t[name].median / ref
            target = TARGETS.get(name)
            verdict = "-" if target is None else f"<= {target:.2f}x: {'met' if r <= target else 'missed'}"
            rows.append([label, name, f"{t[name].median * 1e3:,.0f}", C.rate(args.batch_size / t[name].median),
                         f"{r:.2f}x", verdict, f"{t[name].spread:.0%}"])
        del cands
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
    tab = C.table(["model", "preset", "ms / step", "images/s", "vs madry", "GPU target", "spread"], rows)
    prec = "bf16 autocast + channels_last" if fast else "fp32"
    notes = (f"Batch {args.batch_size}, {prec}, SGD (momentum 0.9), model in train mode, adversary PGD-{args.steps} "
             "(crafted in eval mode, random start). 'at' = madry+at, 'afm' = alp+afm (AFM eq. 6 builds on ALP). "
             f"Median of {args.repeats} interleaved rounds after {args.warmup} warm-up step(s). The targets "
             "(at, afm <= 1.15x madry; aad <= 1.4x) are stated for the GPU; CPU ratios are indicative only.")
    return C.report("Defense cost: one training step relative to madry", device, [tab, notes], args, before)


if __name__ == "__main__":
    main()
