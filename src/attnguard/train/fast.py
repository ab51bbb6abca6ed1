"""The trainer's fast-path decisions: which switches a run uses (:func:`fast_path`), whether
torch.compile can serve its objective (:func:`compile_blocker`), and the adversary crafting through
the compiled model (:func:`craft_through`). The device rules themselves are in
:mod:`attnguard.utils.fastpath`."""

from __future__ import annotations

from typing import Optional

import torch

from ..utils.fastpath import Choice, amp_choice, channels_last_choice, cuda_has_bf16, cuda_only_choice
from .config import RunConfig


def fast_path(cfg: RunConfig, device: torch.device) -> dict:
    """``{"amp", "channels_last", "compile", "gpu_resident"}`` -> :class:`Choice` (value and reason) for
    this run's config on ``device`` (``auto`` from the device's capabilities: attnguard.utils.fastpath)."""
    t, kind = cfg.train, device.type
    resident = (Choice(True, "cpu: the data is in host memory") if kind == "cpu"
                else cuda_only_choice("gpu_resident", t.gpu_resident, kind))
    return {"amp": amp_choice(t.amp, kind, cuda_bf16=lambda: cuda_has_bf16(device)),
            "channels_last": channels_last_choice(t.channels_last, kind),
            "compile": cuda_only_choice("compile", t.compile, kind),
            "gpu_resident": resident}


def compile_blocker(objective, inner) -> Optional[str]:
    """Why torch.compile cannot run ``objective`` on ``inner`` (None when it can).

    A regularizer that reads the Grad-CAM (AAD, AFM) differentiates the logits with respect to the
    attention layer's output and trains through that gradient (``create_graph=True``) unless the
    closed form applies (the layer feeds only GAP + a linear classifier; attention/gradcam.py).
    torch.compile supports neither: the captured activation is an output of the compiled graph,
    not an input of the logits ("differentiated Tensor ... appears to not have been used in the
    graph"), and double backward through a compiled graph is unsupported.
    """
    from ..attention import closed_form_classifier

    cam_readers = [r.name for r in objective.regularizers if _reads_cam(r)]
    if not cam_readers or closed_form_classifier(inner, None) is not None:
        return None
    return (f"{'+'.join(cam_readers)} on {getattr(inner, 'arch', type(inner).__name__)} needs a double backward "
            "through the Grad-CAM (no closed form for its attention layer), which torch.compile does not support")


def _reads_cam(regularizer) -> bool:
    """Whether a regularizer reads the context's Grad-CAM: each declares it (``Regularizer.reads_cam``)."""
    return bool(getattr(regularizer, "reads_cam", False))


def craft_through(base, crafter) -> None:
    """Make ``base``'s adversary craft through ``crafter`` (the compiled plain model) instead of the
    plain model the objective passes (``unwrap(model)``): the attack is ~10 of a step's ~23
    forward-equivalents. ``crafter`` is never the DDP wrapper, so DDP still sees one forward per
    backward."""
    craft = base.craft

    def craft_compiled(_inner, x, y):
        return craft(crafter, x, y)

    base.craft = craft_compiled
