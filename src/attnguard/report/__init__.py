"""Self-contained HTML reports of runs: :func:`build_report`."""

from .build import build_report

__all__ = ["build_report"]
