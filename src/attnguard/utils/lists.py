"""Comma-separated lists whose items may be paths that hold commas.

``attnguard sweep`` names its run directories ``KEY=VALUE,...,seed=S``, so a sweep run given as a
transfer source (``--attacks transfer:DIR:pgd-20``, a study's ``--set sources=DIR1,DIR2``) holds commas.
A plain ``split(",")`` cuts such a path in pieces; :func:`split_list` puts the pieces back together
where together they name a path that exists. Torch-free: the CLI's parser uses it.
"""

from __future__ import annotations

import os
from typing import List

TRANSFER = "transfer:"


def _names_a_path(item: str) -> bool:
    """``item`` is an existing path, or ``transfer:PATH[:ATTACK]`` with PATH existing."""
    text = item.strip()
    if text.lower().startswith(TRANSFER):
        text = text[len(TRANSFER):]
        if ":" in text and not os.path.exists(text):
            text = text.rsplit(":", 1)[0]  # the source attack, e.g. ':pgd-20'
    return bool(text) and os.path.exists(text)


def split_list(text: str) -> List[str]:
    """The stripped, non-empty items of a comma-separated ``text``; consecutive pieces are kept as one item
    when joined with their commas they name an existing path (the longest such join wins) and the first
    piece alone does not."""
    pieces = text.split(",")
    items, i = [], 0
    while i < len(pieces):
        j = i + 1
        if not _names_a_path(pieces[i]):
            for end in range(len(pieces), i + 1, -1):
                if _names_a_path(",".join(pieces[i:end])):
                    j = end
                    break
        item = ",".join(pieces[i:j]).strip()
        if item:
            items.append(item)
        i = j
    return items
