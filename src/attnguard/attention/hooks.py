"""Capture intermediate activations during a forward pass, without breaking the graph."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Sequence, Union

import torch
from torch import nn

from ..errors import ConfigError

LayerRef = Union[str, nn.Module]


def resolve_layer(model: nn.Module, layer: LayerRef | None) -> nn.Module:
    """A module given as itself or as a dotted name; ``None`` means the model's attention layer."""
    if layer is None:
        name = getattr(model, "attention_layer", None)
        if name is None:
            raise ConfigError("layer is required for models that are not attnguard models "
                             "(attnguard models know their attention layer)")
        layer = name
    if isinstance(layer, nn.Module):
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        shown = ", ".join(names[:30]) + (" ..." if len(names) > 30 else "")
        raise ConfigError(f"model has no layer '{layer}'; its layers: {shown}") from None


@contextmanager
def capture(model: nn.Module, layers: Sequence[LayerRef]) -> Iterator[Dict[int, List[torch.Tensor]]]:
    """Record the outputs of ``layers`` during forward passes inside the ``with`` block.

    Yields a dict ``{position in layers: [output of each forward call]}``. Outputs stay attached
    to the autograd graph, so losses on them reach the parameters.
    """
    store: Dict[int, List[torch.Tensor]] = {i: [] for i in range(len(layers))}
    handles = []
    for i, layer in enumerate(layers):
        module = resolve_layer(model, layer)
        handles.append(module.register_forward_hook(lambda _m, _inp, out, i=i: store[i].append(out)))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def forward_with_activations(model: nn.Module, x: torch.Tensor, layers: Sequence[LayerRef],
                             hooked: nn.Module | None = None):
    """``(logits, [activation of each layer])`` from one forward pass.

    ``hooked`` is the module whose ``layers`` are meant, when ``model`` wraps it (DDP,
    torch.compile); default ``model`` itself.
    """
    with capture(model if hooked is None else hooked, layers) as store:
        logits = model(x)
    acts = []
    for i, layer in enumerate(layers):
        if len(store[i]) != 1:
            raise RuntimeError(f"layer {layer!r} ran {len(store[i])} times in one forward pass; "
                               "attention needs a layer that runs exactly once")
        acts.append(store[i][0])
    return logits, acts
