"""Name checks before any work starts, and the listings behind ``attnguard list``."""

from __future__ import annotations

from typing import List, Tuple

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


def listing(what: str) -> List[Tuple[str, str]]:
    if what == "models":
        from ..models import MODELS

        return MODELS.describe()
    if what == "datasets":
        from ..data import DATASETS

        return DATASETS.describe()
    if what == "defenses":
        from ..defenses import PRESETS

        return sorted(PRESETS.items())
    if what == "regularizers":
        from ..defenses import REGULARIZERS

        return REGULARIZERS.describe()
    if what == "attacks":
        from ..attacks.registry import ATTACKS

        return ATTACKS.describe()
    if what == "configs":  # the packaged configs: the same listing from any directory
        from ..configs import list_configs

        return list_configs()
    if what == "studies":
        from ..studies import STUDIES
        from ..studies import catalog  # noqa: F401  (registers the studies)

        return STUDIES.describe()
    raise ValueError(what)
