"""torch.compile against eager on the CPU: the PGD evaluation and a madry training step (issue 14).

Two measurements, each with the first call (which compiles) timed apart from the steady state:

* **training**: two :class:`attnguard.train.trainer.Trainer` built from the default run config
  (``attnguard train``: LeNet width 0.5, mnist-5k, batch 50, Adam, PGD-5 eps 0.3) with
  ``defense.preset=madry`` (madry+aad on LeNet needs a double backward, which compile cannot do: the
  trainer falls back to eager there), differing only in ``train.compile``; the timed call is
  ``train_step`` on the same fixed batches. With compile on, the in-training adversary crafts through
  the compiled model too.
* **evaluation**: ``attnguard.evaluate(model, x, y, ["pgd-K"])`` on a trained checkpoint (default: the
  default run's LeNet) and the first ``--n-examples`` test digits, with ``torch.compile(model)`` against
  the eager model. The evaluation's PGD drops fooled examples from later steps (``early_stop``), so
  the batch shrinks from step to step: dynamo recompiles once for a second shape, then with a dynamic
  batch dimension. Eager runs twice: as ``evaluate`` runs it (channels_last on the CPU) and in NCHW,
  the format the compiled module keeps (it is not an attnguard model to the evaluation's check).

    OMP_NUM_THREADS=1 python benchmarks/bench_compile.py --threads 1 --repeats 5
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import torch  # noqa: E402

DEFAULT_CHECKPOINT = C.REPO / "tests" / "fixtures" / "defrun-lenet-madry-aad.pt"


def _first_call(fn):
    """Wall and CPU seconds of one call (CPU: this process; inductor's C++ builds run in child processes)."""
    import os

    c0, w0, t0 = os.times(), time.perf_counter(), time.process_time()
    fn()
    c1 = os.times()
    return time.perf_counter() - w0, time.process_time() - t0, (c1.children_user + c1.children_system
                                                                 - c0.children_user - c0.children_system)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def bench_training(args, device, tmp):
    from attnguard.train.config import resolve_config
    from attnguard.train.trainer import Trainer

    def build(mode):
        over = {"train": {"device": device.type, "compile": mode, "progress": False}, "out": str(Path(tmp) / mode),
                "seed": args.seed, "defense": {"preset": args.preset}}
        return Trainer(resolve_config(None, over), echo=lambda *a, **k: None)

    trainers = {"eager": build("off"), "compiled": build("on")}
    if trainers["compiled"].fast["compile"].value is not True:
        raise SystemExit(f"compile was not used: {trainers['compiled'].fast['compile'].why}")
    batches = [b for _, b in zip(range(args.steps_per_round), trainers["eager"].loader.iter_from(0))]

    def step(t, bs=batches):
        def run():
            for x, y in bs:
                t.train_step(x, y)
        return run

    g0 = _graphs()
    first = {n: _first_call(step(t, batches[:1])) for n, t in trainers.items()}
    graphs = _graphs() - g0
    times = C.time_interleaved({n: step(t) for n, t in trainers.items()}, device, warmup=args.warmup,
                               repeats=args.repeats)
    cfg = trainers["eager"].cfg
    what = (f"{cfg.model.name} width {cfg.model.width}, {cfg.data.name}, {cfg.defense.preset}, batch "
            f"{cfg.train.batch_size}, {cfg.optim.optimizer}, PGD-{cfg.adversary.steps} (eps {cfg.adversary.eps:g}), "
            f"train.amp/channels_last as auto decides here ({trainers['eager'].fast['amp'].why}; channels_last "
            f"{trainers['eager'].fast['channels_last'].value})")
    return _rows("training step", first, times, len(batches), "step", graphs), what


def bench_evaluation(args, device):
    import attnguard
    from attnguard.data import load_dataset
    from attnguard.evaluation import blocks

    model = attnguard.load_model(args.checkpoint).to(device).eval()
    compiled = torch.compile(model)
    test = load_dataset(args.dataset).test
    n = min(args.n_examples, len(test.labels))
    x, y = (test.images[:n].float() / 255).to(device), test.labels[:n].to(device)
    name = f"pgd-{args.pgd_steps}"

    def run(m, nchw=False):
        def go():
            with mock.patch.object(blocks, "eval_channels_last", (lambda *a: False) if nchw else
                                   blocks.eval_channels_last):
                attnguard.evaluate(m, x, y, [name], args.eps, batch_size=args.eval_batch_size, progress=False)
        return go

    cands = {"eager (evaluate's default: channels_last)": run(model), "eager, NCHW": run(model, True),
             "compiled": run(compiled)}
    g0 = _graphs()
    first = {k: _first_call(f) for k, f in cands.items()}
    graphs = _graphs() - g0
    times = C.time_interleaved(cands, device, warmup=args.warmup, repeats=args.repeats)
    what = (f"evaluate(..., ['{name}']) on {args.checkpoint.name} ({model.arch}), the first {n} {args.dataset} "
            f"test digits, batch {args.eval_batch_size}, eps {args.eps:g}, fp32")
    return _rows(f"evaluation {name}", first, times, 1, "evaluation", graphs), what


def _rows(part, first, times, per, unit, graphs):
    base = times["eager"].median if "eager" in times else next(iter(times.values())).median
    rows = []
    for n, t in times.items():
        w, cpu, kids = first[n]
        rows.append([part, n, f"{w:,.1f} s (CPU {cpu:,.1f} s + {kids:,.1f} s in child processes)",
                     f"{t.median / per * 1e3:,.0f}", C.ratio(base, t.median), f"{t.spread:.0%}"])
    rows[-1][1] += f" ({graphs} graph(s) compiled)"
    return rows


def main(argv=None) -> str:
    p = C.base_parser(__doc__.splitlines()[0], cpu_batch=50, cuda_batch=512, cpu_repeats=5)
    p.add_argument("--parts", nargs="+", choices=("training", "evaluation"), default=["training", "evaluation"])
    p.add_argument("--preset", default="madry", help="training: defense.preset")
    p.add_argument("--steps-per-round", type=int, default=2, help="training: steps per timed round")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="evaluation: the model")
    p.add_argument("--dataset", default="mnist-5k", help="evaluation: its test split")
    p.add_argument("--n-examples", type=int, default=512, help="evaluation: the first N test examples")
    p.add_argument("--eval-batch-size", type=int, default=256, help="evaluation: evaluate()'s batch_size")
    p.add_argument("--pgd-steps", type=int, default=10, help="evaluation: pgd-K")
    p.add_argument("--eps", type=float, default=0.3, help="evaluation: L-inf radius")
    args = p.parse_args(argv)
    device = C.finish_args(args)
    before = C.machine(device)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        if "training" in args.parts:
            r, what = bench_training(args, device, tmp)
            rows += r
            notes.append(f"training: {what}; {args.steps_per_round} steps per round")
    if "evaluation" in args.parts:
        r, what = bench_evaluation(args, device)
        rows += r
        notes.append(f"evaluation: {what}")
    tab = C.table(["part", "candidate", "first call (compiles)", "ms / call, steady", "vs eager", "spread"], rows)
    text = ("; ".join(notes) + f". Steady state: median of {args.repeats} interleaved rounds after {args.warmup} "
            f"warm-up round(s), after the first call. torch.compile with its defaults (inductor). "
            f"'vs eager' is against the first row of each part.")
    return C.report("torch.compile vs eager", device, [tab, text], args, before)


if __name__ == "__main__":
    main()
