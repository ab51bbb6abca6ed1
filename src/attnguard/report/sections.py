"""HTML sections of the report: evaluation table, sanity checks, analysis tables."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

from ..rundir import config_get
from ..evaluation.results import attack_n
from .html import badge, eps_text, esc, note, num, pct, table, tag


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _components(ev: Optional[dict], attack: str) -> dict:
    """AutoAttack's robust accuracy after each component (eval.json ``autoattack_components``), or {}."""
    entry = ((ev or {}).get("autoattack_components") or {}).get(attack)
    robust = entry.get("robust") if isinstance(entry, dict) else None
    return robust if isinstance(robust, dict) else {}


def _n(ev: Optional[dict], attack: Optional[str] = None, component: bool = False) -> Optional[int]:
    """The examples behind a cell: the evaluation's, an attack's (``n_per_attack``, a merged ``n``), or
    the examples of an attack's component breakdown; None where the run has no such number."""
    if not ev or not isinstance(ev.get("n_examples"), int):
        return None
    if attack is None:
        return ev["n_examples"]
    if attack not in (ev.get("attacks") or {}):
        return None
    if component:
        entry = (ev.get("autoattack_components") or {}).get(attack)
        if isinstance(entry, dict) and isinstance(entry.get("n_examples"), int):
            return entry["n_examples"]
    return attack_n(ev, attack)


def _worst(ev: Optional[dict], last: bool) -> tuple:
    """``(accuracy, n)`` of a run's worst case over every attack (``last``: over the attacks run on the
    most examples, the last of ``worst_cases``; the same as the first when every attack ran on all)."""
    if not ev:
        return None, None
    entries = ev.get("worst_cases") or [{"accuracy": ev.get("worst_case"),
                                         "n_examples": ev.get("n_worst") or ev.get("n_examples")}]
    w = entries[-1] if last else entries[0]
    return w.get("accuracy"), w.get("n_examples")


def eval_rows(evals: Sequence[Optional[dict]]) -> List[tuple]:
    """``[(row label, [value per run], is_total, [n per run])]``: clean, every attack (first-seen order)
    followed by its components where the evaluation recorded them (``autoattack, after apgd-ce``...),
    the worst case over every attack and, when some run's attacks ran on different numbers of
    examples, the worst case over the attacks run on the most examples. ``n``: the examples behind
    each value (None where unknown)."""
    attacks: List[str] = []
    for ev in evals:
        for name in (ev or {}).get("attacks", {}) or {}:
            if name not in attacks:
                attacks.append(name)
    rows = [("clean", [(ev or {}).get("clean") for ev in evals], False, [_n(ev) for ev in evals])]
    for a in attacks:
        rows.append((a, [((ev or {}).get("attacks") or {}).get(a) for ev in evals], False,
                     [_n(ev, a) for ev in evals]))
        parts: List[str] = []
        for ev in evals:
            parts += [c for c in _components(ev, a) if c not in parts]
        rows += [(f"{a}, after {c}", [_components(ev, a).get(c) for ev in evals], False,
                  [_n(ev, a, component=True) if c in _components(ev, a) else None for ev in evals]) for c in parts]
    wide = any(len((ev or {}).get("worst_cases") or []) > 1 for ev in evals)
    first = [_worst(ev, False) for ev in evals]
    rows.append(("worst case (all attacks, on the examples they all ran on)" if wide else "worst case",
                 [v for v, _ in first], True, [n for _, n in first]))
    if wide:
        last = [_worst(ev, True) for ev in evals]
        rows.append(("worst case (the attacks run on the most examples)", [v for v, _ in last], True,
                     [n for _, n in last]))
    return rows


def eval_table(names: Sequence[str], evals: Sequence[Optional[dict]]) -> str:
    """Accuracy table, rows = clean / attacks / worst case, columns = runs; the best value per row in bold."""
    if not any(evals):
        return note("No run has an eval.json yet (run `attnguard eval RUN`).")
    body = []
    for label, values, total, ns in eval_rows(evals):
        finite = [v for v in values if _finite(v)]
        best = max(finite) if len(finite) > 1 else None
        cells = [esc(label)]
        for v, n in zip(values, ns):
            cls = "best" if best is not None and _finite(v) and v == best else None
            cells.append((cls, pct(v) + (tag("span", esc(f"n={n}"), class_="n") if n is not None and v is not None
                                         else "")))
        body.append((total, cells))
    head = "".join(tag("th", esc(h), scope="col") for h in ["accuracy", *names])
    rows_html = []
    for total, cells in body:
        tds = tag("th", cells[0], scope="row") + "".join(tag("td", v, class_=cls) for cls, v in cells[1:])
        rows_html.append(tag("tr", tds, class_="total" if total else None))
    meta = []
    extra = [("worst case on the first", "n_worst", num)] if any((ev or {}).get("n_worst") for ev in evals) else []
    for label, key, fmt in [("eps", "eps", eps_text), ("examples", "n_examples", num), *extra]:
        meta.append(tag("tr", tag("th", esc(label), scope="row")
                        + "".join(tag("td", fmt((ev or {}).get(key))) for ev in evals)))
    inner = tag("thead", tag("tr", head)) + tag("tbody", "".join(rows_html) + "".join(meta))
    return tag("div", tag("table", inner, class_="data eval"), class_="table-wrap")


def sanity_table(checks) -> str:
    if not checks:
        return note("No sanity checks recorded (run `attnguard eval --sanity`).")
    rows = []
    for c in checks:
        c = c if isinstance(c, dict) else {"check": str(c)}
        rows.append([esc(c.get("check", "?")), badge(c.get("status", "unknown")),
                     tag("span", esc(c.get("detail", "")), class_="detail")])
    html_rows = []
    for name, status, detail in rows:
        html_rows.append(tag("tr", tag("th", name, scope="row") + tag("td", status) + tag("td", detail, class_="detail")))
    head = tag("tr", "".join(tag("th", h, scope="col") for h in ("check", "status", "detail")))
    return tag("div", tag("table", tag("thead", head) + tag("tbody", "".join(html_rows)), class_="data checks"),
               class_="table-wrap")


def _groups(rows: Sequence[dict], key: str, label: str, caption: str) -> str:
    return table([label, "I_succeed", "I_fail"], ([esc(r.get(key)), num(r.get("succeed")), num(r.get("fail"))]
                                                    for r in rows), caption=caption)


def analysis_section(a: dict) -> str:
    """Tables of an analysis.json (AAD Tables 1-5, AT+ALP Table 3)."""
    parts = []
    meta = [("attack", a.get("attack_used") or a.get("attack")), ("eps", eps_text(a.get("eps"))),
            ("examples", a.get("n_examples")), ("correct (I_att)", a.get("n_correct")),
            ("I_succeed", a.get("n_succeed")), ("I_fail", a.get("n_fail")), ("boxes", a.get("boxes") or "none")]
    parts.append(tag("div", "".join(tag("span", esc(k) + ": " + tag("b", v if k == "eps" else esc(v)))
                                    for k, v in meta), class_="meta"))
    cva = a.get("clean_vs_adv")
    if cva:
        parts.append(tag("h4", esc(f"Attention deviation: clean vs adversarial (AAD Table 3, {cva.get('grid')} grid)")))
        parts.append(_groups(cva.get("rows", []), "cells", "#cells", "mean IoU of the top-k attention cells"))
    avb = a.get("attention_vs_box")
    if avb:
        t1, t2 = avb.get("table1", {}), avb.get("table2", {})
        parts.append(tag("h4", esc("Attention vs ground-truth box (AAD Tables 1-2)")))
        rows = [[esc("share of images"), pct(t1.get("succeed", {}).get("percentage")),
                 pct(t1.get("fail", {}).get("percentage"))],
                [esc("mean IoU (attention, box)"), num(t1.get("succeed", {}).get("iou")), num(t1.get("fail", {}).get("iou"))],
                [esc(f"share among IoU < {t2.get('threshold', 0.5)} ({t2.get('n_images', 0)} images)"),
                 pct(t2.get("succeed", {}).get("percentage")), pct(t2.get("fail", {}).get("percentage"))],
                [esc("mean top-1 confidence, IoU < 0.5"), num(t2.get("succeed", {}).get("confidence")),
                 num(t2.get("fail", {}).get("confidence"))]]
        parts.append(table(["", "I_succeed", "I_fail"], rows,
                           caption="equal-area threshold: the attention area has the box's size"))
    act = a.get("activation_in_region")
    if act:
        parts.append(tag("h4", esc("Mean normalized activation inside key regions (AT+ALP Table 3)")))
        parts.append(table(["region", "clean", "adversarial"],
                           ([esc(name), num(v.get("clean")), num(v.get("adv"))] for name, v in act.items()),
                           caption="min-max normalized Grad-CAM, upsampled to the image"))
    lime = a.get("lime")
    if lime:
        parts.append(tag("h4", esc(f"LIME attention (AAD Tables 4-5, {lime.get('n_images')} images, "
                                   f"{lime.get('num_samples')} samples each)")))
        grid = []
        if lime.get("table4"):
            grid.append(_groups(lime["table4"], "features", "#features", "IoU with the box (Table 4)"))
        grid.append(_groups(lime.get("table5", []), "features", "#features", "IoU clean vs adversarial (Table 5)"))
        parts.append(tag("div", "".join(grid), class_="plots"))
    notes = a.get("notes") or []
    if notes:
        parts.append(tag("ul", "".join(tag("li", esc(n)) for n in notes), class_="notes"))
    return "".join(parts)


def config_summary(cfg: Dict) -> str:
    keys = [("dataset", "data.name"), ("model", "model.name"), ("defense", "defense.preset"),
            ("eps", "adversary.eps"), ("seed", "seed")]
    items = [(k, config_get(cfg, path)) for k, path in keys]
    spans = [tag("span", esc(k) + ": " + tag("b", eps_text(v) if k == "eps" else esc(v)))
             for k, v in items if v is not None]
    return tag("div", "".join(spans), class_="meta") if spans else ""
