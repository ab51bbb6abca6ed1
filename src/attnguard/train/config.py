"""Run configuration: dataclasses with the defaults, YAML config files (packaged names such as
``aad/mnist5k-lenet-madry`` from :mod:`attnguard.configs`, or a path), flags on top.

Layers, later ones winning: dataclass defaults -> the dataset family's adversary defaults
(the ``family`` of the dataset's registry entry; gray, MNIST-like: eps 0.3, step 0.01; rgb:
eps 8/255, step 2/255) -> the YAML file -> command-line flags. The dataclasses are the one
source of defaults; ``attnguard train`` with no arguments is the AAD paper's MNIST row (LeNet,
madry+aad, eps 0.3) on the offline ``mnist-5k`` digits.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import yaml

from ..configs import without_foreign_options
from ..data import DATASETS
from ..defenses.config import AdversaryConfig, DefenseConfig, normalize_defense_section
from ..errors import ConfigError, check_range
from ..models import MODELS
from ..utils.numbers import is_fraction, parse_number

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("piecewise", "cosine", "onecycle", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")
SWITCHES = ("auto", "on", "off")


@dataclass
class DataConfig:
    name: str = "mnist-5k"
    root: Optional[str] = None
    download: bool = False
    val_size: int = 500  # held-out training examples for the per-epoch robust validation
    # train on the first N training examples only (None: all); taken before the validation hold-out,
    # so every seed sees the same N examples (a CPU-sized protocol on a large dataset, configs/cpu/)
    train_size: Optional[int] = None

    def __post_init__(self):
        check_range("data.val_size", self.val_size, 0, integer=True)
        if self.train_size is not None:
            check_range("data.train_size", self.train_size, 2, integer=True)


@dataclass
class ModelConfig:
    name: str = "lenet"
    width: Optional[float] = 0.5  # width multiplier, for the models whose registry entry says takes_width
    pretrained: bool = False
    options: Dict[str, Any] = field(default_factory=dict)  # other builder options (widen_factor, dropout)

    def __post_init__(self):
        if self.width is not None:
            check_range("model.width", self.width, 1e-3, 16)

    def kwargs(self) -> dict:
        kw = dict(self.options)
        if self.width is not None and self.name in MODELS and MODELS.entry(self.name).meta.get("takes_width"):
            kw["width"] = self.width
        if self.pretrained:
            kw["pretrained"] = True
        return kw


@dataclass
class OptimConfig:
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "onecycle"
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])  # piecewise: fractions of training
    gamma: float = 0.1
    warmup: float = 0.25  # onecycle: fraction of training spent rising to lr
    grad_clip: Optional[float] = None

    def __post_init__(self):
        _choice("optim.optimizer", self.optimizer, OPTIMIZERS)
        _choice("optim.schedule", self.schedule, SCHEDULES)
        check_range("optim.lr", self.lr, 0, 10)
        check_range("optim.momentum", self.momentum, 0, 1)
        check_range("optim.weight_decay", self.weight_decay, 0, 1)
        check_range("optim.gamma", self.gamma, 0, 1)
        check_range("optim.warmup", self.warmup, 0, 1)
        for m in self.milestones:
            check_range("optim.milestones[]", m, 0, 1)
        if self.grad_clip is not None:
            check_range("optim.grad_clip", self.grad_clip, 0)


@dataclass
class TrainConfig:
    # 24, not 8: at 8 epochs the default run's PGD-20 overstated its AutoAttack accuracy by ~20
    # points; at 24 the gap is within 5 (README, "How far to trust the default table")
    epochs: int = 24
    batch_size: int = 50
    device: str = "auto"
    # auto: from the device's capabilities (attnguard/utils/fastpath.py); train.json records what was used and why
    amp: str = "auto"  # auto: bf16 on CUDA with native bf16 (else fp16), on CPUs with avx512_bf16/amx_bf16; else off
    channels_last: str = "auto"  # auto: on for CUDA and the CPU (measured faster; docs/PERFORMANCE.md)
    compile: str = "off"  # torch.compile; opt-in (auto: CUDA only); eager where a preset needs a double backward
    gpu_resident: str = "auto"  # keep the dataset on the GPU (off: batches sent from pinned host memory)
    val_steps: int = 10  # PGD-k of the per-epoch robust validation (Rice et al. 2020)
    log_every: int = 20  # steps between metric lines (each one is a host sync)
    checkpoint_every: int = 0  # extra mid-epoch checkpoints every N steps (0: epoch ends only)
    # extra mid-epoch checkpoints every M minutes of wall clock (0: off), so a kill in a long first
    # epoch loses at most M minutes; decided on the host clock, no device sync
    checkpoint_minutes: float = 5
    max_steps: Optional[int] = None  # stop early (smoke tests)
    deterministic: bool = False
    progress: bool = True
    # AAD Fig. 6: clean/adversarial Grad-CAM of the first N test examples at every epoch end, into
    # RUN/attention/ (train/snapshots.py; 0: off). On by default: it costs well under 1% of an epoch.
    attention_snapshots: int = 8

    def __post_init__(self):
        check_range("train.epochs", self.epochs, 1, integer=True)
        check_range("train.batch_size", self.batch_size, 1, integer=True)
        _choice("train.amp", self.amp, AMP_MODES)
        for k in ("channels_last", "compile", "gpu_resident"):
            _choice(f"train.{k}", getattr(self, k), SWITCHES)
        check_range("train.val_steps", self.val_steps, 1, integer=True)
        check_range("train.log_every", self.log_every, 1, integer=True)
        check_range("train.checkpoint_every", self.checkpoint_every, 0, integer=True)
        check_range("train.checkpoint_minutes", self.checkpoint_minutes, 0)
        if self.max_steps is not None:
            check_range("train.max_steps", self.max_steps, 1, integer=True)
        check_range("train.attention_snapshots", self.attention_snapshots, 0, integer=True)


@dataclass
class EvalConfig:
    # AutoAttack on the first 100 examples beside the gradient attacks on all: its Square component is
    # what exposes gradient masking that PGD misses (on the 8-epoch models: Square 32.7%, PGD-20 48.0%)
    attacks: List[str] = field(default_factory=lambda: ["fgsm", "pgd-20", "cw-20", "autoattack@100"])
    n_examples: int = 1000
    batch_size: int = 500
    eps: Optional[float] = None  # default: the adversary's eps
    sanity: bool = False
    checkpoint: str = "best"

    def __post_init__(self):
        check_range("eval.n_examples", self.n_examples, 0, integer=True)
        check_range("eval.batch_size", self.batch_size, 1, integer=True)
        if self.eps is not None:
            check_range("eval.eps", self.eps, 0, 1)
        _choice("eval.checkpoint", self.checkpoint, ("best", "last"))


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    defense: DefenseConfig = field(default_factory=lambda: DefenseConfig(preset="madry+aad"))
    adversary: AdversaryConfig = field(default_factory=lambda: AdversaryConfig(eps=0.3, step_size=0.1, steps=5))
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    out: Optional[str] = None

    def __post_init__(self):
        check_range("seed", self.seed, 0, 2**63 - 1, integer=True)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["defense"] = self.defense.to_dict()  # nested sections, not the object's internals
        return out


# Adversary defaults by input family, applied under the YAML file and the flags.
FAMILY_DEFAULTS = {
    "gray": {},  # the RunConfig defaults are the MNIST ones
    "rgb": {"adversary": {"eps": 8 / 255, "step_size": 2 / 255, "steps": 10},
            "optim": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9},
            "train": {"batch_size": 128}, "model": {"width": None}},
}


def dataset_family(name: str) -> str:
    """``family`` from the dataset's registry entry; ``rgb`` for a name no entry has (it fails later, by name)."""
    kind, sep, _ = str(name).partition(":")
    key = f"{kind}:<dir>" if sep else name
    return DATASETS.entry(key).meta.get("family", "rgb") if key in DATASETS else "rgb"


def _choice(name, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options":
            out[k] = _merge(without_foreign_options(k, out[k], v), v)
        else:
            out[k] = v
    return out


def _check_type(path: str, value, tp):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        errors = []
        for a in args:
            try:
                return _check_type(path, value, a)
            except ConfigError as e:
                errors.append(e)
        names = " or ".join(getattr(a, "__name__", str(a)).replace("NoneType", "null") for a in args)
        raise ConfigError(f"{path} must be {names}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path} must be null, got {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be true or false, got {value!r}")
    if tp in (int, float) and is_fraction(value):
        value = parse_number(value, path)  # eps: 8/255 in a YAML file or --set; 8/0 is one ConfigError line
    if tp in (int, float) and isinstance(value, str):
        # PyYAML (YAML 1.1) reads 1e-3, unlike 1.0e-3, as a string
        try:
            value = float(value.strip())
        except ValueError:
            pass
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path} must be a whole number, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads a bare on/off/yes/no as a boolean
            return "on" if value else "off"
        raise ConfigError(f"{path} must be a string, got {value!r}")
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return [_check_type(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value)] if args else list(value)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return dict(value)
    if tp is DefenseConfig:  # its sections come from the registries, not from dataclass fields
        return DefenseConfig.from_dict(value, path)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    return value


def from_dict(cls, data, path: str = ""):
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    where = path or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key '{full}'; valid keys{' in ' + path if path else ''}: "
                              f"{', '.join(fields)}")
        kwargs[key] = _check_type(full, value, hints[key])
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def load_yaml(path) -> dict:
    """A config file's mapping: ``path`` is a file, or a packaged config name such as
    ``aad/mnist5k-lenet-madry``; its ``extends:`` chain is merged in (see attnguard.configs)."""
    from ..configs import load_config_file

    return load_config_file(path)


def set_path(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"cannot set {dotted}: {k} is not a section")
    d[keys[-1]] = value


def resolve_config(file: Optional[str] = None, overrides: Optional[dict] = None) -> RunConfig:
    """Defaults, then family defaults, then ``file``, then ``overrides`` (a nested dict)."""
    # each layer's flat defense aliases (aad_alpha) become sections before the layers merge, so a
    # nested --set overrides an old file's flat key instead of clashing with it
    file_data = _with_defense_sections(load_yaml(file) if file else {})
    overrides = _with_defense_sections(overrides or {})
    user = _merge(file_data, overrides)
    data_section = user.get("data") if isinstance(user.get("data"), dict) else {}
    name = data_section.get("name", DataConfig.name)
    family = dataset_family(name)
    layered = _merge(FAMILY_DEFAULTS[family], user)
    defaults = RunConfig().to_dict()
    # defaults for sections the user left alone come from the dataclasses via from_dict
    merged = {}
    for section, value in layered.items():
        if isinstance(value, dict) and isinstance(defaults.get(section), dict):
            merged[section] = _merge(defaults[section], value)
        else:
            merged[section] = value
    return from_dict(RunConfig, merged)


def _with_defense_sections(layer: dict) -> dict:
    if isinstance(layer, dict) and isinstance(layer.get("defense"), dict):
        return {**layer, "defense": normalize_defense_section(layer["defense"])}
    return layer


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
