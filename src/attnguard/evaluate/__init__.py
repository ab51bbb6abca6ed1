"""Honest robustness evaluation: clean, per-attack and per-example worst-case accuracy, plus sanity checks.

``evaluate(model, images, labels, attacks, eps, sanity=False)`` -> dict (schema in
:func:`~attnguard.evaluate.core.evaluate`); ``write_eval`` writes ``eval.json`` / ``eval.md``;
``format_table`` renders it for the terminal; ``run_eval`` is the CLI entry point.
"""

from .core import PerExample, attack_correct, check_inputs, eval_mode, evaluate
from .report import format_table, to_markdown, validate_result, write_eval
from .run import load_test_examples, run_config, run_eval
from .sanity import run_sanity, zero_gradient_mask

__all__ = ["evaluate", "PerExample", "attack_correct", "check_inputs", "eval_mode", "write_eval", "format_table",
           "to_markdown", "validate_result", "run_eval", "run_config", "load_test_examples", "run_sanity",
           "zero_gradient_mask"]


class _CallableModule(type(__import__("sys"))):
    """``attnguard.evaluate(model, ...)`` calls :func:`evaluate`; the subpackage stays importable."""

    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
