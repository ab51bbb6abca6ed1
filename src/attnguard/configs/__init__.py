"""The run configs that ship with attnguard, and the loader that resolves ``extends:``.

A config is named by its path under this folder without ``.yaml``: ``aad/mnist5k-lenet-madry``.
Each paper table row is a small file that ``extends:`` a base (``_base*.yaml``) holding the settings
the rows share, and adds the keys that make it that row. A base may itself extend another one.

Lookup order, for ``--config`` and for ``extends:``: a file on disk wins when it exists (for
``extends:``, relative to the file that names it), otherwise the packaged config of that name.
So a user's own file can say ``extends: aad/mnist5k-lenet-madry`` and change one key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

from ..errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent
SUFFIX = ".yaml"
EXTENDS = "extends"

__all__ = ["CONFIG_DIR", "config_names", "find_config", "list_configs", "load_config_file", "merge"]


def merge(base: dict, over: dict) -> dict:
    """Deep merge of two config mappings: nested mappings merge key by key, anything else
    (a value, a list) from ``over`` replaces the one in ``base``. Neither input is modified."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(without_foreign_options(key, out[key], value), value)
        else:
            out[key] = value
    return out


def without_foreign_options(key: str, base: dict, over: dict) -> dict:
    """``base`` without its ``options`` when it is the ``model`` section and ``over`` names another model.

    ``model.options`` are keyword arguments of the model they were written for (resnet9's dropout);
    a layer (a child config, ``--model``, ``--set model.name=...``) that switches the model without
    giving options of its own starts from none, instead of handing the new model arguments it does
    not take. The run's config.yaml records what was used."""
    if key != "model" or "name" not in over or over["name"] == base.get("name") or "options" in over:
        return base
    return {k: v for k, v in base.items() if k != "options"}


def config_names(include_bases: bool = False) -> List[str]:
    """Sorted names of the packaged configs; base files (``_`` prefix) only when asked."""
    return sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in CONFIG_DIR.rglob("*" + SUFFIX)
                  if include_bases or not p.name.startswith("_"))


def _packaged(name: str) -> Optional[Path]:
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    if not stem or stem.startswith(("/", "\\")):
        return None
    path = (CONFIG_DIR / (stem + SUFFIX)).resolve()
    # a name must stay inside the package folder ('../x' is not a packaged config)
    if CONFIG_DIR not in path.parents or not path.is_file():
        return None
    return path


def _display(path: Path) -> str:
    """Packaged configs by name (short, the same on every machine), other files by path."""
    if CONFIG_DIR in path.parents:
        return path.relative_to(CONFIG_DIR).with_suffix("").as_posix()
    return str(path)


def find_config(name, relative_to: Optional[Path] = None) -> Path:
    """The file ``name`` refers to: an existing file (relative to ``relative_to`` if given,
    else to the working directory), else the packaged config ``name`` (``.yaml`` optional)."""
    text = str(name)
    candidates = [Path(text)] if relative_to is None else [relative_to / text]
    if not text.endswith(SUFFIX):
        candidates.append(candidates[0].with_name(candidates[0].name + SUFFIX))
    for c in candidates:
        if c.is_file():
            return c
    packaged = _packaged(text)
    if packaged is not None:
        return packaged
    close = difflib.get_close_matches(text[: -len(SUFFIX)] if text.endswith(SUFFIX) else text,
                                      config_names(include_bases=True), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"config not found: {text!r} is neither a file nor a packaged config name{hint}; "
                      f"`attnguard list configs` shows the names")


def _read_mapping(path: Path) -> dict:
    """One YAML file as a mapping of sections, or a one-line ConfigError."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data, model, defense, ...)")
    return data


def load_config_file(path_or_name) -> dict:
    """The mapping a config file stands for, its ``extends:`` chain merged in (the child wins)
    and the ``extends`` key removed. A cycle or a missing parent is a one-line ConfigError."""
    path = find_config(path_or_name)
    chain: List[Path] = []
    layers: List[dict] = []
    while True:
        key = path.resolve()
        if key in chain:
            names = " -> ".join(_display(p) for p in chain + [key])
            raise ConfigError(f"config extends cycle: {names}")
        chain.append(key)
        data = _read_mapping(path)
        if isinstance(data.get("defense"), dict):
            # Each layer in one spelling before the merge: a parent's flat ``aad_alpha`` and a child's
            # ``aad: {alpha: ...}`` are the same key, and the child must win rather than clash.
            from ..defenses.config import normalize_defense_section

            data["defense"] = normalize_defense_section(data["defense"])
        parent = data.pop(EXTENDS, None)
        layers.append(data)
        if parent is None:
            break
        if not isinstance(parent, str) or not parent.strip():
            raise ConfigError(f"{_display(key)}: extends must be one config name or path, got {parent!r}")
        try:
            path = find_config(parent.strip(), relative_to=key.parent)
        except ConfigError:
            raise ConfigError(f"{_display(key)} extends {parent!r}, which is neither a file next to it nor a "
                              f"packaged config; `attnguard list configs` shows the names") from None
    out: Dict = {}
    for layer in reversed(layers):  # the root base first, the named file last
        out = merge(out, layer)
    return out


def _description(path: Path) -> str:
    """The first line of the header comment: the paper table and row the config claims."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def list_configs() -> List[Tuple[str, str]]:
    """(name, one-line description) of every packaged config, base files left out."""
    return [(name, _description(CONFIG_DIR / (name + SUFFIX))) for name in config_names()]
