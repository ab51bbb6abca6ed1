"""attnguard: attention-guided adversarial training and honest robustness evaluation."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import AttnGuardError, CheckpointError, ConfigError, DataError, UnknownNameError
from .models import MODELS, create_model
from . import attention

__all__ = ["__version__", "AttnGuardError", "CheckpointError", "ConfigError", "DataError", "UnknownNameError",
           "MODELS", "create_model", "attention"]
