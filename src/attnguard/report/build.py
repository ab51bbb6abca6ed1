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
    studies/NAME.json   -> each study's figure (studies/NAME.png) with a caption from its JSON
    sweep.md, sweep.png -> a sweep folder (attnguard sweep): its table and figure, in place of a run's parts

Runs are read through :class:`attnguard.rundir.RunDir`; what is computed for the page uses the
checkpoint the run's ``eval.checkpoint`` names (default best).
"""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import datetime
from importlib import resources
from pathlib import Path
from dataclasses import dataclass, field
from string import Template
from typing import List, Optional, Sequence, Union

from .. import __version__
from ..errors import AttnGuardError, CheckpointError, ConfigError
from ..rundir import RunDir
from .html import details, esc, figure, note, tag
from .extras import is_sweep, studies_section, sweep_section
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


@dataclass
class _Card:
    """What the page shows for one run: read through its :class:`RunDir`, plus what the report computes."""

    run: RunDir
    name: str
    notes: List[str] = field(default_factory=list)
    eval: Optional[dict] = None
    analysis: Optional[dict] = None
    analysis_dir: Optional[Path] = None
    gallery: Optional[Path] = None
    curves: Optional[Path] = None

    @property
    def path(self) -> Path:
        return self.run.path


def _card(path: Path, name: str) -> _Card:
    notes: List[str] = []
    try:
        run = RunDir(path)
    except ConfigError as e:  # a broken config.yaml: the rest of the run can still be shown
        notes.append(str(e))
        run = RunDir(path, config={})
    if run.config_text is None:  # the summary shows config.yaml only; no checkpoint is opened for it
        run = RunDir(path, config={})
    card = _Card(run, name, notes)
    card.eval = _merged_evals(card)
    card.analysis = run.analysis(card.notes)
    card.analysis_dir = run.analysis_dir if card.analysis else None
    card.gallery = path / "gallery.png" if (path / "gallery.png").is_file() else None
    return card


def _merged_evals(card: _Card) -> Optional[dict]:
    """eval.json merged with the run's other eval*.json files (e.g. an AutoAttack run on fewer examples)."""
    from .aggregate import merge_evals, same_model_evals

    evals, left_out = same_model_evals(card.run.evals(card.notes))
    card.notes.extend(left_out)
    if len(evals) <= 1:
        return evals[0][1] if evals else None
    try:
        merged = merge_evals([e for _, e in evals])
    except (KeyError, TypeError) as e:
        card.notes.append(f"evaluation files could not be merged ({e!r}); showing {evals[0][0].name} only")
        return evals[0][1]
    counts = ", ".join(f"{k} {n}" for k, n in merged["n"].items() if n != merged["n_examples"])
    card.notes.append(f"evaluation merged from {', '.join(f.name for f, _ in evals)}; "
                      f"worst case over every attack on the first {merged['n_worst']} examples"
                      + (f"; examples per attack where they differ: {counts}" if counts else ""))
    return merged


def _optional(what: str, card: _Card, fn):
    """Run an optional step; a user-level failure (no data module, no checkpoint...) becomes a note."""
    try:
        return fn()
    except (AttnGuardError, ImportError, FileNotFoundError) as e:
        card.notes.append(f"{what} not available: {e}")
        log.warning("%s: %s not available: %s", card.name, what, e)
        return None


def _prepare(card: _Card, tmp: Path, compute_missing: bool, device, gallery_n: int, analysis_n: int,
             lime_examples: int) -> None:
    from ..analysis import analyze, explain, training_curves

    work = tmp / f"run{id(card)}"
    if card.run.metrics_file.is_file():
        card.curves = _optional("training curves", card, lambda: Path(
            training_curves(card.run.metrics_file, out=work / "curves.png")["path"]))
    if not compute_missing or (card.run.config_text is None and is_sweep(card.path)):
        return  # a sweep folder has no model of its own
    if not card.run.has_checkpoint() and (card.gallery is None or card.analysis is None):
        card.notes.append("no checkpoint in this run, so no gallery or analysis could be computed")
        return
    if card.gallery is None:
        card.gallery = _optional("gallery", card, lambda: explain(card.run, n=gallery_n, out=work / "gallery.png",
                                                                 device=device))
    if card.analysis is None:
        out = work / "analysis"
        res = _optional("attention analysis", card, lambda: analyze(
            card.run, n_examples=analysis_n, out_dir=out, device=device, lime_examples=lime_examples))
        if res is not None:
            card.analysis, card.analysis_dir = res, out
            card.analysis.setdefault("notes", []).insert(
                0, f"computed for this report on the first {analysis_n} test images (run `attnguard analyze` for more)")


def _run_section(card: _Card, index: int) -> str:
    parts = [tag("h2", esc(card.name)), tag("div", tag("span", "path: " + tag("b", esc(card.path))), class_="meta"),
             config_summary(card.run.config)]
    sweep = sweep_section(card.path, card.name, card.notes)
    if sweep and card.run.config_text is None:  # a sweep folder, not a run: its table and figure only
        parts += [sweep, studies_section(card.path, card.name, card.notes)]
        if card.notes:
            parts.append(tag("ul", "".join(tag("li", esc(n)) for n in card.notes), class_="notes"))
        return tag("section", "".join(parts), class_="card", id=f"run-{index}")
    if card.run.config_text is not None:
        parts.append(details("config.yaml", tag("pre", esc(card.run.config_text))))
    else:
        parts.append(note("No config.yaml in this run."))
    parts.append(tag("h3", "Training curves"))
    parts.append(figure(card.curves, f"training curves of {card.name}") if card.curves
                 else note("No training curves (metrics.jsonl missing or empty)."))
    if card.eval is not None:
        parts.append(tag("h3", "Sanity checks"))
        parts.append(sanity_table(card.eval.get("sanity")))
        secs = card.eval.get("seconds")
        if isinstance(secs, dict) and secs:
            parts.append(note("evaluation time: " + ", ".join(f"{k} {v:.1f}s" if isinstance(v, (int, float))
                                                              else f"{k} {v}" for k, v in secs.items())))
    parts.append(tag("h3", "Grad-CAM gallery (clean vs adversarial)"))
    parts.append(figure(card.gallery, f"Grad-CAM gallery of {card.name}", cls="figure gallery") if card.gallery
                 else note("No gallery (run `attnguard explain`)."))
    parts.append(tag("h3", "Attention analysis"))
    if card.analysis:
        parts.append(analysis_section(card.analysis))
        plots = [card.analysis_dir / p for p in card.analysis.get("plots", [])] if card.analysis_dir else []
        plots = [p for p in plots if p.is_file() and p.suffix == ".png"]
        if plots:
            parts.append(tag("div", "".join(figure(p, f"{p.stem} of {card.name}") for p in plots), class_="plots"))
    else:
        parts.append(note("No attention analysis (run `attnguard analyze`)."))
    parts += [studies_section(card.path, card.name, card.notes), sweep]
    if card.notes:
        parts.append(tag("ul", "".join(tag("li", esc(n)) for n in card.notes), class_="notes"))
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
    items = [_card(p, n) for p, n in zip(paths, names)]
    with tempfile.TemporaryDirectory(prefix="attnguard-report-") as tmp:
        for card in items:
            _prepare(card, Path(tmp), compute_missing, device, gallery_n, analysis_n, lime_examples)
        evaluation = tag("section", tag("h2", "Evaluation") + note(
            "Accuracy in eval mode on the test examples of each run's eval*.json files; worst case = an example counts "
            "as robust only if it withstands every attack.") + eval_table(names, [c.eval for c in items]),
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
