"""Each attention term's share of the parameter gradient at its default weight, on trained models.

The measure of attnguard.defenses.term_share (tests/defenses/test_fidelity_alive.py checks it on the LeNet fixture), on any model and
dataset: ``||grad(objective) - grad(objective with the term's weight 0)|| / ||grad(objective with it 0)||``
on the first ``--n`` test images, the same adversarial examples for both (the training adversary,
crafted once on the model in train mode). A share below 1e-3 means the defense trains as its base.

    python tools/term_shares.py parquet:DIR/cifar10-jpeg MODEL.safetensors ... --eps 8/255 --step 5/255 --steps 2
"""
from __future__ import annotations

import argparse
from fractions import Fraction

import torch

from attnguard import load_model
from attnguard.data import load_dataset
from attnguard.defenses.adversary import AdversaryConfig
from attnguard.defenses.term_share import TERMS, TermShares

# the afm/at/aad family: the fm-* feature-matching ablations are left to the test's fixture
SHOWN = [t for t in TERMS if not t[0].startswith("fm-")]


def shares(model, x, y, adversary: AdversaryConfig):
    measure = TermShares(model, x, y, adversary)
    for name, preset, (section, key), _ in SHOWN:
        value, weight, _ = measure.share(preset, section, key)
        yield name, weight, value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset")
    p.add_argument("models", nargs="+", help="exports or run directories")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--eps", default="8/255")
    p.add_argument("--step", default="5/255")
    p.add_argument("--steps", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    test = load_dataset(a.dataset).test
    x, y = test.images[:a.n].float() / 255, test.labels[:a.n]
    adv = AdversaryConfig(eps=float(Fraction(a.eps)), step_size=float(Fraction(a.step)), steps=a.steps)
    print("| model | term | default weight | share of the gradient |\n|---|---|---:|---:|")
    for m in a.models:
        for name, w, s in shares(load_model(m), x, y, adv):
            print(f"| {m.rstrip('/').split('/')[-1]} | {name} | {w:g} | {s:.2e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
