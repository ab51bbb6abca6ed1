"""The paired table of several ``attnguard study transfer-curves`` results (one file per seed pair).

Each JSON holds, for one target seed, every defense's accuracy under transferred PGD-K (gray-box:
crafted on the same defense's copy of another seed; black-box: on a model of another architecture),
and, if the study ran with ``white_box=true``, under PGD-K on the target itself. This prints, at one
K, each setting's accuracy per defense (mean ± sample std over the files) and the differences of
the ``--paired A:B`` defenses (B - A) paired within each file, i.e. by target seed, on the same images:

    python tools/transfer_table.py fig3-t0.json fig3-t1.json fig3-t2.json --paired alp:at+alp --paired madry:at+alp
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Dict, List

SETTINGS = ("white-box", "gray-box", "black-box")


def accuracies(doc: dict, k: int) -> Dict[str, Dict[str, float]]:
    """{setting: {defense: accuracy in % at K}} of one study file (setting "clean" too)."""
    num = doc.get("numbers", doc)
    if k not in num["iterations"]:
        raise SystemExit(f"K = {k} is not among this study's iterations {num['iterations']}")
    i = num["iterations"].index(k)
    out: Dict[str, Dict[str, float]] = {"clean": {}}
    defense_of = {}
    for p in num["pairs"]:
        defense_of[p["target"]] = p["defense"]
        row = out.setdefault(p["setting"], {})
        if p["defense"] in row:
            raise SystemExit(f"two {p['setting']} pairs for defense {p['defense']} in one file: pair them by file")
        row[p["defense"]] = 100 * p["accuracy"][i]
        out["clean"][p["defense"]] = 100 * p["clean_accuracy"]
    for target, acc in (num.get("white_box") or {}).items():
        out.setdefault("white-box", {})[defense_of[target]] = 100 * acc[i]
    return out


def _ms(values: List[float], signed: bool = False) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{'+' if signed else ''}.1f} ± {sd:.1f}"


def table(docs: List[dict], k: int, paired: List[tuple]) -> str:
    per_file = [accuracies(d, k) for d in docs]
    defenses = list(dict.fromkeys(d for f in per_file for row in f.values() for d in row))
    settings = [s for s in ("clean", *SETTINGS) if any(s in f for f in per_file)]
    head = [f"setting (K = {k})", *defenses, *(f"{b} − {a}" for a, b in paired)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for s in settings:
        cells = [s]
        for d in defenses:
            vals = [f[s][d] for f in per_file if d in f.get(s, {})]
            cells.append(_ms(vals) if len(vals) == len(per_file) else "-")
        for a, b in paired:
            if all(a in f.get(s, {}) and b in f.get(s, {}) for f in per_file):
                diffs = [f[s][b] - f[s][a] for f in per_file]
                cells.append(f"{_ms(diffs, signed=True)} ({', '.join(f'{v:+.1f}' for v in diffs)})")
            else:
                cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="transfer-curves.json files, one per target seed")
    p.add_argument("--k", type=int, default=None, help="PGD iterations to tabulate (default: the largest)")
    p.add_argument("--paired", action="append", default=[], metavar="A:B", help="add the column B - A")
    a = p.parse_args(argv)
    docs = [json.loads(f.read_text()) for f in a.files]
    k = a.k if a.k is not None else max(docs[0].get("numbers", docs[0])["iterations"])
    pairs = []
    for spec in a.paired:
        if spec.count(":") != 1:
            raise SystemExit(f"--paired takes A:B, got {spec!r}")
        pairs.append(tuple(spec.split(":")))
    print(table(docs, k, pairs))
    print(f"\nAccuracy in % at PGD-{k}, mean ± sample std over {len(docs)} files (target seeds); differences paired "
          f"by file, per file in parentheses; n = {docs[0].get('numbers', docs[0])['n']} examples each.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
