"""attnguard: attention-guided adversarial training and honest robustness evaluation.

``attnguard.create_model``, ``attnguard.load_model``, ``attnguard.evaluate(model, images, labels,
attacks, eps)`` and the subpackages ``attention``, ``attacks``, ``defenses``, ``data``, ``train``,
``evaluation``, ``analysis`` and ``report``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import AttnGuardError, CheckpointError, ConfigError, DataError, UnknownNameError
from .io import export_safetensors
from .rundir import load_model
from .models import MODELS, create_model
from . import attention, attacks, evaluation
from .evaluation import evaluate

__all__ = ["__version__", "AttnGuardError", "CheckpointError", "ConfigError", "DataError", "UnknownNameError",
           "MODELS", "create_model", "load_model", "export_safetensors", "attention", "attacks", "evaluation", "evaluate"]
