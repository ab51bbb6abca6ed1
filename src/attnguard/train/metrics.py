"""Running metric sums kept on the device, read (one host sync) only at log points."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import torch


class Running:
    """Sums of per-step scalars on the device; ``mean()`` syncs once for all of them."""

    def __init__(self, device):
        self.device = device
        self.sums: Dict[str, torch.Tensor] = {}
        self.count = torch.zeros((), device=device)

    def add(self, parts: Dict[str, torch.Tensor]) -> None:
        for k, v in parts.items():
            v = v.detach().float()
            if k in self.sums:
                self.sums[k] += v
            else:
                self.sums[k] = v.clone()
        self.count += 1

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
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "count": self.count.cpu()}

    def load_state_dict(self, s: dict) -> None:
        self.sums = {k: v.to(self.device) for k, v in s["sums"].items()}
        self.count = s["count"].to(self.device)


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended and flushed (rank 0 only)."""

    def __init__(self, path: Optional[Path]):
        self.path = path

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (written after the checkpoint a resume starts from)."""
        if self.path is None or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by the kill
            if rec.get("step", 0) <= step:
                keep.append(line)
        self.path.write_text("".join(l + "\n" for l in keep))
