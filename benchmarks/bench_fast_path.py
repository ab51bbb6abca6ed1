"""Fast-path switches of the trainer: one training step with channels_last and/or bf16 autocast on vs off.

Each candidate is a real :class:`attnguard.train.trainer.Trainer` built from the default run config
(``attnguard train`` with no arguments: LeNet width 0.5 on mnist-5k, madry+aad, PGD-5 eps 0.3,
batch 50, Adam) plus ``--set``-style overrides, with only ``train.channels_last`` and ``train.amp``
differing between candidates; the timed call is ``trainer.train_step(x, y)`` on the same fixed
batches for every candidate. This is what decides the CPU ``auto`` defaults in
``attnguard/utils/fastpath.py`` (docs/PERFORMANCE.md, "CPU fast path").

    python benchmarks/bench_fast_path.py --threads 1 --clock cpu                      # lenet, default run
    python benchmarks/bench_fast_path.py --threads 1 --clock cpu --model resnet9 --width 0.25 \\
        --dataset synthetic-boxes
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from attnguard.train.config import resolve_config  # noqa: E402
from attnguard.train.trainer import Trainer  # noqa: E402
from attnguard.utils.fastpath import BF16_FLAGS, cpu_flags  # noqa: E402

CANDIDATES = {"fp32": ("off", "off"), "channels_last": ("off", "on"), "bf16": ("bf16", "off"),
              "bf16+channels_last": ("bf16", "on")}


def build(args, device, amp, channels_last, out):
    over = {"train": {"device": device.type, "amp": amp, "channels_last": channels_last, "compile": "off",
                      "progress": False},
            "out": str(out), "seed": args.seed}
    if args.model:
        over["model"] = {"name": args.model}
    if args.width is not None:
        over.setdefault("model", {})["width"] = args.width
    if args.dataset:
        over["data"] = {"name": args.dataset}
    if args.preset:
        over["defense"] = {"preset": args.preset}
    if args.batch_size_set:
        over["train"]["batch_size"] = args.batch_size
    return Trainer(resolve_config(None, over), echo=lambda *a, **k: None)


def main(argv=None) -> str:
    p = C.base_parser(__doc__.splitlines()[0], cpu_batch=50, cuda_batch=512, cpu_repeats=7, cuda_repeats=5)
    p.add_argument("--model", default=None, help="model name (default: the run config's, lenet)")
    p.add_argument("--width", type=float, default=None, help="model.width (default: the run config's)")
    p.add_argument("--dataset", default=None, help="data.name (default: the run config's, mnist-5k)")
    p.add_argument("--preset", default=None, help="defense.preset (default: the run config's, madry+aad)")
    p.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    p.add_argument("--steps-per-round", type=int, default=2, help="training steps per timed round")
    args = p.parse_args(argv)
    args.batch_size_set = args.batch_size is not None
    device = C.finish_args(args)
    before = C.machine(device)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: build(args, device, *CANDIDATES[name], Path(tmp) / name) for name in args.candidates}
        first = next(iter(trainers.values()))
        batches = [b for _, b in zip(range(args.steps_per_round), first.loader.iter_from(0))]

        def round_fn(trainer):
            def run():
                for x, y in batches:
                    trainer.train_step(x, y)
            return run

        times = C.time_interleaved({n: round_fn(t) for n, t in trainers.items()}, device, warmup=args.warmup,
                                   repeats=args.repeats)
    cfg = first.cfg
    base = times[args.candidates[0]].median
    n_img = len(batches) * batches[0][0].shape[0]
    rows = [[n, f"{t.median / len(batches) * 1e3:,.1f}", C.rate(n_img / t.median), C.ratio(base, t.median),
             f"{t.spread:.0%}"] for n, t in times.items()]
    flags = sorted(f for f in BF16_FLAGS if f in cpu_flags()) or ["none"]
    sections = [C.table(["candidate", "ms / step", "images/s", f"speed vs {args.candidates[0]}", "spread"], rows),
                f"{cfg.model.name} width {cfg.model.width}, {cfg.data.name}, {cfg.defense.preset}, batch "
                f"{cfg.train.batch_size}, {cfg.optim.optimizer}, PGD-{cfg.adversary.steps} "
                f"(eps {cfg.adversary.eps:g}); "
                f"Trainer.train_step on {len(batches)} fixed batches per round; median of {args.repeats} "
                f"interleaved rounds after {args.warmup} warm-up round(s). CPU bf16 flags: {', '.join(flags)}."]
    return C.report("Fast-path switches: one training step", device, sections, args, before)


if __name__ == "__main__":
    main()
