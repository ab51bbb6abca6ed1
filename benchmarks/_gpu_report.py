"""What a GPU session reports: benchmark tables read back, G1-G4 verdicts, test counts, the one-screen summary."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence

MAX_OUT_FILES, MAX_OUT_MIB = 8, 16  # what the device tool brings back from $OUT


def junit_counts(path: Path) -> dict:
    if not path.is_file():
        return {}
    root = ET.parse(path).getroot()
    out = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in root.iter("testsuite"):
        for k in out:
            out[k] += int(suite.get(k, 0))
    out["failed_names"] = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
                           if c.find("failure") is not None or c.find("error") is not None]
    return out


def md_tables(text: str) -> List[List[Dict[str, str]]]:
    """Markdown tables in ``text`` as lists of {header: cell}."""
    tables, header, cur = [], None, []
    for line in text.splitlines() + [""]:
        s = line.strip()
        if s.startswith("|") and s.endswith("|"):
            cells = [c.strip() for c in s[1:-1].split("|")]
            if header is None:
                header, cur = cells, []
            elif not set("".join(cells)) <= set("-: "):
                cur.append(dict(zip(header, cells)))
        elif header is not None:
            tables.append(cur)
            header = None
    return tables


def num(cell: str) -> Optional[float]:
    m = re.match(r"\s*([0-9][0-9,]*\.?[0-9]*)", cell or "")
    return float(m.group(1).replace(",", "")) if m else None


def verdicts(bench: dict, dry: bool) -> Dict[str, str]:
    """G1-G4 read off the benchmark tables (the targets of docs/PERFORMANCE.md)."""
    rows = {t: [r for tab in b.get("tables", []) for r in tab] for t, b in bench.items()}
    out = {}
    for r in rows.get("G1", []):
        if r.get("quantity", "").startswith("PGD-10 adversarial training"):
            v = num(r["value"])
            out["G1"] = f"{r['value']} images/s (target >= 10,000): {'met' if v and v >= 10000 else 'missed'}"
    g2 = [r for r in rows.get("G2", []) if r.get("GPU target", "-") != "-" and r.get("model", "").startswith("preact")]
    if g2:
        out["G2"] = ", ".join(f"{r['preset']} {r['vs madry']}" for r in g2) + ": " + (
            "met" if all(r["GPU target"].endswith("met") for r in g2) else "missed")
    g3 = {r["attack"]: r for r in rows.get("G3", []) if r.get("model") == "preact-resnet18"}
    fp32 = g3.get("attnguard PGD fp32")
    bf16 = next((r for k, r in g3.items() if k.startswith("attnguard PGD default (bf16")), None)
    if fp32 and bf16:
        a, b = num(fp32["vs torchattacks"]), num(bf16["vs torchattacks"])
        out["G3"] = (f"fp32 {fp32['images/s']} img/s ({fp32['vs torchattacks']}), bf16 + channels_last "
                     f"{bf16['images/s']} img/s ({bf16['vs torchattacks']}) vs torchattacks: "
                     f"{'met' if a and b and a >= 1.0 and b >= 1.5 else 'missed'}")
    g4 = [r for r in rows.get("G4", []) if r.get("method") == "attnguard grad_cam, closed form, full"]
    if g4:
        ratios = [num(r["vs pytorch-grad-cam"]) or 0 for r in g4]
        out["G4"] = ", ".join(r["vs pytorch-grad-cam"] for r in g4) + f" (target >= 5x): {'met' if min(ratios) >= 5 else 'missed'}"
    if dry:
        out = {k: v + " [CPU dry run: not a measurement of the GPU target]" for k, v in out.items()}
    return out


def summary(res: dict, targets_order: Sequence[str]) -> str:
    s, env = res["session"], res.get("env", {})
    lines = [f"# GPU session {s['id']} ({s['mode']})", "",
             f"{env.get('device', 'no GPU')} · torch {env.get('torch', '?')} · python {env.get('python', '?')} · "
             f"commit {s['commit']} · {s['elapsed_s']:.0f} of {s['deadline_s']:.0f} s", "",
             "| step | status | s | note |", "|---|---|---:|---|"]
    for st in res["steps"]:
        note = " ".join(st["reason"].split()).replace("|", "/")
        lines.append(f"| {st['name']} | {st['status']} | {st['seconds']:.0f} | {note[:110]} |")
    t = res.get("tests")
    if t:
        lines += ["", f"tests: {t.get('tests', 0)} run, {t.get('failures', 0)} failed, {t.get('errors', 0)} errors, "
                  f"{t.get('skipped', 0)} skipped"]
    targets = res.get("targets", {})
    for target in sorted(targets_order):
        st = next((s for s in res["steps"] if s["name"].startswith(f"bench {target}")), None)
        if target not in targets:
            targets[target] = f"not measured ({st['status'] + ': ' + ' '.join(st['reason'].split())[:80] if st else 'bench step not run'})"
    lines += ["", *(f"- {k}: {v}" for k, v in sorted(targets.items()))]
    last = (res.get("rows") or [[]])[-1]
    if last:
        lines += ["", "| row | now | progress | clean | worst case |", "|---|---|---|---:|---:|"]
        for r in last:
            ev = (r.get("evals") or [{}])[0]
            prog = f"epoch {r.get('epoch')}/{r.get('epochs')}, step {r.get('step')}" if r.get("step") else "-"
            now = r.get("after") or f"{r.get('action')}: {r.get('reason', '')[:60]}"
            lines.append(f"| {r['id']} | {now} | {prog} | {_pct(ev.get('clean'))} | {_pct(ev.get('worst_case'))} |")
    lines += ["", *(f"- {n}" for n in res.get("state_notes", []) + [res.get("data_note", "")] if n)]
    if res.get("state_pack"):
        lines.append(f"state: generation {res['state_generation']}, {res['state_pack'][-1]['total_mib']} MiB in "
                     f"{len(res['state_pack']) - 1} part(s); here: `python benchmarks/gpu_session.py --absorb <files_at>`")
    files = s.get("out_files", {})
    if len(files) > MAX_OUT_FILES or any(v > MAX_OUT_MIB for v in files.values()):
        lines.append(f"WARNING: {len(files)} files in the out folder; the device tool brings back {MAX_OUT_FILES} "
                     f"of at most {MAX_OUT_MIB} MiB each")
    return "\n".join(lines) + "\n"


def _pct(v) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) else "-"
