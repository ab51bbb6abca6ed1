"""``RunDir``: the one reader of a run directory, used by every command that takes a run.

``attnguard train`` writes (see ``train/rundir.py`` and the trainer)::

    config.yaml            the resolved run config, read here as the plain dict in the file
    checkpoints/best.pt    highest robust validation accuracy; checkpoints/last.pt: the latest state
    metrics.jsonl          one JSON record per logged training step and per validation
    train.json             steps, wall clock and machine of the training
    eval*.json, eval.md    evaluations (``eval.json`` from ``attnguard eval`` / the final evaluation)
    analysis/              what ``attnguard analyze`` writes by default

``attnguard eval``, ``explain``, ``analyze``, ``report``, ``export`` and ``load_model`` all open
their target with :class:`RunDir`, so each fact (which checkpoint, which eps, which test images)
has one implementation. A checkpoint file (``.pt``) or a weights-only ``.safetensors`` export is
accepted too: its config comes from the checkpoint; an export has none, only the dataset and eps
its metadata may record (or that the caller gives: ``RunDir(file, dataset=..., data_root=...)``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch

from .errors import CheckpointError, ConfigError
from .ownership import own_evals
from .utils.numbers import parse_number

PathLike = Union[str, os.PathLike]

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TRAIN_INFO_FILE = "train.json"
EVAL_FILE = "eval.json"
ANALYSIS_DIR = "analysis"
CHECKPOINTS = ("best", "last")


def config_get(config: dict, dotted: str, default=None):
    """``config["a"]["b"]`` for ``"a.b"``; ``default`` where any level is missing or not a mapping."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def parse_eps(value) -> float:
    """A radius from a number or a string such as ``"8/255"`` (see :func:`attnguard.utils.numbers.parse_number`)."""
    return parse_number(value, "eps")


def read_jsonl(path: PathLike) -> Tuple[List[dict], int]:
    """The JSON objects of a JSON-lines file, and how many lines were skipped.

    A line that is not a JSON object (e.g. one cut short when a run was killed) is skipped, not fatal.
    """
    records, skipped = [], 0
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(row, dict):
            records.append(row)
        else:
            skipped += 1
    return records, skipped


def first_examples(split, n: Optional[int] = None, start: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (default all) examples of a data split from index ``start``: float [0, 1] images
    and int64 labels."""
    stop = len(split.labels) if n is None else min(int(start) + int(n), len(split.labels))
    images = torch.as_tensor(split.images[start:stop])
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return images, torch.as_tensor(split.labels[start:stop]).long()


class RunDir:
    """A run directory (or a checkpoint / export file) opened for reading.

    Args:
        path: a run directory, a ``.pt`` checkpoint or a ``.safetensors`` export.
        config: use this dict as the run config instead of reading one (e.g. ``{}`` to show a run
            whose config.yaml is broken).
        dataset, data_root: the dataset to evaluate on, for a weights-only export (``attnguard eval
            FILE.safetensors --dataset D``); a run that records another dataset refuses it.

    ``RunDir(run)`` of a RunDir ``run`` (without other arguments) is ``run`` itself.

    Raises :class:`CheckpointError` when ``path`` does not exist and :class:`ConfigError` when
    the directory's config.yaml is not a YAML mapping.

    Attributes: ``target`` (the path given), ``path`` (the directory: the run directory, or the
    folder holding the file), ``name`` (directory name, or the file's stem).
    """

    def __new__(cls, path=None, **kwargs):
        # RunDir(run) of a RunDir is that RunDir (as Path(p) of a Path), so that a caller can open a
        # weights-only export with its dataset and hand it to a function that calls RunDir(target)
        if isinstance(path, RunDir) and not any(v is not None for v in kwargs.values()):
            return path
        return super().__new__(cls)

    def __init__(self, path: PathLike, *, config: Optional[dict] = None, dataset: Optional[str] = None,
                 data_root: Optional[str] = None):
        if path is self:  # RunDir(run) returned run itself (see __new__)
            return
        if isinstance(path, RunDir):
            path = path.target
        self._dataset, self._data_root = dataset, data_root
        target = Path(path)
        if not target.exists():
            raise CheckpointError(f"no such run directory or checkpoint: {target}")
        self.target = target
        self._file: Optional[Path] = None if target.is_dir() else target
        self.path = target if self._file is None else target.parent
        self.name = (target.name or str(target)) if self._file is None else target.stem
        # the config known without opening a checkpoint: given, or config.yaml; a checkpoint's is read lazily
        self._known = config if config is not None else (self._read_config_file() if self._file is None else None)
        self._from_checkpoint: Optional[dict] = None

    @classmethod
    def of(cls, run) -> "RunDir":
        """``run`` itself if it is a RunDir, else ``RunDir(run)``."""
        return run if isinstance(run, RunDir) else cls(run)

    def __repr__(self) -> str:
        return f"RunDir({str(self.target)!r})"

    def __str__(self) -> str:
        return str(self.target)

    # ------------------------------------------------------------------ config
    def _read_config_file(self) -> Optional[dict]:
        import yaml

        path = self.path / CONFIG_FILE
        if not path.is_file():
            return None
        try:
            cfg = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(cfg, dict):
            raise ConfigError(f"{path} must hold a mapping, got {type(cfg).__name__}")
        return cfg

    @property
    def config_text(self) -> Optional[str]:
        """The text of config.yaml (None for a checkpoint file or a directory without one)."""
        path = self.path / CONFIG_FILE
        return path.read_text() if self._file is None and path.is_file() else None

    @property
    def config(self) -> dict:
        """The run config as the file says it (old flat keys stay as they are; nothing is interpreted).

        config.yaml for a run directory; for a checkpoint file, or a directory without config.yaml,
        the config stored in the checkpoint; for an export, ``data.name`` and ``eval.eps`` from its
        metadata (a :class:`ConfigError` if it records neither).
        """
        if self._known is not None:
            return self._known
        if self.is_export:
            config = self._export_config()
            if not ({"data", "eval"} & set(config)):  # the model section alone names no run
                raise ConfigError(f"{self._file} is a weights-only export without a run config (its metadata names "
                                  "no dataset or eps); evaluate the run directory or its .pt checkpoint, or pass "
                                  "--dataset and --eps")
            return config
        if self._from_checkpoint is None:
            from .io import safe_load

            config = safe_load(self.checkpoint()).get("config")
            if not isinstance(config, dict):
                raise CheckpointError(f"{self.target} holds no run config (needed to know the dataset)")
            self._from_checkpoint = config
        return self._from_checkpoint

    @property
    def is_export(self) -> bool:
        """A weights-only ``.safetensors`` export (no run config; its metadata may name dataset and eps)."""
        return self._file is not None and self._file.suffix.lower() == ".safetensors"

    def _export_config(self) -> dict:
        """The little an export's metadata says about its run: ``data.name``, ``eval.eps``, ``defense.preset``
        and ``seed`` if recorded, and ``model.name``/``width``/``options`` from the model config every export
        holds (so that, e.g., the transfer study tells a gray-box export, same architecture, from a black-box
        one)."""
        if self._from_checkpoint is None:
            from .io import safetensors_metadata

            meta = safetensors_metadata(self._file)
            config: dict = {}
            if meta.get("dataset"):
                config["data"] = {"name": meta["dataset"]}
            if meta.get("eps"):
                config["eval"] = {"eps": meta["eps"]}
            model = _export_model_section(meta.get("model_config"))
            if model:
                config["model"] = model
            if meta.get("defense"):
                config["defense"] = {"preset": meta["defense"]}
            if (meta.get("seed") or "").isdigit():
                config["seed"] = int(meta["seed"])
            self._from_checkpoint = config
        return self._from_checkpoint

    def get(self, dotted: str, default=None):
        """A config value by dotted key (``"data.name"``), or ``default``."""
        # an export's metadata may record nothing: then every key has its default (config would raise)
        config = self._export_config() if self._known is None and self.is_export else self.config
        return config_get(config, dotted, default)

    @property
    def dataset(self) -> str:
        """The run's ``data.name``; for an export, the ``dataset`` given when opening it, else its metadata's."""
        name = self.get("data.name")
        if self._dataset is not None:
            # a run that knows its dataset is evaluated on it: another one would mislabel the numbers
            if isinstance(name, str) and name and name != self._dataset and not self.is_export:
                raise ConfigError(f"{self.target} was trained on {name}, not {self._dataset}; --dataset is for a "
                                  "weights-only .safetensors export")
            return self._dataset
        if not isinstance(name, str) or not name:
            if self.is_export:
                raise ConfigError(f"{self.target} is a weights-only export and its metadata names no dataset; "
                                  "pass --dataset D (attnguard list datasets)")
            raise ConfigError(f"the run config of {self.target} has no data.name; cannot tell which dataset it "
                              "was trained on")
        return name

    @property
    def data_root(self) -> Optional[str]:
        return self._data_root if self._data_root is not None else self.get("data.root")

    @property
    def eps(self) -> float:
        """The evaluation radius: ``eval.eps``, else the training adversary's ``adversary.eps``."""
        for key in ("eval.eps", "adversary.eps"):
            value = self.get(key)
            if value is not None:
                return parse_eps(value)
        if self.is_export:
            raise ConfigError(f"{self.target} is a weights-only export and its metadata records no eps; pass --eps E")
        raise ConfigError(f"the run config of {self.target} has no eval.eps or adversary.eps; pass eps explicitly")

    @property
    def seed(self) -> int:
        return int(self.get("seed", 0) or 0)

    # ------------------------------------------------------------------ checkpoints and model
    def checkpoint(self, which: Optional[str] = None) -> Path:
        """The checkpoint file: ``checkpoints/{which}.pt``, else ``last.pt``, else ``best.pt``.

        ``which`` defaults to the config's ``eval.checkpoint``, else ``best``. A RunDir opened on a
        file returns that file.
        """
        if self._file is not None:
            return self._file
        if which is None:
            which = config_get(self._known or {}, "eval.checkpoint") or "best"
        if which not in CHECKPOINTS:
            raise ConfigError(f"the checkpoint to use (eval.checkpoint) must be one of {', '.join(CHECKPOINTS)}, "
                              f"got {which!r}")
        for name in (which, "last", "best"):
            cand = self.path / CHECKPOINT_DIR / f"{name}.pt"
            if cand.is_file():
                return cand
        raise CheckpointError(f"run directory {self.path} has no checkpoint (looked for {CHECKPOINT_DIR}/{which}.pt "
                              f"and {CHECKPOINT_DIR}/last.pt)")

    def has_checkpoint(self) -> bool:
        if self._file is not None:
            return True
        return any((self.path / CHECKPOINT_DIR / f"{n}.pt").is_file() for n in CHECKPOINTS)

    def model(self, device: Union[str, torch.device] = "cpu", which: Optional[str] = None):
        """The trained model (eval mode, [0, 1] inputs) of :meth:`checkpoint` ``(which)``, on ``device``."""
        from .io import load_checkpoint_model, load_safetensors
        from .utils.runtime import pick_device

        device = pick_device(device) if isinstance(device, str) and device.split(":")[0] == "auto" else device
        path = self.checkpoint(which)
        if path.suffix == ".safetensors":
            return load_safetensors(path, device)
        return load_checkpoint_model(path, device)

    # ------------------------------------------------------------------ data
    def load_dataset(self):
        """The run's dataset (``data.name`` / ``data.root`` of its config)."""
        from .data import load_dataset

        return load_dataset(self.dataset, root=self.data_root)

    def test_examples(self, n: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` test images (float [0, 1]) and labels (int64) of the run's dataset."""
        return first_examples(self.load_dataset().test, n)

    # ------------------------------------------------------------------ results
    def _json(self, path: Path, notes: Optional[list]):
        """A JSON object file; a broken one raises, or with ``notes`` is noted there and skipped (None)."""
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            problem = f"{path.relative_to(self.path)} is not valid JSON ({e.msg} at line {e.lineno})"
        else:
            if isinstance(data, dict):
                return data
            problem = f"{path.relative_to(self.path)} does not hold a JSON object"
        if notes is None:
            raise CheckpointError(f"{self.path}: {problem}")
        notes.append(f"{problem}; it was left out")
        return None

    def eval_files(self) -> List[Path]:
        """Every ``eval*.json``: ``eval.json`` first, then by name."""
        return sorted(self.path.glob("eval*.json"), key=lambda f: (f.name != EVAL_FILE, f.name))

    def evals(self, notes: Optional[list] = None) -> List[Tuple[Path, dict]]:
        """``[(path, parsed eval*.json)]`` in :meth:`eval_files` order.

        A file that is not a JSON object raises :class:`CheckpointError`; with ``notes`` (a list)
        it is noted there and left out instead. For a checkpoint or export target, only the files
        that measured that model (:func:`attnguard.ownership.own_evals`).
        """
        out = [(f, self._json(f, notes)) for f in self.eval_files()]
        out = [(f, e) for f, e in out if e is not None]
        if self._file is None:
            return out
        from .io import weights_fingerprint

        return own_evals(self._file, out, lambda: weights_fingerprint(self.model("cpu")), notes)

    def train_info(self) -> dict:
        """``train.json`` (steps, seconds, machine), or ``{}`` where training wrote none."""
        return self._json(self.path / TRAIN_INFO_FILE, None) or {}

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    def metrics(self) -> List[dict]:
        """The records of ``metrics.jsonl`` (``[]`` without one; lines cut short by a kill are skipped)."""
        return read_jsonl(self.metrics_file)[0] if self.metrics_file.is_file() else []

    @property
    def analysis_dir(self) -> Path:
        return self.path / ANALYSIS_DIR

    def analysis(self, notes: Optional[list] = None) -> Optional[dict]:
        """``analysis/analysis.json`` as written by ``attnguard analyze``, or None."""
        return self._json(self.analysis_dir / "analysis.json", notes)


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu", which: Optional[str] = None):
    """The trained model of a run directory, checkpoint (``.pt``) or exported ``.safetensors`` file.

    Returns an ``nn.Module`` in eval mode, with normalization inside, taking [0, 1] inputs.
    For a run directory, ``which`` picks ``best`` (highest robust validation accuracy) or
    ``last``; by default the run config's ``eval.checkpoint``, else ``best`` (see
    :meth:`attnguard.rundir.RunDir.checkpoint`).
    """
    return RunDir(path).model(device, which)


def _export_model_section(text) -> dict:
    """``model.name``, ``model.width`` and ``model.options`` as a run config writes them, from an export's
    ``model_config`` metadata (``{}`` if it is missing or unreadable: the export still loads by its flat keys)."""
    try:
        cfg = json.loads(text) if text else None
    except ValueError:
        return {}
    if not isinstance(cfg, dict) or not cfg.get("arch"):
        return {}
    options = dict(cfg.get("kwargs") or {})
    model = {"name": str(cfg["arch"])}
    if "width" in options:
        model["width"] = options.pop("width")
    model["options"] = options
    return model
