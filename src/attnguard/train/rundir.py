"""Run directories, the write side: naming, the resolved config, and refusing to overwrite finished work.

Reading a run (config, checkpoints, evaluations) is :class:`attnguard.rundir.RunDir`; the file
names are its constants, so writer and reader agree. The write side stays here because it needs
the typed :class:`RunConfig`, which the readers (eval, report, ...) must not depend on.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from ..io import atomic_write_text, read_json
from ..rundir import CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, TRAIN_INFO_FILE
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


def check_run_dir(run: Path, resume: bool) -> None:
    """Refuse to start over a run with checkpoints (without ``resume``), or to resume one without."""
    ckpt = run / CHECKPOINT_DIR / "last.pt"
    if run.exists() and not run.is_dir():
        raise ConfigError(f"--out {run} is a file, not a run directory")
    if resume:
        # a run killed before its first checkpoint has config.yaml only: it starts from step 0
        if not ckpt.is_file() and not (run / CONFIG_FILE).is_file():
            raise ConfigError(f"--resume: {run} has no {CHECKPOINT_DIR}/last.pt to resume from")
    elif (run / CHECKPOINT_DIR).is_dir() and any((run / CHECKPOINT_DIR).glob("*.pt")):
        raise ConfigError(f"{run} already holds a run with checkpoints; pass --resume to continue it, "
                          "or choose another --out")


def open_run_dir(run: Path, cfg: RunConfig, resume: bool) -> None:
    """Create the run directory, write config.yaml, and remove what a killed run left behind.

    Called on rank 0 only, after everything that can fail on bad input has been checked, so a
    refused invocation changes no file. A fresh run starts an empty ``metrics.jsonl`` (a run
    killed before its first checkpoint may have left lines); a resumed run truncates it itself.
    """
    (run / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    for tmp in (run / CHECKPOINT_DIR).glob(".*.tmp"):  # torn atomic writes of a SIGKILLed run
        tmp.unlink(missing_ok=True)
    if not resume:
        (run / METRICS_FILE).unlink(missing_ok=True)
    atomic_write_text(run / CONFIG_FILE, dump_config(cfg))


def prepare_run_dir(cfg: RunConfig, resume: bool, is_main: bool) -> Path:
    """Check and open the run directory in one go (single-process use)."""
    run = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    check_run_dir(run, resume)
    if is_main:
        open_run_dir(run, cfg, resume)
    return run


def resume_config_file(out: Optional[str]) -> Path:
    if not out:
        raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"--resume: {out} is not a run directory (no {CONFIG_FILE})")
    return path


# Keys a resume may change: they do not change what is trained (progress bar, metric-line spacing,
# where it runs, when checkpoints are written, the final evaluation, the directory's spelling).
RESUME_MAY_CHANGE = ("out", "train.progress", "train.log_every", "train.device", "train.checkpoint_every",
                     "train.checkpoint_minutes", "eval.")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_conflicts(saved: RunConfig, wanted: RunConfig) -> list:
    """The config keys whose value ``wanted`` (the saved config plus this resume's flags) changes."""
    a, b = _flat(saved.to_dict()), _flat(wanted.to_dict())
    allowed = lambda k: any(k == p or (p.endswith(".") and k.startswith(p)) for p in RESUME_MAY_CHANGE)  # noqa: E731
    return sorted(k for k in set(a) | set(b) if not allowed(k) and a.get(k) != b.get(k))


def finished_checkpoint(run: Path, cfg: RunConfig) -> Optional[dict]:
    """``last.pt``'s position (epoch, batch, step) when it is the end of training, else None.

    Training ends after epoch ``train.epochs``, or at ``train.max_steps`` once that epoch's end
    (validation, best.pt) is done (batch 0): the condition under which the trainer's loop does nothing.
    """
    from ..io import safe_load

    path = run / CHECKPOINT_DIR / "last.pt"
    if not path.is_file():
        return None
    s = safe_load(path, map_location="cpu")
    try:
        pos = {k: int(s[k]) for k in ("epoch", "batch", "step")}
    except (KeyError, TypeError, ValueError):
        return None  # the trainer reports a malformed checkpoint
    t = cfg.train
    if pos["epoch"] >= t.epochs or (pos["batch"] == 0 and t.max_steps and pos["step"] >= t.max_steps):
        return pos
    return None


def mark_complete(run: Path, pos: dict) -> bool:
    """Record in ``train.json`` that training is over, when ``last.pt`` (at ``pos``) is its end but the file
    says otherwise; True when it changed anything.

    The case: a Ctrl-C that lands in the last epoch's validation stops the run after the end-of-training
    checkpoint is saved, with ``train.json`` still ``complete: false``. A resume then has no step left to
    train; without this the run would stay marked unfinished for good. The time already counted is kept.
    """
    path = run / TRAIN_INFO_FILE
    info = read_json(path) or {}
    if info.get("complete") is True:
        return False
    info.update(steps=int(pos["step"]), epochs=int(pos["epoch"]), complete=True)
    if "seconds" not in info:
        info["note"] = "completed by a resume that found last.pt at the end of training; its time was never recorded"
    atomic_write_text(path, json.dumps(info, indent=1) + "\n")
    return True


def write_train_info(run: Path, *, steps: int, epochs: int, world_size: int, seconds: float, resumed: bool,
                     device, fast_path: dict, complete: bool = True, cpu_seconds: float = 0.0) -> None:
    """``train.json``: where and how long this run trained, for the tables that quote it.

    A resumed run adds its own wall clock to the interrupted one's. ``cpu_seconds`` is this process's
    CPU time over the same span (all threads): on a shared machine the wall clock grows with the load,
    the CPU time much less, so a one-thread run's cost stays comparable across machines' load. ``complete`` is False when an
    interrupt wrote it (the time so far is counted; training is not over). ``fast_path`` says what this
    process used and why (a resumed run may differ from the interrupted one).
    """
    from ..utils.machine import describe_machine

    path = run / TRAIN_INFO_FILE
    prior = read_json(path) or {}
    info = {"steps": steps, "epochs": epochs, "complete": complete, "world_size": world_size,
            "seconds": round(prior.get("seconds", 0.0) + seconds, 3),
            "cpu_seconds": round(prior.get("cpu_seconds", 0.0) + cpu_seconds, 3),
            "resumed": bool(resumed or prior.get("resumed")),
            "system": describe_machine(device), "fast_path": fast_path}
    atomic_write_text(path, json.dumps(info, indent=1) + "\n")
