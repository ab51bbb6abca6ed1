"""Shared plumbing for the analyses: test data of a run, attacks by name, batching.

Runs are read through :class:`attnguard.rundir.RunDir`; the attack registry is imported lazily
so that the tensor-level analyses do not load every attack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from ..rundir import RunDir, first_examples


@dataclass
class TestData:
    """A slice of a test split as float [0, 1] tensors, plus what the analyses may use."""

    images: torch.Tensor  # [N, C, H, W] float in [0, 1]
    labels: torch.Tensor  # [N] int64
    class_names: List[str]
    boxes: Optional[torch.Tensor] = None  # [N, 4] x0, y0, x1, y1 in pixels
    masks: Optional[torch.Tensor] = None  # [N, H, W] bool
    filenames: Optional[List[str]] = None
    notes: List[str] = field(default_factory=list)


def load_test_data(run: RunDir, n: Optional[int] = None) -> TestData:
    """The first ``n`` test examples of the run's dataset, with its class names, boxes and masks if it has them."""
    ds = run.load_dataset()
    split = ds.test
    images, labels = first_examples(split, n)
    stop = len(labels)
    boxes = getattr(split, "boxes", None)
    masks = getattr(split, "masks", None)
    names = getattr(ds.info, "class_names", None) or [str(i) for i in range(ds.info.num_classes)]
    files = getattr(split, "filenames", None) or getattr(split, "files", None)
    return TestData(
        images=images,
        labels=labels,
        class_names=[str(c) for c in names],
        boxes=None if boxes is None else torch.as_tensor(boxes[:stop]).float(),
        masks=None if masks is None else torch.as_tensor(masks[:stop]).bool(),
        filenames=None if files is None else [str(f) for f in files[:stop]],
    )


def attack_name(attack) -> str:
    """The name an attack is reported under: the registry name, or an attack object's own name."""
    return attack.strip().lower() if isinstance(attack, str) else getattr(attack, "name", type(attack).__name__)


def make_attack(attack, eps: float, *, seed: int = 0, num_classes: int = 10, device="cpu"):
    """An attack object from a name (through the attack registry), or ``attack`` itself if it is one."""
    if not isinstance(attack, str):
        return attack
    from ..attacks.registry import build_attack

    return build_attack(attack_name(attack), eps, seed=seed, num_classes=num_classes, device=device)


def batched(n: int, batch_size: int):
    for i in range(0, n, batch_size):
        yield slice(i, min(n, i + batch_size))


def predict(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Softmax probabilities ``[N, K]`` in eval mode (on the images' device)."""
    out = []
    with torch.no_grad():
        for s in batched(len(images), batch_size):
            out.append(torch.softmax(model(images[s]).float(), 1))
    return torch.cat(out) if out else torch.zeros(0, 0)


def attack_all(attack, model, images, labels, batch_size: int = 128) -> torch.Tensor:
    """Adversarial examples for every image, in batches."""
    parts = [attack(model, images[s], labels[s]) for s in batched(len(images), batch_size)]
    return torch.cat(parts) if parts else images.clone()


def cams(model, images: torch.Tensor, targets: torch.Tensor, layer=None, batch_size: int = 128) -> torch.Tensor:
    """Grad-CAM ``[N, h, w]`` (unnormalized) of ``targets`` at ``layer`` (default: the model's attention layer)."""
    from ..attention import grad_cam

    parts = [grad_cam(model, layer, images[s], target=targets[s]) for s in batched(len(images), batch_size)]
    return torch.cat(parts)


def class_name(names: Sequence[str], idx: int) -> str:
    return names[idx] if 0 <= idx < len(names) else str(idx)


