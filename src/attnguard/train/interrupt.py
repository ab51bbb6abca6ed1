"""Ctrl-C during training: noted by a signal handler, acted on by the trainer at the next step boundary.

A KeyboardInterrupt raised inside a step could land between the optimizer and the scheduler step,
so the state would not be one a resume can continue bitwise. Instead the first SIGINT only sets a
flag; the loop saves ``last.pt`` after the step in flight and stops. A second SIGINT stops at once.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from pathlib import Path


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training at a step boundary; the message says what was saved and how to resume."""


class SigintFlag:
    """``bool(flag)``: whether Ctrl-C was pressed while :meth:`catching` was active."""

    def __init__(self):
        self.set = False

    def __bool__(self) -> bool:
        return self.set

    @contextlib.contextmanager
    def catching(self):
        self.set = False
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return

        def handler(signum, frame):
            if self.set:
                raise KeyboardInterrupt
            self.set = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def resume_command(run: Path) -> str:
    return f"attnguard train --out {shlex.quote(str(run))} --resume"
