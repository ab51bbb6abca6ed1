"""``attnguard eval``: evaluate a run directory or checkpoint on the first N test examples of its dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch

from ..errors import CheckpointError, ConfigError, check_range
from .core import evaluate
from .results import write_eval

PathLike = Union[str, os.PathLike]


def run_config(target: PathLike) -> dict:
    """The run config of a run directory (``config.yaml``, else its checkpoint) or of a checkpoint file."""
    from ..io import resolve_checkpoint, safe_load

    target = Path(target)
    if target.suffix == ".safetensors":
        raise ConfigError(f"{target} is a weights-only export without a run config; evaluate the run directory "
                          "or its .pt checkpoint instead")
    if target.is_dir() and (target / "config.yaml").is_file():
        import yaml

        try:
            config = yaml.safe_load((target / "config.yaml").read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{target / 'config.yaml'} is not valid YAML: {str(e).splitlines()[0]}") from None
    else:
        config = safe_load(resolve_checkpoint(target)).get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{target} holds no run config (needed to know the dataset)")
    return config


def _get(config: dict, *keys):
    node = config
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def load_test_examples(name: str, root: Optional[str], n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test examples of a dataset as float [0, 1] images and int64 labels."""
    from ..data import load_dataset

    test = load_dataset(name, root=root).test
    return test.images[:n].float() / 255.0, test.labels[:n].long()


def run_eval(target: PathLike, attacks: Union[str, Sequence], eps: Optional[float] = None, n_examples: int = 1000,
             sanity: bool = False, out: Optional[PathLike] = None, device=None, batch_size: int = 256,
             seed: int = 0, progress: bool = True) -> dict:
    """Evaluate a run directory or checkpoint and write ``eval.json`` / ``eval.md``.

    Args:
        target: a run directory or a ``.pt`` checkpoint (its config names the dataset).
        attacks: attack names (a list, or one comma-separated string).
        eps: threat-model radius; default the run's training eps (``adversary.eps``).
        n_examples: evaluate the first N examples of the test split.
        out: output directory or ``.json`` path; default the run directory, or the checkpoint's directory.

    Returns the evaluation dict (see :func:`attnguard.evaluation.evaluate`).
    """
    from ..io import load_model
    from ..utils.machine import describe_machine

    target = Path(target)
    n_examples = check_range("n_examples", n_examples, 1, integer=True)
    if isinstance(attacks, str):
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    config = run_config(target)
    dataset = _get(config, "data", "name")
    if not isinstance(dataset, str):
        raise ConfigError(f"the run config of {target} has no data.name; cannot tell which dataset to evaluate on")
    if eps is None:
        eps = _get(config, "adversary", "eps")
        if eps is None:
            raise ConfigError(f"the run config of {target} has no adversary.eps; pass eps explicitly")
    from ..utils.runtime import pick_device

    device = pick_device(device or "auto") if not isinstance(device, torch.device) else device
    model = load_model(target, device=device)
    images, labels = load_test_examples(dataset, _get(config, "data", "root"), n_examples)
    name = f"{target.name} ({model.arch})" if target.is_dir() else f"{target.stem} ({model.arch})"
    result, per = evaluate(model, images, labels, attacks, eps, sanity, batch_size=batch_size, device=device,
                           seed=seed, progress=progress, dataset=dataset, model_name=name, return_per_example=True)
    # per-example outcomes let later evaluations of the same examples be merged into one worst case
    result["per_example"] = {"clean": bits(per.clean), "attacks": {k: bits(v) for k, v in per.attacks.items()}}
    result["system"] = describe_machine(device)
    write_eval(result, out if out is not None else (target if target.is_dir() else target.parent))
    return result


def bits(mask: torch.Tensor) -> str:
    """A bool tensor as a string of '0'/'1' (compact, readable JSON)."""
    return "".join("1" if v else "0" for v in mask.tolist())
