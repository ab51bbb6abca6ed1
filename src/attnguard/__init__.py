"""attnguard: attention-guided adversarial training and honest robustness evaluation.

``attnguard.create_model``, ``attnguard.load_model``, ``attnguard.evaluate(model, images, labels,
attacks, eps)`` and the subpackages ``attention``, ``attacks``, ``defenses``, ``data``, ``train``,
``evaluation``, ``analysis`` and ``report``.

Everything that needs torch is imported on first use (PEP 562 module ``__getattr__``): ``import
torch`` alone takes seconds, and ``attnguard --help`` or ``attnguard list`` must not wait for it.
"""

from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

# torch-free, so eager
from .errors import AttnGuardError, CheckpointError, ConfigError, DataError, UnknownNameError

# name -> (module, attribute in it; None for the module itself)
_LAZY = {
    "export_safetensors": (".io", "export_safetensors"),
    "load_model": (".rundir", "load_model"),
    "MODELS": (".models", "MODELS"),
    "create_model": (".models", "create_model"),
    "evaluate": (".evaluation", "evaluate"),
    "attention": (".attention", None),
    "attacks": (".attacks", None),
    "evaluation": (".evaluation", None),
}

__all__ = ["__version__", "AttnGuardError", "CheckpointError", "ConfigError", "DataError", "UnknownNameError",
           "MODELS", "create_model", "load_model", "export_safetensors", "attention", "attacks", "evaluation", "evaluate"]


def __getattr__(name: str):
    if name not in _LAZY:
        # any other subpackage (attnguard.models, attnguard.train, ...) loads on first use, as an import would
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module 'attnguard' has no attribute {name!r}")
    module, attr = _LAZY[name]
    mod = importlib.import_module(module, __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
