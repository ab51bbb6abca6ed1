"""Running metric sums kept on the device, read (one host sync) only at log points."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch


class Running:
    """Sums of per-step scalars on the device; ``mean()`` syncs once for all of them."""

    def __init__(self, device):
        self.device = device
        self.sums: Dict[str, torch.Tensor] = {}
        self.count = torch.zeros((), device=device)
        self.steps = 0  # host-side mirror of ``count``: tells whether there is anything to log, without a sync

    def add(self, parts: Dict[str, torch.Tensor]) -> None:
        for k, v in parts.items():
            v = v.detach().float()
            if k in self.sums:
                self.sums[k] += v
            else:
                self.sums[k] = v.clone()
        self.count += 1
        self.steps += 1

    def reduce(self, dist_enabled: bool) -> None:
        if not dist_enabled:
            return
        import torch.distributed as dist

        keys = sorted(self.sums)
        flat = torch.stack([self.sums[k] for k in keys] + [self.count])
        dist.all_reduce(flat)
        world = dist.get_world_size()
        for i, k in enumerate(keys):
            self.sums[k] = flat[i] / world
        self.count = flat[-1] / world

    def mean(self) -> Dict[str, float]:
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        vals = (torch.stack([self.sums[k] for k in keys]) / self.count.clamp_min(1)).tolist()
        return dict(zip(keys, vals))

    def state_dict(self) -> dict:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "count": self.count.cpu(), "steps": self.steps}

    def load_state_dict(self, s: dict) -> None:
        self.sums = {k: v.to(self.device) for k, v in s["sums"].items()}
        self.count = s["count"].to(self.device)
        self.steps = int(s.get("steps", round(float(self.count))))


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended and flushed (rank 0 only).

    ``lines`` counts the lines written so far; checkpoints store it so that a resumed run can
    drop exactly the lines written after its checkpoint (:meth:`truncate`).
    """

    def __init__(self, path: Optional[Path]):
        self.path = path
        self.lines = 0

    def write(self, record: dict) -> None:
        self.lines += 1
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def _lines(self) -> List[Tuple[str, dict]]:
        """The complete lines of the file with their records (a line torn by a kill is skipped)."""
        if self.path is None or not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append((line, json.loads(line)))
            except json.JSONDecodeError:
                continue
        return out

    def truncate(self, lines: Optional[int] = None, step: Optional[int] = None) -> None:
        """Keep the first ``lines`` records (or, for checkpoints that did not record it, those up to ``step``)."""
        found = self._lines()
        keep = found[:lines] if lines is not None else [(l, r) for l, r in found if r.get("step", 0) <= (step or 0)]
        self.lines = len(keep)
        if self.path is not None:
            from ..io import atomic_write_text

            atomic_write_text(self.path, "".join(l + "\n" for l, _ in keep))
