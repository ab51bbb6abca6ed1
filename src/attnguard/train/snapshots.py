"""Attention snapshots during training (AAD Fig. 6: activation-map evolution over training).

At every epoch boundary (and once before the first step, epoch 0 = the initial weights) the first
``train.attention_snapshots`` test examples get their clean and adversarial Grad-CAM (AAD eq. 1-2,
of the predicted class) saved to ``RUN/attention/epoch-EEE.npz``. The ``attention-evolution`` study
(attnguard/studies/evolution.py) draws them as a strip, epochs left to right.

Off the hot path and invisible to training: it runs on rank 0 after validation, in eval mode and in
fp32, with the validation's PGD-k at the run's seed (its own generator), and the global RNG is
restored afterwards, so losses and checkpoints are the same with it on or off. Unlike validation it
attacks every example (``skip_misclassified=False``): early in training most examples are
misclassified, and the strip should still show an adversarial map in every column.

Resume-safe: the file name is the epoch count, writes are atomic, and a snapshot is only taken at a
boundary (``trainer.batch == 0``); a resumed run writes the epochs still to come, and rewriting an
epoch that exists (a kill between the snapshot and ``last.pt``) writes the same weights' maps.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

SNAPSHOT_DIR = "attention"  # inside the run directory


def snapshot_path(run, epoch: int) -> Path:
    return Path(run) / SNAPSHOT_DIR / f"epoch-{int(epoch):03d}.npz"


def snapshot_files(run) -> list:
    """The snapshot files of a run, ordered by epoch."""
    return sorted((Path(run) / SNAPSHOT_DIR).glob("epoch-[0-9][0-9][0-9]*.npz"),
                  key=lambda p: int(p.stem.split("-", 1)[1]))


def snapshot_attention(trainer) -> Optional[Path]:
    """Write the current epoch's snapshot for ``trainer`` (a :class:`~attnguard.train.trainer.Trainer`).

    Does nothing when ``train.attention_snapshots`` is 0, off rank 0, or inside an epoch.
    Returns the file written, or None.
    """
    n = int(trainer.cfg.train.attention_snapshots)
    if not n or not trainer.dist.is_main or trainer.batch != 0 or len(trainer.test_split.labels) == 0:
        return None
    from ..utils.runtime import rng_state, set_rng_state

    saved = rng_state(trainer.device)
    try:
        t0 = time.perf_counter()
        arrays = attention_snapshot(trainer.inner, trainer.test_split, n, trainer.cfg, trainer.device)
        arrays.update(epoch=trainer.epoch, step=trainer.step, seconds=time.perf_counter() - t0)
        path = snapshot_path(trainer.run, trainer.epoch)
        write_snapshot(path, arrays)
        return path
    finally:
        set_rng_state(saved, trainer.device)


def snapshot_attack(cfg):
    """The per-epoch validation's PGD-k (``train.val_steps``, the run's eps and seed), attacking every example."""
    from .holdout import validation_attack  # the attack that judges best.pt, so the snapshots show it

    return validation_attack(cfg, skip_misclassified=False)


def attention_snapshot(model, split, n: int, cfg, device) -> dict:
    """Clean and adversarial Grad-CAM of the first ``n`` examples of ``split`` (numpy arrays).

    Keys: ``clean_cam``/``adv_cam`` ``[N, h, w]`` (unnormalized, predicted class), ``clean_pred``,
    ``clean_conf``, ``adv_pred``, ``adv_conf``, ``labels``, ``index``, ``eps``, ``attack``.
    """
    from ..attention import grad_cam
    from ..rundir import first_examples
    from ..utils.modes import eval_mode
    from ..utils.precision import full_precision

    images, labels = first_examples(split, n)
    x, y = images.to(device), labels.to(device)
    attack, name = snapshot_attack(cfg)
    out = {}
    with eval_mode(model), full_precision(torch.device(device).type):
        x_adv = attack(model, x, y)
        for key, batch in (("clean", x), ("adv", x_adv)):
            cam, logits = grad_cam(model, None, batch, return_logits=True)
            prob = torch.softmax(logits.float(), 1)
            conf, pred = prob.max(1)
            out[f"{key}_cam"] = cam.float().cpu().numpy()
            out[f"{key}_pred"] = pred.cpu().numpy()
            out[f"{key}_conf"] = conf.cpu().numpy()
    out.update(labels=labels.numpy(), index=np.arange(len(labels)), eps=float(cfg.adversary.eps), attack=name)
    return out


def write_snapshot(path: Path, arrays: dict) -> None:
    from ..io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def read_snapshot(path) -> dict:
    """One snapshot file as a dict of numpy arrays (scalars as Python values)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}
