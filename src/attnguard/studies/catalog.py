"""Imports every study module, so that each registers itself in STUDIES (one line per study)."""

from . import defense_maps  # noqa: F401  (AAD Fig. 10-11)
from . import evolution  # noqa: F401  (AAD Fig. 6)
from . import attack_rounds  # noqa: F401  (AAD Fig. 2, 12)
from . import ablation_maps  # noqa: F401  (AAD Fig. 9)
from . import loss_surface  # noqa: F401  (AFM Fig. 7)
from . import tsne_study  # noqa: F401  (AFM Fig. 6)
from . import transfer_curves  # noqa: F401  (AT+ALP Fig. 3)
from . import group_maps  # noqa: F401  (AT+ALP Fig. 4)
from . import part_activations  # noqa: F401  (AT+ALP Table 3)
from . import attention_in_box  # noqa: F401  (AAD Tables 1-2, across models)
