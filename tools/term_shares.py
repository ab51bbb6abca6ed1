"""Each attention term's share of the parameter gradient at its default weight, on trained models.

The measure of tests/defenses/test_fidelity_alive.py (there on the LeNet fixture), on any model and
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
from attnguard.defenses import build_objective
from attnguard.defenses.adversary import AdversaryConfig
from attnguard.defenses.config import DefenseConfig

# (name, preset, section, weight key): the attention terms with a preset of their own
TERMS = [("aad rectification", "madry+aad", "aad", "alpha"), ("aad preservation", "madry+aad", "aad", "beta"),
         ("at", "madry+at", "at", "beta"), ("afm matching", "afm", "afm", "lambda1"),
         ("afm norm decay", "afm", "afm", "lambda2"), ("afm-cam matching", "afm-cam", "afm-cam", "lambda1"),
         ("afm-cam norm decay", "afm-cam", "afm-cam", "lambda2")]


def shares(model, x, y, adversary: AdversaryConfig):
    model.train()
    torch.manual_seed(0)
    x_adv = build_objective(DefenseConfig(preset="madry"), adversary).base.craft(model, x, y)

    def grad(preset, section, key, weight):
        cfg = DefenseConfig(preset=preset)
        setattr(cfg.params(section), key, weight)
        obj = build_objective(cfg, adversary)
        obj.base.craft = lambda *_: x_adv  # the same adversarial examples for both gradients
        loss, _ = obj(model, x, y)
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])

    on_by_preset = {}  # a preset's gradient at its default weights serves each of its terms
    for name, preset, section, key in TERMS:
        w = getattr(DefenseConfig(preset=preset).params(section), key)
        if preset not in on_by_preset:
            on_by_preset[preset] = grad(preset, section, key, w)
        on, off = on_by_preset[preset], grad(preset, section, key, 0.0)
        yield name, w, ((on - off).norm() / off.norm()).item()


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
