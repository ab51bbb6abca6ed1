"""Checkpoints: atomic writes, safe loads, one checkpoint file to a model, safetensors export.

(``attnguard.load_model`` for a run directory, checkpoint or export is in :mod:`attnguard.rundir`.)

* Writes go to a temporary file in the same directory, are flushed and fsync'd, then renamed
  over the target (``os.replace`` is atomic on POSIX and Windows). A kill at any moment leaves
  either the old file or the new one, never a torn one.
* Reads use ``torch.load(weights_only=True)``: a checkpoint can hold tensors, numbers, strings,
  lists and dicts, and nothing that runs code when unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from .errors import CheckpointError, ConfigError

FORMAT = "attnguard-checkpoint"
PathLike = Union[str, os.PathLike]


def _default_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp would make it owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _default_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _default_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def safe_load(path: PathLike, map_location="cpu") -> Dict[str, Any]:
    """Load an attnguard checkpoint with ``weights_only=True``; every failure is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        text = str(e)
        if "Unsupported global" in text or "GLOBAL " in text:  # a pickle that wants to import a callable
            raise CheckpointError(f"{path} is not a safe checkpoint: it holds Python objects that "
                                  "torch.load(weights_only=True) refuses to run; it was not loaded") from None
        raise CheckpointError(f"{path} is not a readable checkpoint (empty, truncated or not a torch file): "
                              f"{_load_error_detail(e)}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an attnguard checkpoint (no '{FORMAT}' header)")
    return obj


def _load_error_detail(e: Exception) -> str:
    """The informative part of a torch.load error, on one line (its weights-only preamble dropped)."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
        text = text.split("Check the documentation", 1)[0]
    text = " ".join(text.split())
    return (text or type(e).__name__)[:200]


def load_checkpoint_model(path: PathLike, device: Union[str, torch.device] = "cpu"):
    """The model stored in one attnguard checkpoint file (its ``model_config`` and ``model`` weights)."""
    from .models import model_from_config

    ckpt = safe_load(path)
    try:
        model = model_from_config(ckpt["model_config"])
        model.load_state_dict(ckpt["model"])
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} does not match its model config: {str(e).splitlines()[0][:200]}") from None
    return model.to(device).eval()


SAFETENSORS_SUFFIX = ".safetensors"


def weights_fingerprint(model) -> str:
    """sha256 (first 16 hex digits) of the model's state dict, names and values in order: which weights an
    evaluation file measured, so that files of two checkpoints are never merged into one row."""
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_export_path(path: PathLike) -> Path:
    """``path`` if it ends in ``.safetensors``, else a :class:`ConfigError` (an export named ``m.pt`` would
    pass for a checkpoint, which it is not)."""
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        raise ConfigError(f"an export is a safetensors file; name it *{SAFETENSORS_SUFFIX}, not {path.name!r}")
    return path


def export_safetensors(model, path: PathLike, *, dataset: Optional[str] = None, eps: Optional[float] = None,
                       defense: Optional[str] = None, seed: Optional[int] = None) -> None:
    """Write the weights as safetensors; model name, classes and normalization go in the metadata.

    ``dataset`` and ``eps`` (the run's ``data.name`` and evaluation radius), when given, are recorded
    too, so that ``attnguard eval FILE.safetensors`` needs no ``--dataset`` / ``--eps``; so are
    ``defense`` (the run's ``defense.preset``) and ``seed``, so that reports and studies label an export
    as they label its run (e.g. a gray-box pair of two exports is told apart by its seeds).
    """
    from safetensors.torch import save

    path = check_export_path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    cfg = model.config
    # model_config rebuilds the model; the flat keys let other tools read the essentials (strings only)
    meta = {"format": FORMAT, "model_config": json.dumps(cfg), "model": str(cfg.get("arch", "")),
            "num_classes": str(cfg.get("num_classes", "")), "input_size": json.dumps(cfg.get("input_size")),
            "mean": json.dumps(cfg.get("mean")), "std": json.dumps(cfg.get("std"))}
    if dataset:
        meta["dataset"] = str(dataset)
    if eps is not None:
        meta["eps"] = repr(float(eps))  # repr round-trips the float exactly
    if defense:
        meta["defense"] = str(defense)
    if seed is not None:
        meta["seed"] = str(int(seed))
    atomic_write_bytes(path, save(tensors, metadata=meta))


def safetensors_metadata(path: PathLike) -> Dict[str, str]:
    """The metadata strings of a safetensors file (the tensors are not read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def load_safetensors(path: PathLike, device="cpu"):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .models import model_from_config

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
        config = json.loads(meta["model_config"])
    except Exception as e:
        raise CheckpointError(f"{path} is not an attnguard safetensors export: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    model = model_from_config(config)
    try:
        model.load_state_dict(state)
    except Exception as e:
        raise CheckpointError(f"{path}: weights do not match the model in its metadata: {str(e).splitlines()[0][:200]}") from None
    return model.to(device).eval()


def read_json(path: PathLike) -> Optional[dict]:
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text())
