"""The listings behind ``attnguard list``: one place that reads every registry, above them all."""

from __future__ import annotations

from typing import List, Tuple


def listing(what: str) -> List[Tuple[str, str]]:
    """``[(name, description)]`` of one registry: models, datasets, defenses, regularizers, attacks,
    configs or studies (each imported only when asked for: the study modules load plotting)."""
    if what == "models":
        from .models import MODELS

        return MODELS.describe()
    if what == "datasets":
        from .data import DATASETS

        return DATASETS.describe()
    if what == "defenses":
        from .defenses import PRESETS

        return sorted(PRESETS.items())
    if what == "regularizers":
        from .defenses import REGULARIZERS

        return REGULARIZERS.describe()
    if what == "attacks":
        from .attacks.registry import ATTACKS

        return ATTACKS.describe()
    if what == "configs":  # the packaged configs: the same listing from any directory
        from .configs import list_configs

        return list_configs()
    if what == "studies":
        from .studies import STUDIES
        from .studies import catalog  # noqa: F401  (registers the studies)

        return STUDIES.describe()
    raise ValueError(what)
