"""The study registry and the context a study runs in.

A study is ``fn(ctx: StudyContext) -> dict``: it reads ``ctx.runs``, writes ``ctx.png`` (and any
further files under ``ctx.out_dir``), and returns the numbers behind the figure as JSON-able data.
Each study module registers itself here; :mod:`attnguard.studies.runner` runs them. The two are
apart so that the study modules import this one and nothing imports them back (no import circle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from ..registry import Registry

STUDIES = Registry("study")

STUDIES_DIR = "studies"  # inside a run directory: where a study's default output goes


@dataclass
class StudyContext:
    name: str
    runs: List[str]
    out_dir: Path
    options: Dict[str, Any] = field(default_factory=dict)
    device: str = "auto"

    @property
    def png(self) -> Path:
        return self.out_dir / f"{self.name}.png"

    @property
    def json(self) -> Path:
        return self.out_dir / f"{self.name}.json"
