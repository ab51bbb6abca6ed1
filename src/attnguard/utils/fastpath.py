"""Which fast paths a run uses (autocast dtype, channels_last, torch.compile, device-resident data) and why.

``auto`` is decided from facts about the device, never by timing at start-up (a start-up timing on
a shared machine measures the neighbours as much as the code, and would make two runs of one config
differ). The facts and the rules they feed:

* CUDA: bf16 autocast where the GPU computes bf16 natively (compute capability >= 8: A100, H100,
  L4, ...; ``torch.cuda.is_bf16_supported(including_emulation=False)``), else fp16 with a
  GradScaler (V100, T4: bf16 there is emulated or fails). channels_last, device-resident data on.
* CPU: bf16 autocast only where the cores have bf16 instructions (``avx512_bf16`` or ``amx_bf16``
  in /proc/cpuinfo); without them bf16 matmuls and convolutions are converted to fp32 and back, so
  they are slower than fp32 (measured 6x slower on an AVX2 EPYC), not faster. channels_last on
  every CPU: it measured faster on both CPUs measured, an AVX-512-bf16 EPYC (the issue's figures:
  1.38x LeNet, 1.39x resnet9 w0.25, 1.09x preact-resnet18) and an AVX2 EPYC without bf16 (1.15x
  LeNet, 1.01x resnet9 w0.25; docs/PERFORMANCE.md, "CPU fast path").
* MPS: fp32 and the default memory format (nothing measured there).

torch.compile stays opt-in (``auto`` compiles on CUDA only); whether it can serve a preset at all
is the trainer's question (it needs no double backward), not this module's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Iterable, Optional

import torch

# x86 flags (as /proc/cpuinfo spells them) of native bf16 arithmetic: AVX512-BF16 dot products
# (Cooper Lake, Zen 4 and later) and AMX tiles (Sapphire Rapids and later).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> FrozenSet[str]:
    """The CPU's feature flags from /proc/cpuinfo's first ``flags`` line (empty where there is none)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86 / arm64 spellings
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16_flag(flags: Iterable[str]) -> Optional[str]:
    """The first flag of :data:`BF16_FLAGS` the CPU has, or None."""
    flags = set(flags)
    return next((f for f in BF16_FLAGS if f in flags), None)


def cuda_has_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (emulated bf16, as on V100 or T4, counts as no)."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


@dataclass(frozen=True)
class Choice:
    """One switch's value and the reason, e.g. ``Choice(torch.bfloat16, "auto: cpu has avx512_bf16")``."""

    value: object
    why: str


def amp_choice(mode: str, device_type: str, *, flags: Optional[Iterable[str]] = None,
               cuda_bf16: Optional[Callable[[], bool]] = None) -> Choice:
    """The autocast dtype (None: fp32) for ``train.amp`` = ``mode`` on a ``device_type`` device.

    ``flags``: the CPU's flags (default: :func:`cpu_flags`); ``cuda_bf16``: a callable answering
    whether the CUDA device has native bf16 (called only for ``auto`` on CUDA). Both are parameters
    so that the rule can be tested with fakes.
    """
    if mode == "off":
        return Choice(None, "off")
    if mode in ("bf16", "fp16"):
        return Choice(torch.bfloat16 if mode == "bf16" else torch.float16, f"{mode}: set in the config")
    if device_type == "cuda":
        if cuda_bf16 is None or cuda_bf16():
            return Choice(torch.bfloat16, "auto: cuda device has native bf16")
        return Choice(torch.float16, "auto: cuda device lacks native bf16 (e.g. V100, T4): fp16 with GradScaler")
    if device_type == "cpu":
        flag = native_bf16_flag(cpu_flags() if flags is None else flags)
        if flag:
            return Choice(torch.bfloat16, f"auto: cpu has {flag}")
        return Choice(None, f"auto: cpu lacks {' and '.join(BF16_FLAGS)} (bf16 would be emulated): fp32")
    return Choice(None, f"auto: fp32 on {device_type}")


def channels_last_choice(mode: str, device_type: str) -> Choice:
    """Whether to keep the model and inputs in channels_last memory format (see the module docstring)."""
    if mode in ("on", "off"):
        return Choice(mode == "on", f"{mode}: set in the config")
    if device_type == "cuda":
        return Choice(True, "auto: on for cuda")
    if device_type == "cpu":
        return Choice(True, "auto: on for cpu (measured faster with and without avx512_bf16)")
    return Choice(False, f"auto: off on {device_type}")


def cuda_only_choice(name: str, mode: str, device_type: str) -> Choice:
    """``compile`` and ``gpu_resident``: ``auto`` means on for CUDA only."""
    if mode in ("on", "off"):
        return Choice(mode == "on", f"{mode}: set in the config")
    on = device_type == "cuda"
    return Choice(on, f"auto: {'on' if on else 'off'} for {device_type}")


def describe(choices: Dict[str, Choice]) -> dict:
    """``{switch: {"used": ..., "why": ...}}`` for train.json (dtypes as "bf16"/"fp16", None as "off")."""
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}
    out = {}
    for k, c in choices.items():
        used = names.get(c.value, c.value) if not isinstance(c.value, bool) else c.value
        out[k] = {"used": used, "why": c.why}
    return out
