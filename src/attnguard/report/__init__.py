"""Self-contained HTML reports of runs: :func:`build_report`.

``build_report`` is imported on first use (PEP 562), so that ``attnguard.cli`` can import this package's
argument parser (``report/cli.py``) without loading torch, which ``report/build.py`` needs.
"""

__all__ = ["build_report"]


def __getattr__(name):
    if name == "build_report":
        from .build import build_report

        return build_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
