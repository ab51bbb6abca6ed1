"""Robust validation on the held-out slice after every epoch: what picks ``best.pt``.

Rice et al. 2020 (Overfitting in adversarially robust deep learning) show that robust test accuracy
peaks early and then falls while training loss keeps dropping; keeping the checkpoint with the best
robust accuracy on held-out data recovers most of the gap. This module holds that measurement
(clean and PGD-k accuracy, ``train.val_steps``) and its attack, which the attention snapshots
(``snapshots.py``) reuse so that their adversarial maps show the same attack that judges ``best.pt``.
"""

from __future__ import annotations

import torch

from ..attacks import PGD
from ..data import BatchLoader
from ..utils.precision import full_precision
from ..utils.runtime import rng_state, set_rng_state

VAL_BATCH = 500  # examples per validation batch (memory only: the counts do not depend on it)


def validation_attack(cfg, skip_misclassified: bool = True):
    """The validation's PGD-k at the run's eps and seed, and its name (``pgd-k``).

    The step is at least 2.5 eps / k, the evaluation's rule for pgd-K: k steps then travel 2.5 eps, enough
    to cross the ball from a random start and still reach its boundary, however short the validation PGD.
    """
    adv, k = cfg.adversary, cfg.train.val_steps
    attack = PGD(adv.eps, alpha=max(adv.step_size, 2.5 * adv.eps / k), steps=k, norm=adv.norm, seed=cfg.seed,
                 skip_misclassified=skip_misclassified)
    return attack, f"pgd-{k}"


def robust_validation(model, split, cfg, device) -> dict:
    """Clean and PGD-k accuracy of ``model`` on ``split``, in eval mode and fp32; {} for an empty split.

    The global RNG is restored afterwards, so the training trajectory does not depend on whether or
    how validation runs (the PGD has its own seeded generator anyway). No autocast and no TF32
    (utils/precision.py): this judges robustness. ``model`` is left in train mode, as the trainer
    expects between steps.
    """
    n = len(split.labels)
    if n == 0:
        return {}
    saved = rng_state(device)
    try:
        return _measure(model, split, cfg, device, n)
    finally:
        set_rng_state(saved, device)


def _measure(model, split, cfg, device, n: int) -> dict:
    attack, name = validation_attack(cfg)
    model.eval()
    loader = BatchLoader(split, VAL_BATCH, shuffle=False, device=device)
    correct = torch.zeros((), device=device)
    robust = torch.zeros((), device=device)
    with full_precision(device.type):
        for x, y in loader:
            with torch.no_grad():
                correct += (model(x).argmax(1) == y).sum()
            x_adv = attack(model, x, y)
            with torch.no_grad():
                robust += (model(x_adv).argmax(1) == y).sum()
    model.train()
    return {"acc_clean": float(correct) / n, "acc_adv": float(robust) / n, "n": n, "attack": name}
