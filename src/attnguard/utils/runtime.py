"""Device selection, seeding and distributed (torchrun) setup."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import AttnGuardError, ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu. An explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = name.split(":")[0]
    if base not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)} (cuda:N allowed), got {name!r}")
    if base == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is available; use --device cpu or auto")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' requested but MPS is not available; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _cuda_device(device) -> torch.device:
    """The CUDA device whose generator a run uses: ``device`` when it is a CUDA device (``cuda:1``
    is not the current device unless someone made it so), else the current one."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and dev.index is not None:
        return dev
    return torch.device("cuda", torch.cuda.current_device())


def rng_state(device=None) -> dict:
    """All RNG states as tensors/ints, so checkpoints load with ``weights_only=True``.

    ``device``: the run's device; on CUDA its generator is the one saved (not the current device's).
    """
    state = {
        "torch": torch.get_rng_state(),
        "python": _py_state_to_list(random.getstate()),
        "numpy": _np_state_to_dict(np.random.get_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this run's device only: reading every device's state would open a context on each GPU
        state["cuda"] = torch.cuda.get_rng_state(_cuda_device(device))
    return state


def set_rng_state(state: dict, device=None) -> None:
    """Restore :func:`rng_state`'s states; the CUDA one goes to ``device``'s generator (see there)."""
    torch.set_rng_state(state["torch"])
    random.setstate(_py_state_from_list(state["python"]))
    np.random.set_state(_np_state_from_dict(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        if isinstance(state["cuda"], (list, tuple)):  # older checkpoints: one state per device
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            torch.cuda.set_rng_state(state["cuda"], _cuda_device(device))


def _py_state_to_list(s):
    version, internal, gauss = s
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def _py_state_from_list(s):
    version, internal, gauss = s
    return (version, tuple(int(v) for v in internal.tolist()), gauss)


def _np_state_to_dict(s):
    name, keys, pos, has_gauss, cached = s
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _np_state_from_dict(d):
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


@dataclass
class Dist:
    """Where this process sits in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_OWNS_GROUP = False  # whether init_distributed created the process group (then shutdown destroys it)


def _env_int(name: str, default: str) -> int:
    raw = os.environ.get(name, default)
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the process group torchrun set up (env RANK/WORLD_SIZE), or run single-process.

    CUDA devices use NCCL with one GPU per process (``LOCAL_RANK``); the CPU uses gloo.
    """
    global _OWNS_GROUP
    world = _env_int("WORLD_SIZE", "1")
    if world <= 1:
        return Dist(), pick_device(device_name)
    import torch.distributed as dist

    rank = _env_int("RANK", "0")
    local = _env_int("LOCAL_RANK", str(rank))
    if not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} is outside WORLD_SIZE {world}")
    device = pick_device(device_name)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) on this "
                              "node; use --nproc-per-node <= the number of GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type == "mps":
        raise ConfigError("distributed training needs CUDA (nccl) or the CPU (gloo), not mps")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        _OWNS_GROUP = True
    return Dist(rank, world, local), device


def shutdown_distributed() -> None:
    """Destroy the process group if :func:`init_distributed` created it (a no-op otherwise)."""
    global _OWNS_GROUP
    if not _OWNS_GROUP:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _OWNS_GROUP = False


def broadcast_object(obj, d: Dist):
    """Rank 0's ``obj`` on every rank (``obj`` itself when single-process)."""
    if not d.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj, d: Dist) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` single-process)."""
    if not d.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


class ReplicaError(AttnGuardError):
    """An error raised on rank 0, re-raised on the other ranks (the CLI prints it on rank 0 only)."""


def on_main(fn, d: Dist):
    """Run ``fn()`` on rank 0 only and return its result on every rank.

    If ``fn`` raises on rank 0, rank 0 re-raises it and every other rank raises a
    :class:`ReplicaError` with the same message, instead of waiting forever at the next collective.
    """
    if not d.enabled:
        return fn()
    result, failure, error = None, None, None
    if d.is_main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below on every rank
            error = e
            failure = str(e) if isinstance(e, AttnGuardError) else f"{type(e).__name__} on rank 0: {e}"
    result, failure = broadcast_object((result, failure), d)
    if error is not None:
        raise error
    if failure is not None:
        raise ReplicaError(failure)
    return result
