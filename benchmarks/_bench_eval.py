"""``bench_attacks.py --evaluation``: the PGD evaluation of a trained model, attnguard against torchattacks.

Issue 14's target: on the default run's model and 512 test digits, fp32, wall clock,
``attnguard.evaluate(..., ["pgd-10"])`` at least 1.3x a torchattacks.PGD loop with the same eps, step
and steps. Four candidates, timed in interleaved rounds on the same data:

* ``torchattacks``: per batch ``torchattacks.PGD(x, y)`` then one forward on its output (the robust
  count); it does no clean pass, so it is the cheaper of the two ways to get a robust accuracy.
* ``attnguard, last iterate, NCHW``: ``evaluate`` with a PGD object the caller built (judged on its
  last iterate, as torchattacks) and the default memory format: the evaluation before issue 14.
* ``attnguard pgd-K, NCHW``: the named attack, which the evaluation runs with ``early_stop``.
* ``attnguard pgd-K``: as ``evaluate`` runs it by default (on the CPU also channels_last).

The last three include evaluate's clean pass and input checks. Per round the ratio to torchattacks
is taken (paired), so load from other processes that hits a whole round cancels out.
"""

from __future__ import annotations

import statistics
import sys
from unittest import mock

import torch

import _common as C


def bench_evaluation(args, device) -> str:
    import torchattacks

    import attnguard
    from attnguard.attacks.pgd import PGD
    from attnguard.data import load_dataset
    from attnguard.evaluation import blocks

    before = C.machine(device)
    model = attnguard.load_model(args.checkpoint).to(device).eval()
    test = load_dataset(args.dataset).test
    n = min(args.n_examples, len(test.labels))
    x = (test.images[:n].float() / 255).to(device)
    y = test.labels[:n].to(device)
    eps, steps, bs = args.eps, args.steps, args.batch_size
    alpha = 2.5 * eps / steps  # pgd-K's step (Madry et al.), attnguard.attacks.registry
    name = f"pgd-{steps}"
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    last_iterate = PGD(eps, alpha=alpha, steps=steps, seed=0)
    # an object the caller built (no registry name): the evaluation leaves it as it is, last iterate
    acc = {}

    def run_theirs():
        correct = 0
        for s in range(0, n, bs):
            adv = theirs(x[s:s + bs], y[s:s + bs])
            with torch.no_grad():
                correct += int((model(adv).argmax(1) == y[s:s + bs]).sum())
        acc["torchattacks"] = correct / n

    def run_ours(key, attack, channels_last):
        def run():
            patch = (mock.patch.object(blocks, "eval_channels_last", lambda *a: False) if not channels_last
                     else mock.patch.object(blocks, "eval_channels_last", blocks.eval_channels_last))
            with patch:
                r = attnguard.evaluate(model, x, y, [attack], eps, batch_size=bs, progress=False, seed=0)
            (acc[key],) = r["attacks"].values()
        return run

    cl_auto = blocks.eval_channels_last(model, device)
    default = f"attnguard {name}" + (" (early stop + channels_last)" if cl_auto else " (early stop)")
    cands = {"torchattacks": run_theirs,
             "attnguard, last iterate, NCHW": run_ours("last", last_iterate, False),
             f"attnguard {name}, NCHW (early stop)": run_ours("early", name, False),
             default: run_ours("default", name, True)}
    print(f"evaluation: {args.checkpoint.name}, {n} examples, batch {bs}, {name}, {device}", file=sys.stderr)
    t = C.time_interleaved(cands, device, warmup=args.warmup, repeats=args.repeats)
    ref = t["torchattacks"].seconds
    rows = []
    for key, tm in t.items():
        paired = [a / b for a, b in zip(ref, tm.seconds)]
        rows.append([key, f"{tm.median:.2f}", C.ratio(t["torchattacks"].median, tm.median),
                     f"{statistics.median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f})",
                     f"{tm.spread:.0%}"])
    accs = ", ".join(f"{k} {v:.1%}" for k, v in acc.items())
    tab = C.table(["candidate", "s / evaluation", "vs torchattacks (medians)", "paired per round: median (range)",
                   "spread"], rows)
    notes = (f"{model.arch} from {args.checkpoint.name}, the first {n} {args.dataset} test examples, batch {bs}, "
             f"L-inf eps {eps:g}, {steps} steps of {alpha:g}, random start, fp32, eval mode. One evaluation = "
             "every batch attacked and judged (attnguard: plus its clean pass). Median of "
             f"{args.repeats} interleaved rounds after {args.warmup} warm-up call(s); 'paired' = torchattacks' "
             f"time / the candidate's time in the same round. Robust accuracy (last round): {accs}.")
    return C.report("PGD evaluation: attnguard.evaluate vs a torchattacks loop", device, [tab, notes], args,
                    before)
