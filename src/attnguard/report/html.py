"""Small HTML builders. Every piece of text goes through :func:`esc`; nothing else is trusted."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union


def esc(value) -> str:
    """Escape any value for HTML text and attribute context."""
    return html.escape("" if value is None else str(value), quote=True)


def tag(name: str, body: str = "", **attrs) -> str:
    """``<name attrs>body</name>``; attribute values are escaped, ``body`` is already HTML."""
    parts = [name]
    for key, val in attrs.items():
        if val is None or val is False:
            continue
        key = key.rstrip("_").replace("_", "-")
        parts.append(key if val is True else f'{key}="{esc(val)}"')
    return f"<{' '.join(parts)}>{body}</{name}>"


def pct(value, digits: int = 1) -> str:
    """A fraction in [0, 1] as an escaped percentage ("-" for missing values)."""
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "&ndash;"
    return esc(f"{100 * value:.{digits}f}%")


def eps_text(value) -> str:
    """A radius as text: ``8/255 (0.0314)`` when it is a whole number of 1/255 steps, else 4 significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return esc(value) if value is not None else "&ndash;"
    k = value * 255
    if value > 0 and abs(k - round(k)) < 1e-6 and round(k) < 255:
        return esc(f"{round(k)}/255 ({value:.4g})")
    return esc(f"{value:.4g}")


def num(value, digits: int = 3) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "&ndash;"
    if isinstance(value, int) and not isinstance(value, bool):
        return esc(str(value))
    return esc(f"{value:.{digits}f}")


def data_uri(png: Union[bytes, str, Path]) -> str:
    """A ``data:image/png;base64,...`` URI from PNG bytes or a PNG file."""
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(png, alt: str, caption: Optional[str] = None, cls: str = "figure") -> str:
    img = f'<img src="{data_uri(png)}" alt="{esc(alt)}" loading="lazy">'
    cap = tag("figcaption", esc(caption)) if caption else ""
    return tag("figure", img + cap, class_=cls)


def table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "data", caption: Optional[str] = None,
          first_col_header: bool = True) -> str:
    """A table; ``header`` entries are text (escaped), ``rows`` cells are HTML already."""
    head = "".join(tag("th", esc(h), scope="col") for h in header)
    body = []
    for row in rows:
        cells = []
        for j, cell in enumerate(row):
            cells.append(tag("th", cell, scope="row") if j == 0 and first_col_header else tag("td", cell))
        body.append(tag("tr", "".join(cells)))
    inner = tag("thead", tag("tr", head)) + tag("tbody", "".join(body))
    cap = tag("p", esc(caption), class_="cap") if caption else ""  # a <caption> would wrap at the table's width
    return tag("div", cap + tag("div", tag("table", inner, class_=cls), class_="table-wrap"), class_="tbl")


BADGES = {"pass": "ok", "ok": "ok", "warn": "warn", "warning": "warn", "fail": "bad", "error": "bad",
          "skip": "muted", "skipped": "muted"}


def badge(status: str) -> str:
    status = str(status or "unknown").lower()
    return tag("span", esc(status), class_=f"badge {BADGES.get(status, 'muted')}")


def note(text: str, cls: str = "note") -> str:
    return tag("p", esc(text), class_=cls)


def details(summary: str, body: str, open_: bool = False) -> str:
    return tag("details", tag("summary", esc(summary)) + body, open=open_)
