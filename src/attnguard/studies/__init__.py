"""The papers' studies: each one a command that writes a readable figure (PNG) and its numbers (JSON).

``attnguard study NAME RUN [RUN ...]`` runs the study registered as NAME (``attnguard list studies``)
and writes ``NAME.png`` and ``NAME.json`` into ``--out`` (default: ``RUN/studies/`` of the first run).
The run's HTML report shows every study it finds there. A new study is one module here plus one
``STUDIES.add`` line in it, imported by :mod:`attnguard.studies.catalog`.
"""

from .registry import STUDIES, StudyContext
from .runner import run_study

__all__ = ["STUDIES", "StudyContext", "run_study"]
