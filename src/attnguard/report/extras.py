"""HTML sections for what other commands leave in a run folder: studies and sweeps.

* ``attnguard study NAME RUN`` writes ``RUN/studies/NAME.png`` and ``NAME.json`` (study, paper, runs,
  options, date, png, numbers): each study is shown as its figure, with a caption from the JSON.
* ``attnguard sweep`` writes ``DIR/sweep.md`` (the ``report --markdown`` table), ``sweep.png`` and
  ``sweep.json``: the table and the figure are shown.

Both are read as they are; a file that cannot be read becomes a note, never an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Tuple

from .html import esc, figure, note, tag

STUDIES_DIR = "studies"  # the folder name attnguard.studies writes into (its STUDIES_DIR)
SWEEP_FILES = ("sweep.md", "sweep.png")


def read_studies(run: Path, notes: List[str]) -> List[Tuple[dict, Optional[Path]]]:
    """``[(record, png or None)]`` of every ``RUN/studies/*.json`` with a ``study`` key, by name."""
    folder = Path(run) / STUDIES_DIR
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            notes.append(f"study file {path.name} could not be read ({e})")
            continue
        if not isinstance(record, dict) or "study" not in record:
            continue  # another JSON file in the folder, not a study's record
        png = folder / str(record.get("png") or f"{path.stem}.png")
        if not png.is_file() or png.suffix.lower() != ".png":
            notes.append(f"study {record['study']}: its figure {png.name} is missing")
            png = None
        out.append((record, png))
    return out


def study_caption(record: dict) -> str:
    """``NAME (paper figure); options: k=v, ...; runs: a, b; date`` from a study's JSON."""
    parts = [str(record.get("study"))]
    if record.get("paper"):
        parts[0] += f" ({record['paper']})"
    options = record.get("options") or {}
    if isinstance(options, dict) and options:
        parts.append("options: " + ", ".join(f"{k}={v}" for k, v in options.items()))
    runs = record.get("runs") or []
    if isinstance(runs, list) and runs:
        parts.append("runs: " + ", ".join(Path(str(r)).name or str(r) for r in runs))
    if record.get("date"):
        parts.append(str(record["date"]))
    return "; ".join(parts)


def studies_section(run: Path, run_name: str, notes: List[str]) -> str:
    """An ``<h3>Studies</h3>`` section with each study's figure and caption; "" when the run has none."""
    studies = read_studies(run, notes)
    if not studies:
        return ""
    items = []
    for record, png in studies:
        caption = study_caption(record)
        items.append(figure(png, f"study {record['study']} of {run_name}", caption) if png
                     else note(f"{caption} (no figure)"))
    return tag("h3", "Studies") + tag("div", "".join(items), class_="plots")


def is_sweep(folder: Path) -> bool:
    return any((Path(folder) / f).is_file() for f in SWEEP_FILES)


def markdown_table(text: str) -> str:
    """The pipe tables of a markdown text as HTML tables (escaped), its other lines as notes."""
    out, rows = [], []

    def flush():
        if rows:
            head, body = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
            html = tag("thead", tag("tr", "".join(tag("th", esc(c), scope="col") for c in head)))
            html += tag("tbody", "".join(tag("tr", "".join(tag("td", esc(c)) for c in r)) for r in body))
            out.append(tag("div", tag("table", html, class_="data"), class_="table-wrap"))
            rows.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.strip() and not line.startswith("#"):
            out.append(note(line.strip()))
    flush()
    return "".join(out)


def sweep_section(folder: Path, name: str, notes: List[str]) -> str:
    """An ``<h3>Sweep</h3>`` section with sweep.md as a table and sweep.png; "" for a folder without them."""
    folder = Path(folder)
    if not is_sweep(folder):
        return ""
    parts = [tag("h3", "Sweep")]
    md = folder / "sweep.md"
    if md.is_file():
        try:
            parts.append(markdown_table(md.read_text(encoding="utf-8")))
        except OSError as e:
            notes.append(f"sweep.md could not be read ({e})")
    png = folder / "sweep.png"
    parts.append(figure(png, f"sweep of {name}", "sweep.png: accuracy against each swept key (mean ± std over seeds)")
                 if png.is_file() else note("No sweep.png (no run of the sweep is evaluated yet)."))
    return "".join(parts)
