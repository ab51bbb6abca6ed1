"""``attnguard eval``: evaluate a run directory or checkpoint on the first N test examples of its dataset."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch

from ..errors import ConfigError, check_range
from ..rundir import EVAL_FILE, RunDir, first_examples
from .core import evaluate
from .results import _paths, write_eval

PathLike = Union[str, os.PathLike]


def load_test_examples(name: str, root: Optional[str], n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test examples of a dataset as float [0, 1] images and int64 labels."""
    from ..data import load_dataset

    return first_examples(load_dataset(name, root=root).test, n)


def run_eval(target: PathLike, attacks: Union[str, Sequence], eps: Optional[float] = None, n_examples: int = 1000,
             sanity: bool = False, out: Optional[PathLike] = None, device=None, batch_size: int = 256,
             seed: int = 0, progress: bool = True) -> dict:
    """Evaluate a run directory or checkpoint and write ``eval.json`` / ``eval.md``.

    Args:
        target: a run directory or a ``.pt`` checkpoint (its config names the dataset); a run
            directory is evaluated on the checkpoint its config's ``eval.checkpoint`` names (default best).
        attacks: attack names (a list, or one comma-separated string); ``name@N`` runs that attack
            on the first N of the ``n_examples`` only (``autoattack@300``).
        eps: threat-model radius; default the run's ``eval.eps``, else its training eps (``adversary.eps``).
        n_examples: evaluate the first N examples of the test split.
        out: output directory or ``.json`` path; default the run directory, or the checkpoint's directory.

    Returns the evaluation dict (see :func:`attnguard.evaluation.evaluate`).
    """
    from ..io import weights_fingerprint
    from ..utils.machine import describe_machine
    from ..utils.runtime import pick_device

    n_examples = check_range("n_examples", n_examples, 1, integer=True)
    if isinstance(attacks, str):
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    run = RunDir(target)
    dataset = run.dataset
    if eps is None:
        eps = run.eps
    device = pick_device(device or "auto") if not isinstance(device, torch.device) else device
    model = run.model(device)
    images, labels = run.test_examples(n_examples)
    name = f"{run.name} ({model.arch})"
    result, per = evaluate(model, images, labels, attacks, eps, sanity, batch_size=batch_size, device=device,
                           seed=seed, progress=progress, dataset=dataset, model_name=name, return_per_example=True)
    # per-example outcomes let later evaluations of the same examples be merged into one worst case
    result["per_example"] = {"clean": bits(per.clean), "attacks": {k: bits(v) for k, v in per.attacks.items()}}
    result["system"] = describe_machine(device)
    result["checkpoint"] = run.checkpoint().name
    result["weights"] = weights_fingerprint(model)  # the report merges only files of the same weights
    write_eval(result, out if out is not None else run.path)
    return result


def bits(mask: torch.Tensor) -> str:
    """A bool tensor as a string of '0'/'1' (compact, readable JSON)."""
    return "".join("1" if v else "0" for v in mask.tolist())


def eval_file_name(attacks: Sequence[str], n_examples: int) -> str:
    """The file name of an evaluation that is not a run's first one: ``eval-<attacks>-n<N>.json``.

    The one source of this name: ``attnguard eval`` writes there beside an existing ``eval.json``
    (:func:`choose_eval_out`), and ``attnguard sweep --eval-attacks`` asks for exactly this file
    and treats its existence as "already evaluated". Attack names joined by ``+``, each with every
    run of characters other than letters, digits, ``.``, ``+`` and ``-`` made one ``-``
    (``autoattack@300`` -> ``autoattack-300``, ``transfer:runs/a:pgd-20`` -> ``transfer-runs-a-pgd-20``).
    """
    tag = "+".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", str(a)).strip("-") or "attack" for a in attacks)
    return f"eval-{tag}-n{int(n_examples)}.json"


def choose_eval_out(target: PathLike, out: Optional[PathLike], attacks: Sequence[str], n_examples: int,
                    force: bool = False) -> Path:
    """Where ``attnguard eval`` writes, chosen before evaluating so that no evaluation is overwritten silently.

    Without ``out``: ``eval.json`` beside the model, or, when that exists (e.g. the final evaluation
    of ``attnguard train``), :func:`eval_file_name` (``eval-<attacks>-n<N>.json``). The chosen file
    (or ``out``) must not exist unless ``force``. Returns the ``.json`` path (``.md`` beside it).
    Raises ConfigError otherwise.
    """
    if out is None:
        folder = RunDir(target).path
        json_path = folder / EVAL_FILE
        if json_path.exists():
            json_path = folder / eval_file_name(attacks, n_examples)
    else:
        json_path = _paths(out)[0]
    if not force:
        taken = [p for p in (json_path, json_path.with_suffix(".md")) if p.exists()]
        if taken:
            raise ConfigError(f"{taken[0]} exists (another evaluation); pass --out FILE.json for a new file, "
                              "or --force to overwrite it")
    return json_path
