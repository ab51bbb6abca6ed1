"""Name checks before any work starts."""

from __future__ import annotations

from .config import RunConfig


def check_names(cfg: RunConfig) -> None:
    """Fail fast (one line, valid names listed) on unknown model, defense, dataset or attack names."""
    from ..attacks.registry import parse_attack
    from ..data import check_dataset_name
    from ..defenses import canonical_name
    from ..models import MODELS

    MODELS.entry(cfg.model.name)
    canonical_name(cfg.defense.preset)
    check_dataset_name(cfg.data.name)
    for name in cfg.eval.attacks:
        parse_attack(name)
