"""``attnguard report``: its arguments and its command (the HTML report, the markdown table, paired comparisons).

Imported by ``attnguard.cli`` when the parser is built, so it imports nothing heavy at module level: each
output's module (and torch with it) is loaded only when that output is asked for.
"""

from __future__ import annotations

import argparse
import os

from ..errors import ConfigError


def add_report_parser(sub) -> argparse.ArgumentParser:
    r = sub.add_parser("report", help="one self-contained HTML report of one or more runs")
    r.add_argument("runs", nargs="+", metavar="RUN")
    r.add_argument("--out", default=None, help="HTML file (default report.html unless --markdown or --paired is "
                   "given)")
    r.add_argument("--markdown", metavar="FILE", help="also write a markdown table: mean ± std over seeds, "
                   "one row per dataset/model/defense/eps (an existing FILE only with --force)")
    r.add_argument("--paired", action="append", metavar="BASE:VARIANT", help="defense presets to compare seed by "
                   "seed, e.g. madry:madry+aad (repeatable): per metric (clean, each attack, worst case) the "
                   "differences VARIANT - BASE in points per seed, mean ± std, min..max, and on how many seeds the "
                   "variant is ahead/behind/tied; follows the --markdown table in FILE, else printed; no HTML "
                   "report then unless --out")
    r.add_argument("--force", action="store_true", help="replace an existing --out or --markdown file (without "
                   "it, an existing one is an error: exit 2, nothing written)")
    return r


def cmd_report(args) -> int:
    html = args.out or (None if (args.markdown or args.paired) else "report.html")
    if not args.force:  # checked before any work: a table or report someone kept is never replaced silently
        for path in (args.markdown, html):
            if path and os.path.exists(path):
                raise ConfigError(f"{path} exists; pass --force to replace it, or another file name")
    paired = ""
    if args.paired:  # computed first: a bad pair exits 2 before any file is written
        from .paired import paired_markdown

        paired, _ = paired_markdown(args.runs, args.paired)
    if args.markdown:
        from ..io import atomic_write_text
        from .aggregate import aggregate_markdown

        table = aggregate_markdown(args.runs) + ("\n" + paired if paired else "")
        atomic_write_text(args.markdown, table)
        print(table)
        print(f"wrote {args.markdown}")
    elif paired:
        print(paired)
    if html:
        from .build import build_report

        path = build_report(args.runs, out=html)
        print(f"wrote {path}")
    return 0
