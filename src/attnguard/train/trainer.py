"""The training loop: data resident on the device, no host syncs between log points.

One step: ``loss, parts = objective(model, x, y)`` (the defense crafts its adversarial batch),
backward, optimizer and scheduler step, and device-side metric sums. Every ``log_every``
steps the sums are read once, checked for NaN/inf and appended to ``metrics.jsonl``. Every
epoch: robust validation with PGD-k on a held-out slice, ``last.pt`` and, when the robust
accuracy improved, ``best.pt`` (Rice et al. 2020: robust overfitting). Checkpoints hold the
model, optimizer, scheduler, RNG and data-order state, so ``--resume`` after a kill finishes
with the same result as an uninterrupted run (bitwise on the CPU with deterministic settings).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..attacks import PGD
from ..data import BatchLoader, load_dataset, split_holdout
from ..defenses import build_objective
from ..errors import AttnGuardError
from ..io import FORMAT, atomic_torch_save, safe_load
from ..models import create_model
from ..utils.runtime import init_distributed, rng_state, seed_everything, set_rng_state
from .config import RunConfig
from .metrics import MetricsLog, Running
from .optim import build_optimizer, build_scheduler
from .rundir import prepare_run_dir


class TrainingDiverged(AttnGuardError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def _switch(value: str, device: torch.device) -> bool:
    return value == "on" or (value == "auto" and device.type == "cuda")


def _amp_dtype(cfg: RunConfig, device: torch.device):
    mode = cfg.train.amp
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if mode == "fp16" else torch.bfloat16


class Trainer:
    def __init__(self, cfg: RunConfig, *, resume: bool = False, echo=print):
        self.cfg = cfg
        self.echo = echo
        self.dist, self.device = init_distributed(cfg.train.device)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.seed + self.dist.rank)
        self.run = prepare_run_dir(cfg, resume, self.dist.is_main)
        self.resume = resume
        self.log = MetricsLog(self.run / "metrics.jsonl" if self.dist.is_main else None)

        ds = load_dataset(cfg.data.name, root=cfg.data.root, download=cfg.data.download)
        self.info = ds.info
        n_val = min(cfg.data.val_size, len(ds.train.labels) // 5)
        self.train_split, self.val_split = split_holdout(ds.train, n_val, cfg.seed)
        self.test_split = ds.test
        model = create_model(cfg.model.name, num_classes=ds.info.num_classes, input_size=ds.info.input_size,
                             mean=ds.info.mean, std=ds.info.std, **cfg.model.kwargs())
        self.channels_last = _switch(cfg.train.channels_last, self.device)
        model = model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.model = model
        self.net = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if _switch(cfg.train.compile, self.device):
            self.net = torch.compile(self.net)
        self.objective = build_objective(cfg.defense, cfg.adversary)
        if cfg.train.batch_size % self.dist.world_size:
            raise AttnGuardError(f"train.batch_size {cfg.train.batch_size} must divide by the number of "
                                 f"processes ({self.dist.world_size})")
        data_device = self.device if _switch(cfg.train.gpu_resident, self.device) or self.device.type == "cpu" else "cpu"
        self.loader = BatchLoader(self.train_split, cfg.train.batch_size // self.dist.world_size, shuffle=True,
                                  augment=ds.info.augment, device=data_device, seed=cfg.seed, drop_last=True,
                                  rank=self.dist.rank, world_size=self.dist.world_size)
        if len(self.loader) == 0:
            raise AttnGuardError(f"train.batch_size {cfg.train.batch_size} is larger than the training set "
                                 f"({len(self.train_split.labels)} examples)")
        self.steps_per_epoch = len(self.loader)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.opt = build_optimizer(self.model.parameters(), cfg.optim)
        self.sched = build_scheduler(self.opt, cfg.optim, self.total_steps)
        self.amp_dtype = _amp_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.epoch, self.batch, self.step, self.best = 0, 0, 0, -1.0
        self.running = Running(self.device)
        self.bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        if resume:
            self._load(self.run / "checkpoints" / "last.pt")

    # -- checkpoints -------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "format": FORMAT, "version": 1, "model_config": self.model.config,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "epoch": self.epoch, "batch": self.batch, "step": self.step, "best_robust": self.best,
            "rng": rng_state(), "running": self.running.state_dict(), "config": self.cfg.to_dict(),
        }

    def _save(self, name: str) -> None:
        if self.dist.is_main:
            atomic_torch_save(self._state(), self.run / "checkpoints" / f"{name}.pt")

    def _load(self, path: Path) -> None:
        s = safe_load(path, map_location="cpu")
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["optimizer"])
        self.sched.load_state_dict(s["scheduler"])
        if self.scaler and s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        self.epoch, self.batch, self.step, self.best = s["epoch"], s["batch"], s["step"], s["best_robust"]
        set_rng_state(s["rng"])
        self.running.load_state_dict(s["running"])
        self.log.truncate_after(self.step)
        self.echo(f"resumed {self.run} at epoch {self.epoch + 1}, step {self.step}")

    # -- one step ----------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.net.train()
        with self._autocast():
            loss, parts = self.objective(self.net, x, y)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.sched.step()
        finite = torch.isfinite(loss.detach())
        self.bad_step = torch.where((self.bad_step < 0) & ~finite, torch.full_like(self.bad_step, self.step + 1),
                                    self.bad_step)
        self.running.add({"loss": loss.detach(), **parts})

    def _flush(self, t0: float, bar=None) -> None:
        """One host sync: NaN check, reduce across ranks, log a line."""
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(self.bad_step, op=dist.ReduceOp.MAX)
        bad = int(self.bad_step)
        if bad >= 0:
            raise TrainingDiverged(
                f"loss became NaN or inf at epoch {self.epoch + 1}, step {bad}; training stopped. The last "
                f"good checkpoint is {self.run / 'checkpoints' / 'last.pt'} (lower the learning rate, or "
                "try train.amp=off)")
        self.running.reduce(self.dist.enabled)
        stats = self.running.mean()
        self.running = Running(self.device)
        rec = {"epoch": self.epoch + 1, "step": self.step, "split": "train",
               "lr": self.sched.get_last_lr()[0], "seconds": round(time.time() - t0, 3), **stats}
        self.log.write(rec)
        if bar is not None:
            bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items() if k in ("loss", "acc_clean", "acc_adv")})

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> dict:
        """Clean and PGD-k accuracy on the held-out slice, in eval mode (rank 0's view)."""
        n = len(self.val_split.labels)
        if n == 0:
            return {}
        adv = self.cfg.adversary
        k = self.cfg.train.val_steps
        attack = PGD(adv.eps, alpha=max(adv.step_size, 2.5 * adv.eps / k), steps=k, norm=adv.norm,
                     seed=self.cfg.seed)
        self.model.eval()
        loader = BatchLoader(self.val_split, 500, shuffle=False, device=self.device)
        correct = torch.zeros((), device=self.device)
        robust = torch.zeros((), device=self.device)
        for x, y in loader:
            with torch.no_grad(), self._autocast():
                correct += (self.model(x).argmax(1) == y).sum()
            with self._autocast():
                x_adv = attack(self.model, x, y)
            with torch.no_grad(), self._autocast():
                robust += (self.model(x_adv).argmax(1) == y).sum()
        self.model.train()
        return {"acc_clean": float(correct) / n, "acc_adv": float(robust) / n, "n": n, "attack": f"pgd-{k}"}

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> Path:
        cfg = self.cfg
        if self.dist.is_main and not self.resume:
            self.echo(f"run directory: {self.run}")
        t0 = time.time()
        while self.epoch < cfg.train.epochs and self.step < self.total_steps:
            self.loader.set_epoch(self.epoch)
            bar = None
            if cfg.train.progress and self.dist.is_main:
                bar = tqdm(total=self.steps_per_epoch, initial=self.batch, unit="batch", dynamic_ncols=True,
                           desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}", leave=True)
            for x, y in self.loader.iter_from(self.batch):
                self.train_step(x, y)
                self.step += 1
                self.batch += 1
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.train.log_every == 0:
                    self._flush(t0, bar)
                if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                    self._flush(t0, bar)
                    self._save("last")
                if self.step >= self.total_steps:
                    break
            if bar is not None:
                bar.close()
            self._flush(t0)
            self.epoch += 1
            self.batch = 0
            val = self.validate() if self.dist.is_main else {}
            if val:
                self.log.write({"epoch": self.epoch, "step": self.step, "split": "val",
                                "seconds": round(time.time() - t0, 3), **val})
                self.echo(f"epoch {self.epoch}: val clean {val['acc_clean']:.3f}, "
                          f"{val['attack']} {val['acc_adv']:.3f}")
            improved = bool(val) and val["acc_adv"] > self.best
            if improved:
                self.best = val["acc_adv"]
            self._save("last")
            if improved or not val:
                self._save("best")
            self._barrier()
        return self.run

    def _barrier(self):
        if self.dist.enabled:
            import torch.distributed as dist

            dist.barrier()


def train(cfg: RunConfig, *, resume: bool = False, echo=print) -> Path:
    """Train a run end to end and return its directory (evaluation is separate: ``run_final_eval``)."""
    return Trainer(cfg, resume=resume, echo=echo).fit()
