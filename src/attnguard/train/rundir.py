"""Run directories: naming, the resolved config, and refusing to overwrite finished work."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from ..io import atomic_write_text
from .config import RunConfig, dump_config


def slug(text: str) -> str:
    text = text.rstrip("/").split("/")[-1] if ":" in text else text
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "run"


def default_run_dir(cfg: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = cfg.data.name
    if ":" in data:
        kind, _, path = data.partition(":")
        data = f"{kind}-{slug(path)}"
    return Path("runs") / f"{stamp}-{slug(data)}-{slug(cfg.model.name)}-{slug(cfg.defense.preset)}"


def prepare_run_dir(cfg: RunConfig, resume: bool, is_main: bool) -> Path:
    """Create (or, with ``resume``, reopen) the run directory and write config.yaml."""
    run = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    ckpt = run / "checkpoints" / "last.pt"
    if resume:
        if not ckpt.is_file():
            raise ConfigError(f"--resume: {run} has no checkpoints/last.pt to resume from")
    elif (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("*.pt")):
        raise ConfigError(f"{run} already holds a run with checkpoints; pass --resume to continue it, "
                          "or choose another --out")
    if is_main:
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_text(run / "config.yaml", dump_config(cfg))
    return run


def resume_config_file(out: Optional[str]) -> Path:
    if not out:
        raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
    path = Path(out) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume: {out} is not a run directory (no config.yaml)")
    return path
