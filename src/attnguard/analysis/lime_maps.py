"""LIME explanations as an alternative attention map (AAD sec. 3.3, Tables 4-5).

Uses ``lime.lime_image.LimeImageExplainer`` (Ribeiro et al. 2016) with a batch classifier
around the model. The "attention" of an image is the union of its top-k superpixels: the k
segments with the largest (signed) LIME weights for the explained class, i.e. the evidence that
most supports that class. Superpixels come from SLIC, set up for small (28x28, 32x32) images so
that each image has a couple of dozen segments; the number of segments is raised for images
where SLIC returns too few for the requested k.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Sequence

import numpy as np
import torch


@dataclass
class LimeMaps:
    """``masks[k]``: bool ``[B, H, W]`` union of the top-k segments; ``segments``: int ``[B, H, W]``."""

    masks: Dict[int, torch.Tensor]
    segments: torch.Tensor
    n_segments: List[int]
    features: Dict[int, List[List[int]]]  # per k, per image: the chosen segment ids


def slic_segments(image: np.ndarray, n_segments: int = 36, min_segments: int = 12, compactness: float = 10.0,
                  tries: int = 4) -> np.ndarray:
    """SLIC superpixels of an ``[H, W, 3]`` float image, labelled 0..n-1 (what LIME expects).

    Retries with more seeds until at least ``min_segments`` come out (SLIC merges seeds on
    flat regions, which is common on MNIST-like images).
    """
    from skimage.segmentation import slic

    seg = None
    for _ in range(max(1, tries)):
        seg = slic(image, n_segments=int(n_segments), compactness=compactness, sigma=0.5, start_label=0)
        if len(np.unique(seg)) >= min_segments:
            break
        n_segments = int(n_segments * 1.6)
    # LIME indexes segments as 0..n-1; make the labels consecutive whatever SLIC returned
    _, inverse = np.unique(seg, return_inverse=True)
    return inverse.reshape(seg.shape)


@contextlib.contextmanager
def _quiet_lime():
    """LIME wraps its sampling loop in a tqdm bar that cannot be switched off; silence it here."""
    import lime.lime_image as li

    original = li.tqdm
    li.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        li.tqdm = original


def _classifier(model, channels: int, device):
    def predict(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).float().permute(0, 3, 1, 2).to(device)
        if channels == 1:
            x = x.mean(1, keepdim=True)
        with torch.no_grad():
            return torch.softmax(model(x).float(), 1).cpu().numpy()

    return predict


def lime_maps(model, images: torch.Tensor, targets: torch.Tensor, num_features: Sequence[int] = (8, 10), *,
              num_samples: int = 300, n_segments: int = 36, hide_color=None, seed: int = 0,
              batch_size: int = 256) -> LimeMaps:
    """LIME attention masks of ``images`` ``[B, C, H, W]`` (in [0, 1]) for the classes ``targets``.

    Args:
        model: classifier taking [0, 1] inputs (put it in eval mode first).
        targets: the class explained for each image (the analyses use the predicted class).
        num_features: the k values; each mask is the union of the k highest-weighted segments
            (fewer only if the image has fewer than k segments).
        num_samples: perturbed samples per explanation (LIME's default of 1000 is slow on CPU).
        hide_color: value of switched-off segments; None (LIME's default) uses each segment's mean.
        seed: seeds the explainer, so the maps are reproducible.
    """
    from lime.lime_image import LimeImageExplainer

    ks = sorted({int(k) for k in num_features})
    if not ks or ks[0] < 1:
        raise ValueError(f"num_features must be positive integers, got {list(num_features)}")
    b, c, h, w = images.shape
    classify = _classifier(model, c, images.device)
    segment_fn = partial(slic_segments, n_segments=n_segments, min_segments=ks[-1] + 2)
    masks = {k: torch.zeros(b, h, w, dtype=torch.bool) for k in ks}
    features: Dict[int, List[List[int]]] = {k: [] for k in ks}
    all_segments = torch.zeros(b, h, w, dtype=torch.long)
    counts = []
    pixels = images.detach().cpu().double().permute(0, 2, 3, 1).numpy()
    with _quiet_lime():
        for i in range(b):
            img = np.repeat(pixels[i], 3, axis=2) if c == 1 else pixels[i]
            explainer = LimeImageExplainer(random_state=seed + i)
            label = int(targets[i])
            exp = explainer.explain_instance(img, classify, labels=(label,), top_labels=None, hide_color=hide_color,
                                             num_samples=num_samples, batch_size=batch_size,
                                             segmentation_fn=segment_fn, random_seed=seed + i)
            segs = np.asarray(exp.segments)
            all_segments[i] = torch.from_numpy(segs)
            counts.append(int(len(np.unique(segs))))
            ranked = [f for f, _ in sorted(exp.local_exp[label], key=lambda fw: -fw[1])]
            for k in ks:
                chosen = ranked[:k]
                features[k].append([int(f) for f in chosen])
                masks[k][i] = torch.from_numpy(np.isin(segs, chosen))
    return LimeMaps(masks=masks, segments=all_segments, n_segments=counts, features=features)
