"""Running a sweep: what each run still needs (the plan), its commands, and the pool of child processes.

Every run is trained by its own ``python -m attnguard train`` process, so a crash in one run does not
stop the others and each run directory is an ordinary, resumable run. What a run still needs is read
from its directory, never from memory of an earlier invocation: ``train.json`` saying complete (and the
evaluation files asked for) means done; a checkpoint or a config.yaml without completion means resume;
anything else trains from scratch. A complete run whose checkpoints were deleted to save space (its
results kept as small files: config.yaml, train.json, eval*.json, e.g. copied back from a cluster) is
done too, "checkpoints pruned": an evaluation it lacks cannot be made without the model, so it is
reported as not possible, never attempted and never a reason to train the run again.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import ConfigError
from ..evaluation.run import eval_file_name  # the one source of the name (re-exported here)
from .grid import Run

STATES = ("done", "pruned", "resume", "evaluate", "train")
STATE_WORDS = {"done": "done", "pruned": "done, checkpoints pruned", "resume": "to resume",
               "evaluate": "to evaluate", "train": "to train"}
LOG_DIR = "logs"


@dataclass
class Job:
    """A run and the commands (argv after ``attnguard``) that bring it to done, in order."""

    run: Run
    path: Path
    state: str
    steps: List[List[str]] = field(default_factory=list)
    impossible: List[str] = field(default_factory=list)  # evaluations wanted but without a model to run on


def default_threads(jobs: int) -> int:
    """Cores this process may use, shared by ``jobs`` children (at least 1 each)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, cores // jobs)


@dataclass
class Settings:
    """What every run of one sweep shares."""

    out: Path  # the sweep folder (absolute)
    train_args: List[str]  # train flags passed through (--config made absolute), without --seed/--out
    base_overrides: dict  # the same flags as a nested override dict
    config: Optional[str]  # --config as given (a packaged name or an absolute path)
    no_eval: bool = False
    eval_attacks: Optional[List[str]] = None
    eval_n: Optional[int] = None  # default: each run's eval.n_examples
    device: Optional[str] = None


def _resolve(settings: Settings, run: Run, path: Path):
    from ..train.config import resolve_config, set_path
    from .grid import _merge_into

    overrides = _deep_copy(settings.base_overrides)
    _merge_into(overrides, _deep_copy(run.overrides))
    set_path(overrides, "seed", run.seed)
    set_path(overrides, "out", str(path))
    return resolve_config(settings.config, overrides)


def _deep_copy(d: dict) -> dict:
    import copy

    return copy.deepcopy(d)


def check_grid(settings: Settings, runs: Sequence[Run]) -> Dict[str, object]:
    """Resolve every run's config (unknown keys, bad values and names raise ConfigError) before anything runs."""
    from ..train.validate import check_names

    configs = {}
    for run in runs:
        path = settings.out / run.name
        try:
            cfg = _resolve(settings, run, path)
            check_names(cfg)
        except ConfigError as e:
            where = ", ".join(f"{k}={v}" for k, v in run.point.items())
            raise type(e)(f"{e} (grid point {where})") from None
        configs[run.name] = cfg
    return configs


def plan(settings: Settings, runs: Sequence[Run], configs: Dict[str, object]) -> List[Job]:
    """What each run still needs, from its directory; a directory trained with other settings is refused."""
    from ..rundir import CHECKPOINT_DIR, CONFIG_FILE, EVAL_FILE, TRAIN_INFO_FILE
    from ..io import read_json
    from ..train.config import resolve_config
    from ..train.rundir import resume_conflicts

    jobs = []
    for run in runs:
        path = settings.out / run.name
        cfg = configs[run.name]
        has_config = (path / CONFIG_FILE).is_file()
        saved = None
        if has_config:
            saved = resolve_config(str(path / CONFIG_FILE))
            diff = resume_conflicts(saved, cfg)
            if diff:
                raise ConfigError(f"{path} holds a run trained with other settings ({', '.join(diff)} differ); "
                                  "sweep into another --out, or remove that run directory")
        info = read_json(path / TRAIN_INFO_FILE) if (path / TRAIN_INFO_FILE).is_file() else None
        complete = bool(info and info.get("complete", True))
        has_last = (path / CHECKPOINT_DIR / "last.pt").is_file()
        # trained to the end, then its checkpoints deleted: evaluable only while best.pt is left
        pruned = complete and not has_last
        evaluable = not pruned or (path / CHECKPOINT_DIR / "best.pt").is_file()
        steps: List[List[str]] = []
        impossible: List[str] = []

        def evaluation(argv: List[str], what: str) -> None:
            (steps if evaluable else impossible).append(argv if evaluable else what)

        if complete:
            state = "pruned" if pruned else "done"
        elif has_config or has_last:
            state = "resume"
            steps.append(_resume_argv(settings, path))
        else:
            state = "train"
            steps.append(_train_argv(settings, run, path))
        ev_cfg = (saved or cfg).eval
        if complete and not settings.no_eval and not (path / EVAL_FILE).is_file():
            # trained, but the final evaluation did not finish: run it as train would have
            evaluation(_final_eval_argv(settings, saved or cfg, path), f"the final evaluation ({EVAL_FILE})")
        if settings.eval_attacks:
            n = settings.eval_n if settings.eval_n is not None else ev_cfg.n_examples
            extra = path / eval_file_name(settings.eval_attacks, n)
            if not extra.is_file():
                evaluation(_extra_eval_argv(settings, run, path, extra, n),
                           f"--eval-attacks {','.join(settings.eval_attacks)} on {n} examples ({extra.name})")
        if complete and steps:
            state = "evaluate"
        jobs.append(Job(run, path, state, steps, impossible))
    return jobs


def plan_line(jobs: Sequence[Job]) -> str:
    """``8 runs: 5 done (2 with checkpoints pruned), 1 to resume, 2 to train`` (to evaluate: only when some are)."""
    counts = {s: sum(j.state == s for j in jobs) for s in STATES}
    pruned = counts.pop("pruned")
    counts["done"] += pruned
    note = f" ({pruned} with checkpoints pruned)" if pruned else ""
    parts = [f"{counts[s]} {STATE_WORDS[s]}" + (note if s == "done" else "")
             for s in counts if counts[s] or s in ("done", "resume", "train")]
    return f"{len(jobs)} runs: " + ", ".join(parts)


def impossible_lines(jobs: Sequence[Job]) -> List[str]:
    """One line per evaluation that a run with pruned checkpoints lacks (not attempted)."""
    from ..rundir import CHECKPOINT_DIR

    return [f"not possible: {job.run.name}: {what}: its checkpoints were pruned (no {CHECKPOINT_DIR}/last.pt "
            "or best.pt); put them back, or remove the run directory to train it again"
            for job in jobs for what in job.impossible]


def _train_argv(settings: Settings, run: Run, path: Path) -> List[str]:
    argv = ["train", *settings.train_args, "--seed", str(run.seed)]
    for s in run.set_args:
        argv += ["--set", s]
    return argv + ["--out", str(path)]


def _resume_argv(settings: Settings, path: Path) -> List[str]:
    # a resume keeps the saved config; only keys that do not change what is trained may be passed
    argv = ["train", "--out", str(path), "--resume"]
    if settings.device:
        argv += ["--device", settings.device]
    if settings.no_eval:
        argv.append("--no-eval")
    return argv


def _final_eval_argv(settings: Settings, cfg, path: Path) -> List[str]:
    from ..rundir import EVAL_FILE

    ev = cfg.eval
    argv = ["eval", str(path), "--attacks", ",".join(ev.attacks), "--n-examples", str(ev.n_examples),
            "--batch-size", str(ev.batch_size), "--seed", str(cfg.seed), "--out", str(path / EVAL_FILE)]
    if ev.eps is not None:
        argv += ["--eps", repr(float(ev.eps))]
    if ev.sanity:
        argv.append("--sanity")
    return argv + ["--device", settings.device or cfg.train.device]


def _extra_eval_argv(settings: Settings, run: Run, path: Path, out: Path, n: int) -> List[str]:
    argv = ["eval", str(path), "--attacks", ",".join(settings.eval_attacks), "--n-examples", str(n),
            "--seed", str(run.seed), "--out", str(out)]
    return argv + (["--device", settings.device] if settings.device else [])


def shell_line(job: Job, threads: int) -> str:
    """One self-contained shell line for a scheduler: thread counts, then each step joined by ``&&``."""
    env = f"OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
    return " && ".join(f"{env} {shlex.join(['attnguard', *argv])}" for argv in job.steps)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the sweep; the message says how to continue."""


class Pool:
    """Up to ``jobs`` child processes at a time; each job's steps run one after the other in its slot.

    Children run in their own process group, so a Ctrl-C at the terminal reaches the sweep only,
    which passes exactly one SIGINT to each child: the trainer then saves ``last.pt`` at the next step
    boundary and exits 130 (a second SIGINT would stop it at once, without that checkpoint).
    """

    def __init__(self, jobs: int, threads: int, log_dir: Path, echo: Callable[[str], None] = print):
        self.jobs, self.log_dir, self.echo = jobs, log_dir, echo
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.failed: List[Job] = []
        self.stopped: List[Job] = []
        self.finished: List[Job] = []

    def _start(self, job: Job, index: int):
        argv = job.steps[index]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{job.run.name}.log", "a")
        log.write(f"\n$ attnguard {shlex.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "attnguard", *argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        self.echo(f"start  {job.run.name}: {argv[0]}{' --resume' if '--resume' in argv else ''}")
        return proc, log

    def run(self, todo: Sequence[Job]) -> None:
        pending = list(todo)
        active: Dict[subprocess.Popen, list] = {}  # proc -> [job, step index, log file, start time]
        try:
            while pending or active:
                while pending and len(active) < self.jobs:
                    job = pending.pop(0)
                    proc, log = self._start(job, 0)
                    active[proc] = [job, 0, log, time.monotonic()]
                for proc in [p for p in active if p.poll() is not None]:
                    job, index, log, started = active.pop(proc)
                    log.close()
                    self._after(proc, job, index, started, active)
                time.sleep(0.1)
        except KeyboardInterrupt:
            self._stop(active, pending)
            raise Interrupted(self._interrupt_message()) from None

    def _after(self, proc, job: Job, index: int, started: float, active: dict) -> None:
        rc = proc.returncode
        if rc == 0 and index + 1 < len(job.steps):
            nxt, log = self._start(job, index + 1)
            active[nxt] = [job, index + 1, log, started]
        elif rc == 0:
            self.finished.append(job)
            self.echo(f"done   {job.run.name} ({time.monotonic() - started:.0f} s)")
        else:
            self.failed.append(job)
            log_file = self.log_dir / f"{job.run.name}.log"
            self.echo(f"FAILED {job.run.name}: attnguard {job.steps[index][0]} exited {rc}; "
                      f"{_last_line(log_file)} (log: {log_file})")

    def _stop(self, active: dict, pending: list) -> None:
        pending.clear()
        for proc in active:
            _signal(proc, signal.SIGINT)
        while active:
            try:
                for proc in list(active):
                    proc.wait()
                    job, _, log, _ = active.pop(proc)
                    log.close()
                    (self.finished if proc.returncode == 0 else self.stopped).append(job)
            except KeyboardInterrupt:  # a second Ctrl-C: the children stop at once, as train does
                for proc in active:
                    _signal(proc, signal.SIGINT)

    def _interrupt_message(self) -> str:
        n = len(self.stopped)
        return (f"interrupted: {n} run{'s' if n != 1 else ''} stopped (their checkpoints are kept); "
                "run the same attnguard sweep command again to continue")


def _signal(proc: subprocess.Popen, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError, AttributeError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _last_line(path: Path) -> str:
    try:
        lines = [l.strip() for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "no log"
    return f"last line: {lines[-1][:200]}" if lines else "no output"
