"""Honest robustness evaluation: clean, per-attack and per-example worst-case accuracy, plus sanity checks.

``evaluate(model, images, labels, attacks, eps, sanity=False)`` -> dict (schema in
:func:`~attnguard.evaluation.core.evaluate`); ``write_eval`` writes ``eval.json`` / ``eval.md``;
``format_table`` renders it for the terminal; ``run_eval`` is the CLI entry point.

Modules: ``blocks`` (input checks, attack resolution, per-example correctness), ``sanity`` (the
Carlini et al. 2019 checks, built from the blocks), ``core`` (``evaluate``), ``results`` (the
eval.json/eval.md files and the terminal table), ``run`` (``attnguard eval`` on a run directory).
"""

from ..utils.modes import eval_mode
from .blocks import PerExample, attack_correct, check_inputs
from .core import evaluate
from .results import format_table, to_markdown, validate_result, write_eval
from .run import load_test_examples, run_eval
from .sanity import run_sanity, zero_gradient_mask

__all__ = ["evaluate", "PerExample", "attack_correct", "check_inputs", "eval_mode", "write_eval", "format_table",
           "to_markdown", "validate_result", "run_eval", "load_test_examples", "run_sanity",
           "zero_gradient_mask"]
