"""The one helper that saves and restores a model's train/eval flags.

Attacks, the in-training adversary, the evaluation and the analyses all switch a model's mode for
a while and must hand it back as they found it: every module's own flag, not just the top one
(a caller may have frozen BatchNorm layers in eval mode inside a model in train mode).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

from torch import nn


@contextmanager
def kept_modes(model: nn.Module, mode: Optional[bool] = None) -> Iterator[nn.Module]:
    """Restore every module's ``training`` flag on exit; with ``mode`` set, switch the model to it first.

    ``kept_modes(m, False)`` is "eval mode inside the block"; ``kept_modes(m)`` only guarantees the
    flags come back, whatever the block does.
    """
    modes = [(m, m.training) for m in model.modules()]
    if mode is not None:
        model.train(mode)
    try:
        yield model
    finally:
        for m, flag in modes:
            m.training = flag


def eval_mode(model: nn.Module):
    """The whole model in eval mode inside the block (BatchNorm running statistics, no dropout)."""
    return kept_modes(model, False)
