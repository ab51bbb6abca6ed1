"""One clock and one log for a GPU session, and subprocesses that never outlive their share of it.

A lent GPU runs for minutes, not hours (docs/PERFORMANCE.md, "GPU session"), so every step of
``gpu_session.py`` runs as a child process under a cap taken from one global deadline: a step
that hangs, crashes or imports a missing package costs its cap and nothing more, and the
session still writes its summary. Children get SIGINT first (the attnguard trainer stops
between steps and keeps its last checkpoint), then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence


class SessionError(ValueError):
    """A user-caused error of the session script (bad row list, missing folder): one line, exit status 2."""


class Deadline:
    """Seconds left before the session must stop; ``reserve`` is kept back for packing the results."""

    def __init__(self, seconds: float, reserve: float):
        self.t0 = time.monotonic()
        self.end = self.t0 + seconds
        self.reserve = reserve

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        """Seconds a step may still use (the packing reserve excluded)."""
        return self.end - self.reserve - time.monotonic()

    def cap(self, wanted: float) -> float:
        return max(0.0, min(wanted, self.left()))


class Log:
    """Progress lines on stdout (what the device tool shows) and everything in one file (``session.log``)."""

    def __init__(self, path: Path, deadline: Deadline):
        self.path = path
        self.deadline = deadline
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def say(self, msg: str) -> None:
        line = f"[{self.deadline.elapsed():6.1f}s] {msg}"
        print(line, flush=True)
        self.append(line + "\n")

    def append(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8", errors="replace") as f:
            f.write(text)


@dataclass
class Proc:
    """What one capped child did."""
    rc: Optional[int]  # None: it had to be killed
    seconds: float
    timed_out: bool  # stopped because its cap ran out
    stopped: bool  # stopped because ``stop_when`` said so (a test hook)
    output: str  # stdout and stderr, interleaved as written

    def tail(self, lines: int = 12) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])

    @property
    def status(self) -> str:
        if self.timed_out:
            return "timeout"
        return "ok" if self.rc == 0 else "failed"


def child_env(pythonpath: Sequence[Path], extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment every child gets: our folders first on PYTHONPATH, unbuffered output."""
    env = dict(os.environ)
    parts = [str(p) for p in pythonpath] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_capped(cmd: List[str], *, cap_s: float, log: Log, env: Dict[str, str], cwd: Path, name: str,
               stop_when: Optional[Callable[[], bool]] = None, grace_s: float = 20.0,
               poll_s: float = 0.1) -> Proc:
    """Run ``cmd`` for at most ``cap_s`` seconds (then SIGINT, then SIGKILL after ``grace_s``).

    The child gets its own process group, so a kill reaches the workers it started. Its output goes
    to a file (not a pipe that could fill up) and is appended to the session log afterwards.
    """
    out_path = log.path.with_name(f".{name}.out")
    shown = ["<code>" if "\n" in c else c for c in (cmd[1:] if cmd[0] == sys.executable else cmd)]
    log.say(f"{name}: {' '.join(shown)} (cap {cap_s:.0f} s)")
    t0 = time.monotonic()
    timed_out = stopped = False
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=str(cwd), env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_default_sigint)
        while proc.poll() is None:
            if time.monotonic() - t0 > cap_s:
                timed_out = True
            elif stop_when is not None and stop_when():
                stopped = True
            if timed_out or stopped:
                _stop(proc, grace_s)
                break
            time.sleep(poll_s)
    rc = proc.returncode
    seconds = time.monotonic() - t0
    output = out_path.read_text(encoding="utf-8", errors="replace")
    out_path.unlink(missing_ok=True)
    log.append(f"----- {name} (rc {rc}, {seconds:.1f} s{', cap reached' if timed_out else ''}) -----\n"
               f"{output}\n----- end of {name} -----\n")
    log.say(f"{name}: rc {rc} after {seconds:.1f} s" + (" (cap reached: stopped)" if timed_out else "")
            + (" (stopped by request)" if stopped else ""))
    return Proc(rc=rc, seconds=seconds, timed_out=timed_out, stopped=stopped, output=output)


def _default_sigint() -> None:
    """In the child, before exec: SIGINT back to its default.

    A command started in the background by a non-interactive shell (``cmd &``, as a CI runner or a
    remote executor may start this script) inherits SIGINT *ignored*, and Python then installs no
    KeyboardInterrupt handler: the clean stop below would be ignored and every capped child SIGKILLed.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGINT to the child's group (a clean stop: the trainer keeps its last checkpoint), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
