"""Which ``eval*.json`` files beside a checkpoint or an export measured that model.

A checkpoint (``.pt``) or an export (``.safetensors``) may share its folder with other models and
their evaluations (``docs/results/boxes`` holds 15 exports side by side). Each evaluation file
records the checkpoint file it measured (``checkpoint``) and the weights' fingerprint
(``weights``, :func:`attnguard.io.weights_fingerprint`); :meth:`attnguard.rundir.RunDir.evals`
uses :func:`own_evals` so that two models in one folder never read each other's numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Tuple

MODEL_SUFFIXES = (".pt", ".safetensors")


def own_evals(model_file: Path, evals: List[Tuple[Path, dict]], fingerprint: Callable[[], str],
              notes: Optional[list] = None) -> List[Tuple[Path, dict]]:
    """The ``(path, evaluation)`` pairs of ``evals`` that measured ``model_file``.

    A file is this model's when it names this checkpoint file, or names another one but records the
    same weights (the run's ``eval.json`` of ``last.pt`` copied beside that checkpoint's export).
    ``fingerprint()`` gives this model's weight fingerprint; it loads the model, so it is called at
    most once and only when a file needs it. A file from before both keys cannot be told apart: it
    is kept only where no other model file shares the folder. With ``notes``, one line per model
    says what was left out (a folder of 15 exports would otherwise give 14 lines each).
    """
    alone = not any(p != model_file and p.suffix in MODEL_SUFFIXES for p in model_file.parent.iterdir())
    mine, others, unknown, ours = [], [], [], None
    for f, e in evals:
        named, weights = e.get("checkpoint"), e.get("weights")
        if not named and not weights and not alone:
            unknown.append(f.name)
            continue
        if named and named != model_file.name:
            if weights and ours is None:
                ours = fingerprint()
            if not weights or weights != ours:
                others.append(f.name)
                continue
        mine.append((f, e))
    if notes is not None and others:
        notes.append(f"{model_file.name}: {len(others)} evaluation file(s) beside it measured other weights "
                     f"(the checkpoint name and weights each records) and were left out, e.g. {others[0]}")
    if notes is not None and unknown:
        notes.append(f"{model_file.name}: {', '.join(unknown)} beside it do(es) not say which model was "
                     "evaluated, and other model files share the folder; left out")
    return mine
