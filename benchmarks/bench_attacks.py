"""Attack throughput: attnguard's PGD-10 against torchattacks.PGD on the same model, data and settings.

Both run L-inf PGD with a uniform random start, the same eps / alpha / steps, in fp32, on the same
eval-mode model, batch and device; attnguard with ``skip_misclassified=False`` so both attack every
example. A third row runs attnguard with the settings its trainer and evaluator use by default:
on CUDA bf16 autocast + channels_last; on CPU those defaults are plain fp32 (no autocast, no
channels_last), so the row is the fp32 one and is not measured twice.

    python benchmarks/bench_attacks.py                     # CPU, batch 32, ~1 min on 2 cores
    python benchmarks/bench_attacks.py --device cuda       # batch 512

``--evaluation`` times the whole evaluation instead (issue 14's PGD evaluation target): on a trained
checkpoint (default: the default run's LeNet, tests/fixtures/defrun-lenet-madry-aad.pt) and the first
``--n-examples`` test digits, ``attnguard.evaluate(model, x, y, ["pgd-K"])`` against a torchattacks
loop with the same eps, step and steps (``torchattacks.PGD`` per batch, then one forward on its
output to count the robust examples; no clean pass, which attnguard's figure includes), both fp32:

    OMP_NUM_THREADS=1 python benchmarks/bench_attacks.py --evaluation --threads 1 --repeats 7
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
from attnguard.attacks import PGD  # noqa: E402

DEFAULT_CHECKPOINT = C.REPO / "tests" / "fixtures" / "defrun-lenet-madry-aad.pt"
# name -> (registry name, input shape, eps, alpha)
MODELS = {
    "preact-resnet18": ("preact-resnet18", (3, 32, 32), 8 / 255, 2 / 255),
    "lenet": ("lenet", (1, 28, 28), 0.3, 0.075),
}


def main(argv=None) -> str:
    p = C.base_parser(__doc__.splitlines()[0], cpu_batch=32, cuda_batch=512, cpu_repeats=5)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--steps", type=int, default=10, help="PGD iterations")
    p.add_argument("--evaluation", action="store_true",
                   help="time attnguard.evaluate(..., ['pgd-K']) on a trained checkpoint against a torchattacks loop")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="--evaluation: the model")
    p.add_argument("--dataset", default="mnist-5k", help="--evaluation: its test split is attacked")
    p.add_argument("--n-examples", type=int, default=512, help="--evaluation: the first N test examples")
    p.add_argument("--eps", type=float, default=0.3, help="--evaluation: L-inf radius (step 2.5 eps / K)")
    args = p.parse_args(argv)
    if args.evaluation and args.batch_size is None:
        args.batch_size = 256  # evaluate()'s default
    device = C.finish_args(args)
    if args.evaluation:
        from _bench_eval import bench_evaluation

        return bench_evaluation(args, device)
    import torchattacks

    before = C.machine(device)
    rows = []
    cuda = device.type == "cuda"
    for key in args.models:
        arch, shape, eps, alpha = MODELS[key]
        model = create_model(arch).to(device).eval()
        x, y = C.random_batch(args.batch_size, shape, model.num_classes, device, args.seed)

        ours = PGD(eps, alpha=alpha, steps=args.steps, random_start=True, skip_misclassified=False)
        theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
        out = {}

        def run_ours():
            out["attnguard"] = ours(model, x, y)

        def run_theirs():
            out["torchattacks"] = theirs(x, y)

        candidates = {"attnguard fp32": run_ours, "torchattacks fp32": run_theirs}
        if cuda:
            fast_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
            x_cl = x.contiguous(memory_format=torch.channels_last)

            def run_fast():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out["attnguard fast"] = ours(fast_model, x_cl, y)

            candidates["attnguard bf16+channels_last"] = run_fast
        print(f"{key}: batch {args.batch_size}, {args.steps} steps, {device}", file=sys.stderr)
        t = C.time_interleaved(candidates, device, warmup=args.warmup, repeats=args.repeats)
        for name, adv in out.items():  # outside the timed region: both really did an eps-bounded attack
            dev = (adv.float() - x).abs().amax().item()
            if dev > eps + 1e-5:
                raise SystemExit(f"{name} left the eps-ball ({dev} > {eps})")
        ips = {n: args.batch_size / v.median for n, v in t.items()}
        ref = ips["torchattacks fp32"]
        rows.append([key, "torchattacks.PGD fp32", C.rate(ips['torchattacks fp32']), "1.00x",
                     f"{t['torchattacks fp32'].spread:.0%}"])
        rows.append([key, "attnguard PGD fp32", C.rate(ips['attnguard fp32']), C.ratio(ips["attnguard fp32"], ref),
                     f"{t['attnguard fp32'].spread:.0%}"])
        if cuda:
            n = "attnguard bf16+channels_last"
            rows.append([key, "attnguard PGD default (bf16 autocast + channels_last)", C.rate(ips[n]),
                         C.ratio(ips[n], ref), f"{t[n].spread:.0%}"])
        else:
            rows.append([key, "attnguard PGD default (on CPU = fp32, row above)", C.rate(ips['attnguard fp32']),
                         C.ratio(ips["attnguard fp32"], ref), "-"])
        del model
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()

    tab = C.table(["model", "attack", "images/s", "vs torchattacks", "spread"], rows)
    notes = (f"PGD-{args.steps}, L-inf, random start, batch {args.batch_size}, untrained models in eval mode, "
             "uniform random inputs; preact-resnet18 at 3x32x32 (eps 8/255, alpha 2/255), lenet at 1x28x28 "
             "(eps 0.3, alpha 0.075). images/s = batch / median time of one attack call over "
             f"{args.repeats} interleaved rounds after {args.warmup} warm-up call(s); spread = (max - min) / median.")
    return C.report("Attack throughput: attnguard PGD vs torchattacks PGD", device, [tab, notes], args, before)


if __name__ == "__main__":
    main()
