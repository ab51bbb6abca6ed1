"""Shared plumbing for the analyses: run directories, test data, attacks by name, batching.

Other modules (data, attack registry) are imported lazily so that the analyses work on plain
tensors even where those modules are missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError, DataError, UnknownNameError


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


def read_config(run) -> dict:
    """The resolved ``config.yaml`` of a run directory (empty dict if there is none)."""
    import yaml

    path = Path(run) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must hold a mapping, got {type(cfg).__name__}")
    return cfg


def cfg_get(cfg: dict, dotted: str, default=None):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def parse_eps(value) -> float:
    """A radius from a number or a string such as ``"8/255"``."""
    if isinstance(value, bool):
        raise ConfigError(f"eps must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(Fraction(str(value).strip()))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"eps must be a number such as 0.3 or 8/255, got {value!r}") from None


def run_eps(run, eps=None) -> float:
    """``eps`` if given, else the run's ``adversary.eps``, else the ``eps`` of its eval.json."""
    if eps is not None:
        return parse_eps(eps)
    value = cfg_get(read_config(run), "adversary.eps")
    if value is None:
        path = Path(run) / "eval.json"
        if path.is_file():
            value = json.loads(path.read_text()).get("eps")
    if value is None:
        raise ConfigError(f"no eps given and run {run} records none (adversary.eps in config.yaml, eps in "
                          "eval.json); pass eps")
    return parse_eps(value)


def load_test_data(run, n: Optional[int] = None) -> TestData:
    """The first ``n`` test examples of the dataset named in the run's config."""
    cfg = read_config(run)
    name = cfg_get(cfg, "data.name")
    if not name:
        raise ConfigError(f"run {run} has no data.name in config.yaml; cannot find its test set")
    try:
        from ..data import load_dataset
    except ImportError as e:
        raise DataError(f"the data module is not available ({e}); cannot load dataset '{name}'") from None
    ds = load_dataset(name, root=cfg_get(cfg, "data.root"))
    split = ds.test
    stop = len(split.labels) if n is None else min(int(n), len(split.labels))
    images = torch.as_tensor(split.images[:stop])
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    boxes = getattr(split, "boxes", None)
    masks = getattr(split, "masks", None)
    names = getattr(ds.info, "class_names", None) or [str(i) for i in range(ds.info.num_classes)]
    files = getattr(split, "filenames", None) or getattr(split, "files", None)
    return TestData(
        images=images,
        labels=torch.as_tensor(split.labels[:stop]).long(),
        class_names=[str(c) for c in names],
        boxes=None if boxes is None else torch.as_tensor(boxes[:stop]).float(),
        masks=None if masks is None else torch.as_tensor(masks[:stop]).bool(),
        filenames=None if files is None else [str(f) for f in files[:stop]],
    )


_STEPS = re.compile(r"^(pgd|cw)(?:-(\d+))?$")


def _fallback_attack(name: str, eps: float, seed: int):
    from ..attacks import FGSM, PGD

    if name == "fgsm":
        return FGSM(eps, seed=seed)
    m = _STEPS.match(name)
    if m:
        steps = int(m.group(2) or 20)
        return PGD(eps, steps=steps, seed=seed, loss="cw" if m.group(1) == "cw" else "ce")
    raise UnknownNameError("attack", name, ["fgsm", "pgd-K", "cw-K", "stepll"])


def make_attack(attack, eps: float, *, seed: int = 0, num_classes: int = 10,
                device="cpu") -> Tuple[Callable, str, List[str]]:
    """``(attack callable, the name actually used, notes)`` from a name or an attack object.

    Names go through ``attnguard.attacks.registry.build_attack`` when it exists. StepLL
    (AAD eq. 4) falls back to FGSM, with a note, where no StepLL implementation is available.
    """
    if not isinstance(attack, str):
        return attack, getattr(attack, "name", type(attack).__name__), []
    name = attack.strip().lower()
    try:
        from ..attacks.registry import build_attack
    except ImportError:
        build_attack = None
    if build_attack is not None:
        try:
            return build_attack(name, eps, seed=seed, num_classes=num_classes, device=device), name, []
        except UnknownNameError:
            if name != "stepll":
                raise
    if name == "stepll":
        note = ("StepLL (AAD eq. 4) is not available in this installation; the analysis used FGSM "
                "(one signed-gradient step of size eps on the true-class loss) instead")
        return _fallback_attack("fgsm", eps, seed), "fgsm", [note]
    return _fallback_attack(name, eps, seed), name, []


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


