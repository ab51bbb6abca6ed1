"""Matplotlib plumbing shared by the galleries and plots.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas directly, so
nothing here touches pyplot's global state or the user's backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CAM_CMAP = "jet"  # one colormap for every attention overlay
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
}


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def styled(fn):
    """Run a figure builder under the shared rc style (restored afterwards)."""
    import functools

    import matplotlib

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def save_png(fig: Figure, out, metadata: Optional[Dict[str, str]] = None, tight: bool = True) -> Path:
    """Write ``fig`` as PNG (parent folders created) and return the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"Software": "attnguard"}
    meta.update(metadata or {})
    fig.savefig(out, format="png", metadata=meta, bbox_inches="tight" if tight else None,
                pad_inches=0.15 if tight else 0.1, facecolor="white")
    return out


def class_color(idx: int) -> str:
    return PALETTE[idx % len(PALETTE)]
