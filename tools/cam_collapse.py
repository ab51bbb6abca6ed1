"""Does a model's class activation map carry information, or has training collapsed it?

AFM's terms (eq. 4 matching, eq. 6 norm decay) act on phi = ReLU(class activation map). A model
can satisfy both for free: softmax and logit pairing ignore a common shift of the logits, so
training may push the true-class evidence below zero everywhere, and the ReLU then makes phi zero
(or a near-constant) for every image. This prints, for each model, on the first ``--n`` test images
(true class, attnguard's Grad-CAM, unnormalized):

- the mean true-class logit and the share of images whose map is zero in every cell;
- the mean cell value of the map, and its within-image coefficient of variation (std / mean) over the
  maps that are not flat (a flat map, every cell equal, has no top cells);
- how input-independent its top-``--top`` cells are: the mean IoU of the top cells of two different
  images with non-flat maps (1.0: every image attends to the same cells), over up to 2,000 random pairs.

    python tools/cam_collapse.py parquet:DIR/cifar10-jpeg MODEL.safetensors ... [--n 500] [--top 5]
"""
from __future__ import annotations

import argparse

import torch

from attnguard import load_model
from attnguard.attention.gradcam import grad_cam
from attnguard.data import load_dataset


def collapse(model, x, y, top: int = 5, pairs: int = 2000) -> dict:
    model.eval()
    cam, logits = grad_cam(model, None, x, y, return_logits=True)
    cam = cam.flatten(1).double()
    n, cells = cam.shape
    k = min(top, cells)
    flat = cam.amax(1) <= cam.amin(1)  # no top cells: the tie-break would pick them (analysis.flat_maps)
    live = (~flat).nonzero().flatten()
    sets = cam[live].topk(k, dim=1).indices.sort(dim=1).values
    top_iou = None
    if len(live) > 1:
        g = torch.Generator().manual_seed(0)
        i = torch.randint(0, len(live), (pairs,), generator=g)
        j = torch.randint(0, len(live), (pairs,), generator=g)
        i, j = i[i != j], j[i != j]
        inter = (sets[i].unsqueeze(2) == sets[j].unsqueeze(1)).any(2).sum(1).double()
        top_iou = (inter / (2 * k - inter)).mean().item()
    mean = cam.mean(1)
    cv = torch.where(mean > 0, cam.std(1) / mean.clamp_min(1e-300), torch.zeros_like(mean))
    return {"n": n, "accuracy": (logits.argmax(1) == y).double().mean().item(),
            "true_logit": logits.gather(1, y[:, None]).double().mean().item(),
            "zero_maps": (cam.amax(1) <= 0).double().mean().item(), "flat_maps": flat.double().mean().item(),
            "cam_mean": cam.mean().item(), "cam_cv": cv[~flat].mean().item() if len(live) else None,
            "top_iou": top_iou, "cells": cells, "top": k}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset")
    p.add_argument("models", nargs="+", help="exports or run directories")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--top", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    test = load_dataset(a.dataset).test
    x, y = test.images[:a.n].float() / 255, test.labels[:a.n]
    print(f"| model | accuracy | mean true-class logit | maps zero everywhere | mean cell value | within-image CV | "
          f"top-{a.top} IoU across images |\n|---|---:|---:|---:|---:|---:|---:|")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for m in a.models:
        r = collapse(load_model(m), x, y, a.top)
        print(f"| {m.rstrip('/').split('/')[-1]} | {100 * r['accuracy']:.1f} | {r['true_logit']:+.2f} | "
              f"{100 * r['zero_maps']:.1f}% | {r['cam_mean']:.3g} | {fmt(r['cam_cv'], '.2f')} | {fmt(r['top_iou'], '.3f')} |", flush=True)
    print(f"\nFirst {len(y)} test images, true class, {r['cells']} cells per map.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
