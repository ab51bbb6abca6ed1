"""Full fp32 for the attacks that judge robustness: no autocast, no TF32, whatever the caller set.

An attack run in bf16/fp16 (an outer ``torch.autocast``) or with TF32 matmuls and convolutions (on by
default for cuDNN convolutions) computes its gradients at ~3 significant digits: the attack gets
weaker and the robust accuracy it reports higher than the fp32 one. The trainer's per-epoch
validation (which picks ``best.pt``) and ``attnguard.evaluate`` therefore run their attacks inside
:func:`full_precision`; training itself keeps its fast path.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch


def _tf32_settings():
    """``(object, attribute, fp32 value)`` of each TF32 switch, in the API this torch has.

    torch >= 2.9 has per-backend ``fp32_precision`` ("ieee" = plain fp32; "none" = follow the legacy
    flags); mixing it with the legacy ``allow_tf32`` flags can raise, so the new API is used where
    it exists and the legacy flags only where it does not.
    """
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        return [(matmul, "fp32_precision", "ieee"), (cudnn.conv, "fp32_precision", "ieee")]
    return [(matmul, "allow_tf32", False), (cudnn, "allow_tf32", False)]


@contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """Inside the block: autocast off for ``device_type`` and TF32 off for CUDA matmuls and cuDNN
    convolutions; the previous settings come back on exit (also on an exception)."""
    settings = _tf32_settings()
    saved = [getattr(obj, name) for obj, name, _ in settings]
    try:
        for obj, name, value in settings:
            setattr(obj, name, value)
        # a device type without autocast support (e.g. meta) has no autocast to turn off
        available = getattr(torch.amp, "is_autocast_available", lambda kind: kind in ("cpu", "cuda"))
        with torch.autocast(device_type, enabled=False) if available(device_type) else nullcontext():
            yield
    finally:
        for (obj, name, _), value in zip(settings, saved):
            setattr(obj, name, value)
