"""Optimizers and per-step learning-rate schedules."""

from __future__ import annotations

import math

import torch

from .config import OptimConfig


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: OptimConfig, step: int, total: int) -> float:
    """Multiplier of the base lr at ``step`` of ``total`` steps.

    piecewise: Madry et al.'s step decay by ``gamma`` at each milestone (fractions of training);
    cosine: half-cosine to zero; onecycle: linear rise over ``warmup`` then linear fall to zero
    (the short schedules of fast adversarial training); constant.
    """
    t = min(step / max(total, 1), 1.0)
    if cfg.schedule == "piecewise":
        return cfg.gamma ** sum(t >= m for m in cfg.milestones)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "onecycle":
        w = cfg.warmup
        if w > 0 and t < w:
            return t / w
        return max(0.0, (1 - t) / max(1 - w, 1e-12))
    return 1.0


def build_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, total_steps))
