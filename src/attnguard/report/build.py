"""``build_report``: one self-contained HTML page for one or more run directories.

Everything is inline: the stylesheet, and every figure as a base64 ``data:`` URI. The page has
no scripts, no external resources and no network access. All text from run directories (config
values, attack names, check details) is HTML-escaped.

What each run contributes (missing parts are shown as notes, never as errors):
    config.yaml         -> summary line + the whole file (collapsible)
    metrics.jsonl       -> training curves
    eval*.json          -> the evaluation table (runs side by side; eval.json merged with the run's other
                           eval*.json files, e.g. eval-aa.json) and the sanity checks
    gallery.png         -> embedded; generated (with ``compute_missing``) when absent
    analysis/           -> analysis.json tables and its plots; computed with a small n when absent
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from datetime import datetime
from importlib import resources
from pathlib import Path
from string import Template
from typing import List, Optional, Sequence, Union

from .. import __version__
from ..errors import AttnGuardError, CheckpointError
from .html import details, esc, figure, note, tag
from .sections import analysis_section, config_summary, eval_table, sanity_table

log = logging.getLogger(__name__)
PathLike = Union[str, Path]


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _names(runs: Sequence[Path]) -> List[str]:
    """Directory names; a parent is prefixed where two runs share a name."""
    names = [r.name or str(r) for r in runs]
    for i, r in enumerate(runs):
        if names.count(names[i]) > 1:
            names[i] = f"{r.parent.name}/{r.name}"
    return names


def _read_json(path: Path, what: str, notes: list) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        notes.append(f"{what} is not valid JSON ({e.msg} at line {e.lineno}); it was left out")
        return None
    if not isinstance(data, dict):
        notes.append(f"{what} does not hold a JSON object; it was left out")
        return None
    return data


class _Run:
    """Everything the page shows for one run directory."""

    def __init__(self, path: Path, name: str):
        from ..analysis._run import read_config

        self.path, self.name, self.notes = path, name, []
        self.config_text = (path / "config.yaml").read_text() if (path / "config.yaml").is_file() else None
        try:
            self.config = read_config(path)
        except AttnGuardError as e:
            self.config = {}
            self.notes.append(str(e))
        self.eval = self._read_evals(path)
        self.analysis = _read_json(path / "analysis" / "analysis.json", "analysis/analysis.json", self.notes)
        self.analysis_dir = path / "analysis" if self.analysis else None
        self.gallery: Optional[Path] = path / "gallery.png" if (path / "gallery.png").is_file() else None
        self.curves: Optional[Path] = None


    def _read_evals(self, path: Path) -> Optional[dict]:
        """eval.json merged with the run's other eval*.json files (e.g. an AutoAttack run on fewer examples)."""
        from .aggregate import eval_files, merge_evals

        files = eval_files(path)
        evals = [(f, _read_json(f, f.name, self.notes)) for f in files]
        evals = [(f, e) for f, e in evals if e is not None]
        if len(evals) <= 1:
            return evals[0][1] if evals else None
        try:
            merged = merge_evals([e for _, e in evals])
        except (KeyError, TypeError) as e:
            self.notes.append(f"evaluation files could not be merged ({e!r}); showing {evals[0][0].name} only")
            return evals[0][1]
        counts = ", ".join(f"{k} {n}" for k, n in merged["n"].items() if n != merged["n_examples"])
        self.notes.append(f"evaluation merged from {', '.join(f.name for f, _ in evals)}; "
                          f"worst case over every attack on the first {merged['n_worst']} examples"
                          + (f"; examples per attack where they differ: {counts}" if counts else ""))
        return merged


def _optional(what: str, run: _Run, fn):
    """Run an optional step; a user-level failure (no data module, no checkpoint...) becomes a note."""
    try:
        return fn()
    except (AttnGuardError, ImportError, FileNotFoundError) as e:
        run.notes.append(f"{what} not available: {e}")
        log.warning("%s: %s not available: %s", run.name, what, e)
        return None


def _prepare(run: _Run, tmp: Path, compute_missing: bool, device, gallery_n: int, analysis_n: int,
             lime_examples: int) -> None:
    from ..analysis import analyze, explain, training_curves

    work = tmp / f"run{id(run)}"
    if (run.path / "metrics.jsonl").is_file():
        run.curves = _optional("training curves", run, lambda: Path(
            training_curves(run.path, out=work / "curves.png")["path"]))
    if not compute_missing:
        return
    has_model = any((run.path / "checkpoints" / f).is_file() for f in ("best.pt", "last.pt"))
    if not has_model and (run.gallery is None or run.analysis is None):
        run.notes.append("no checkpoint in this run, so no gallery or analysis could be computed")
        return
    if run.gallery is None:
        run.gallery = _optional("gallery", run, lambda: explain(run.path, n=gallery_n, out=work / "gallery.png",
                                                                 device=device))
    if run.analysis is None:
        out = work / "analysis"
        res = _optional("attention analysis", run, lambda: analyze(
            run.path, n_examples=analysis_n, out_dir=out, device=device, lime_examples=lime_examples))
        if res is not None:
            run.analysis, run.analysis_dir = res, out
            run.analysis.setdefault("notes", []).insert(
                0, f"computed for this report on the first {analysis_n} test images (run `attnguard analyze` for more)")


def _run_section(run: _Run, index: int) -> str:
    parts = [tag("h2", esc(run.name)), tag("div", tag("span", "path: " + tag("b", esc(run.path))), class_="meta"),
             config_summary(run.config)]
    if run.config_text is not None:
        parts.append(details("config.yaml", tag("pre", esc(run.config_text))))
    else:
        parts.append(note("No config.yaml in this run."))
    parts.append(tag("h3", "Training curves"))
    parts.append(figure(run.curves, f"training curves of {run.name}") if run.curves
                 else note("No training curves (metrics.jsonl missing or empty)."))
    if run.eval is not None:
        parts.append(tag("h3", "Sanity checks"))
        parts.append(sanity_table(run.eval.get("sanity")))
        secs = run.eval.get("seconds")
        if isinstance(secs, dict) and secs:
            parts.append(note("evaluation time: " + ", ".join(f"{k} {v:.1f}s" if isinstance(v, (int, float))
                                                              else f"{k} {v}" for k, v in secs.items())))
    parts.append(tag("h3", "Grad-CAM gallery (clean vs adversarial)"))
    parts.append(figure(run.gallery, f"Grad-CAM gallery of {run.name}", cls="figure gallery") if run.gallery
                 else note("No gallery (run `attnguard explain`)."))
    parts.append(tag("h3", "Attention analysis"))
    if run.analysis:
        parts.append(analysis_section(run.analysis))
        plots = [run.analysis_dir / p for p in run.analysis.get("plots", [])] if run.analysis_dir else []
        plots = [p for p in plots if p.is_file() and p.suffix == ".png"]
        if plots:
            parts.append(tag("div", "".join(figure(p, f"{p.stem} of {run.name}") for p in plots), class_="plots"))
    else:
        parts.append(note("No attention analysis (run `attnguard analyze`)."))
    if run.notes:
        parts.append(tag("ul", "".join(tag("li", esc(n)) for n in run.notes), class_="notes"))
    return tag("section", "".join(parts), class_="card", id=f"run-{index}")


def build_report(runs: Union[PathLike, Sequence[PathLike]], out: PathLike = "report.html", *,
                 title: str = "attnguard report", compute_missing: bool = True, device="cpu", gallery_n: int = 8,
                 analysis_n: int = 100, lime_examples: int = 4) -> Path:
    """Write one self-contained HTML report for ``runs`` and return its path.

    Args:
        runs: run directories (one path or several), shown side by side in the evaluation table.
        out: the HTML file to write.
        compute_missing: generate a gallery / a small analysis for runs that lack them (needs the
            run's checkpoint and dataset; failures become notes in the page). Nothing is written
            into the run directories.
        gallery_n, analysis_n, lime_examples: sizes of what is computed when missing.
    """
    from ..io import atomic_write_text

    paths = [Path(runs)] if isinstance(runs, (str, Path)) else [Path(r) for r in runs]
    if not paths:
        raise CheckpointError("build_report needs at least one run directory")
    for p in paths:
        if not p.is_dir():
            raise CheckpointError(f"not a run directory: {p}")
    names = _names(paths)
    items = [_Run(p, n) for p, n in zip(paths, names)]
    with tempfile.TemporaryDirectory(prefix="attnguard-report-") as tmp:
        for run in items:
            _prepare(run, Path(tmp), compute_missing, device, gallery_n, analysis_n, lime_examples)
        evaluation = tag("section", tag("h2", "Evaluation") + note(
            "Accuracy in eval mode on the test examples of each run's eval*.json files; worst case = an example counts "
            "as robust only if it withstands every attack.") + eval_table(names, [r.eval for r in items]),
            class_="card", id="evaluation")
        sections = [_run_section(r, i) for i, r in enumerate(items, 1)]
        chips = "".join(tag("li", tag("a", esc(n), href=f"#run-{i}")) for i, n in enumerate(names, 1))
        page = Template(_asset("template.html")).substitute(
            title=esc(title), version=esc(__version__), css=_asset("style.css"), chips=chips,
            subtitle=esc(f"{len(items)} run{'s' if len(items) != 1 else ''}: " + ", ".join(names)),
            generated=esc(datetime.now().strftime("%Y-%m-%d %H:%M")), body=evaluation + "".join(sections))
    out = Path(out)
    atomic_write_text(out, page)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o666 & ~umask)  # the atomic write's temporary file is private; a report is for sharing
    return out
