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

import torch
from tqdm.auto import tqdm

from ..data import BatchLoader, first_n, load_dataset, split_holdout
from ..defenses import build_objective
from ..errors import AttnGuardError, CheckpointError
from ..io import FORMAT, atomic_torch_save, safe_load
from ..models import create_model
from ..utils.fastpath import Choice, describe
from ..utils.runtime import (all_gather_object, init_distributed, on_main, rng_state, seed_everything,
                             set_rng_state, shutdown_distributed)
from .config import RunConfig
from .fast import compile_blocker, craft_through, fast_path
from .holdout import robust_validation
from .interrupt import SigintFlag, TrainingInterrupted, resume_command
from .metrics import MetricsLog, Running
from .optim import build_optimizer, build_scheduler
from .rundir import check_run_dir, default_run_dir, open_run_dir, write_train_info
from .snapshots import snapshot_attention

EXIT_DIVERGED = 3  # the CLI's exit status when training stops on a NaN/inf loss (bad input is 2)


class TrainingDiverged(AttnGuardError):
    """The loss became NaN or inf; training stopped and the last good checkpoint is kept unchanged."""

    exit_code = EXIT_DIVERGED


class Trainer:
    def __init__(self, cfg: RunConfig, *, resume: bool = False, echo=print):
        self.cfg = cfg
        self.dist, self.device = init_distributed(cfg.train.device)
        self.echo = echo if self.dist.is_main else (lambda *a, **k: None)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.seed + self.dist.rank)
        # Rank 0 names the run (the default name has a timestamp) and checks it; every rank gets
        # the same path, or the same error. Nothing is written until all checks have passed.
        self.run = Path(on_main(lambda: str(_checked_run_dir(cfg, resume)), self.dist))
        self.resume = resume
        self.log = MetricsLog(self.run / "metrics.jsonl" if self.dist.is_main else None)

        ds = _load_dataset(cfg, self.dist)
        self.info = ds.info
        pool = first_n(ds.train, cfg.data.train_size)
        n_val = min(cfg.data.val_size, len(pool.labels) // 5)
        self.train_split, self.val_split = split_holdout(pool, n_val, cfg.seed)
        self.test_split = ds.test
        inner = create_model(cfg.model.name, num_classes=ds.info.num_classes, input_size=ds.info.input_size,
                             mean=ds.info.mean, std=ds.info.std, **cfg.model.kwargs())
        self.fast = fast_path(cfg, self.device)
        self.channels_last = bool(self.fast["channels_last"].value)
        inner = inner.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        # inner: the plain model (parameters, checkpoints, validation); model: what the training step
        # calls, possibly wrapped by DDP and/or torch.compile (the defenses' naming, attnguard.defenses.base)
        self.inner = inner
        self.model = inner
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # DDP broadcasts rank 0's initial weights; gradients are averaged over ranks in backward
            self.model = DDP(inner, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.objective = build_objective(cfg.defense, cfg.adversary)
        self.objective.layers(inner)  # a bad defense.*.layer name exits 2 here, before the run dir is written
        if self.fast["compile"].value:
            blocker = compile_blocker(self.objective, inner)
            if blocker:
                self.fast["compile"] = Choice(False, f"fell back to eager: {blocker}")
                self.echo(f"warning: train.compile: {blocker}; training runs eagerly")
            else:
                self.model = torch.compile(self.model)
                craft_through(self.objective.base, torch.compile(inner) if self.dist.enabled else self.model)
        if cfg.train.batch_size % self.dist.world_size:
            raise AttnGuardError(f"train.batch_size {cfg.train.batch_size} must divide by the number of "
                                 f"processes ({self.dist.world_size}): it is the global batch")
        # not resident: the split stays in host memory and each batch is sent to the device
        data_device = self.device if self.fast["gpu_resident"].value else "cpu"
        self.loader = BatchLoader(self.train_split, cfg.train.batch_size // self.dist.world_size, shuffle=True,
                                  augment=ds.info.augment, device=data_device, seed=cfg.seed, drop_last=True,
                                  rank=self.dist.rank, world_size=self.dist.world_size, target=self.device)
        if len(self.loader) == 0:
            raise AttnGuardError(f"train.batch_size {cfg.train.batch_size} is larger than the training set "
                                 f"({len(self.train_split.labels)} examples)")
        self.steps_per_epoch = len(self.loader)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.opt = build_optimizer(self.inner.parameters(), cfg.optim)
        self.sched = build_scheduler(self.opt, cfg.optim, self.total_steps)
        self.amp_dtype = self.fast["amp"].value
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self._stepped = True  # whether the last scaler.step ran the optimizer (see train_step)
        if self.scaler:
            self.opt.register_step_post_hook(self._optimizer_stepped)
        self.epoch, self.batch, self.step, self.best = 0, 0, 0, -1.0
        self.running = Running(self.device)
        self.bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._interrupted, self._last_save = SigintFlag(), time.monotonic()
        last = self.run / "checkpoints" / "last.pt"
        if resume and not on_main(last.is_file, self.dist):
            # killed before its first checkpoint: nothing to restore, start the same run from step 0
            self.echo(f"note: {self.run} has no checkpoint yet; training starts from step 0")
            resume = self.resume = False
        state = self._load(last) if resume else None
        on_main(lambda: open_run_dir(self.run, cfg, resume), self.dist)
        if state is not None:
            self.log.truncate(lines=state.get("metrics_lines"), step=self.step)
            getattr(self.objective.base, "seek", lambda step: None)(self.step)  # ensemble's source rotation
            self.echo(f"resumed {self.run} at epoch {self.epoch + 1}, step {self.step}")

    # -- checkpoints -------------------------------------------------------------------------
    def _state(self, rngs: list) -> dict:
        return {
            "format": FORMAT, "version": 1, "model_config": self.inner.config,
            "model": {k: v.detach().cpu() for k, v in self.inner.state_dict().items()},
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "epoch": self.epoch, "batch": self.batch, "step": self.step, "best_score": self.best,
            "rng": rngs[0], "rng_ranks": rngs, "running": self.running.state_dict(),
            "metrics_lines": self.log.lines, "world_size": self.dist.world_size, "config": self.cfg.to_dict(),
        }

    def _save(self, *names: str) -> None:
        """Write checkpoints ``names`` (rank 0; atomic). Collective: every rank's RNG state goes in."""
        rngs = all_gather_object(rng_state(self.device), self.dist)

        def write():
            state = self._state(rngs)
            for name in names:
                atomic_torch_save(state, self.run / "checkpoints" / f"{name}.pt")

        on_main(write, self.dist)
        self._last_save = time.monotonic()

    def _load(self, path: Path) -> dict:
        """Restore everything a bitwise resume needs; returns the checkpoint (rank 0 reads it, all ranks get it)."""
        s = on_main(lambda: safe_load(path, map_location="cpu"), self.dist)
        try:
            self.inner.load_state_dict(s["model"])
            self.opt.load_state_dict(s["optimizer"])
            self.sched.load_state_dict(s["scheduler"])
            if self.scaler and s.get("scaler"):
                self.scaler.load_state_dict(s["scaler"])
            self.epoch, self.batch, self.step, self.best = (int(s["epoch"]), int(s["batch"]), int(s["step"]),
                                                            float(s.get("best_score", s.get("best_robust"))))
            self.running.load_state_dict(s["running"])
            rngs = s.get("rng_ranks") or [s["rng"]]
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CheckpointError(f"{path} does not fit this run's config (model, optimizer or format "
                                  f"differ): {first}") from None
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank], self.device)
        else:  # another number of processes: fresh, distinct streams (the run is no longer bitwise-reproducible)
            seed_everything((self.cfg.seed + 7919 * (self.step + 1) + self.dist.rank) % 2**63)
            self.echo(f"note: {path} was written by {len(rngs)} process(es), this run has "
                      f"{self.dist.world_size}; random streams are reseeded")
        return s

    # -- one step ----------------------------------------------------------------------------
    def _optimizer_stepped(self, *_args) -> None:
        self._stepped = True

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.model.train()
        # Zeroed (to None) before the adversary runs: an attack keeps the parameters' .grad as it found
        # them, and with none there it has nothing to copy.
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            loss, parts = self.objective(self.model, x, y)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.inner.parameters(), self.cfg.optim.grad_clip)
        if self.scaler:
            # The scaler skips the optimizer step when the gradients overflowed; the schedule must not
            # advance then. The optimizer's step hook says whether it ran, with no host sync of its own
            # (GradScaler.step already reads found_inf for a non-fused optimizer, build_optimizer's kind).
            self._stepped = False
            self.scaler.step(self.opt)
            self.scaler.update()
            if self._stepped:
                self.sched.step()
        else:
            self.opt.step()
            self.sched.step()
        finite = torch.isfinite(loss.detach())
        self.bad_step = torch.where((self.bad_step < 0) & ~finite, torch.full_like(self.bad_step, self.step + 1),
                                    self.bad_step)
        self.running.add({"loss": loss.detach(), **parts})

    def _flush(self, t0: float, bar=None) -> None:
        """One host sync: NaN check, reduce across ranks, log a line (nothing to do without new steps)."""
        if self.running.steps == 0:
            return
        self._check_finite()
        self.running.reduce(self.dist.enabled)
        stats = self.running.mean()
        self.running = Running(self.device)
        rec = {"epoch": self.epoch + 1, "step": self.step, "split": "train",
               "lr": self.sched.get_last_lr()[0], "seconds": round(time.time() - t0, 3), **stats}
        self.log.write(rec)
        if bar is not None:
            bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items() if k in ("loss", "acc_clean", "acc_adv")})

    def _check_finite(self) -> None:
        """Raise TrainingDiverged if a step since the start had a NaN/inf loss (one host sync)."""
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(self.bad_step, op=dist.ReduceOp.MAX)
        bad = int(self.bad_step)
        if bad >= 0:
            last = self.run / "checkpoints" / "last.pt"
            kept = (f"the last good checkpoint {last} is kept unchanged" if last.is_file()
                    else "no checkpoint had been written yet")
            raise TrainingDiverged(
                f"loss became NaN or inf at epoch {self.epoch + 1}, step {bad}; training stopped and {kept} "
                "(lower the learning rate, set optim.grad_clip, or try train.amp=off)")

    # -- validation (train/holdout.py) -------------------------------------------------------
    def validate(self) -> dict:
        """Clean and PGD-k accuracy on the held-out slice, in eval mode and fp32, RNG untouched (rank 0's view)."""
        return robust_validation(self.inner, self.val_split, self.cfg, self.device)

    def _selection_score(self, val: dict) -> float:
        """What ``best.pt`` maximizes: robust accuracy (the other breaks ties) for a defense with an adversary,
        clean accuracy for one without (``standard``): its robust accuracy is ~0 at every epoch, and a few
        held-out images robust by chance at epoch 1 would otherwise pick the least trained model (seen:
        mnist-5k at 24 epochs kept epoch 1, 78.5% clean, where the last epoch had 97.6%)."""
        first, second = ("acc_adv", "acc_clean") if self.objective.base.has_adversary else ("acc_clean", "acc_adv")
        return val[first] + 1e-6 * val[second]

    # -- interrupts and timed checkpoints -----------------------------------------------------
    # (Ctrl-C: train/interrupt.py)
    def _boundary(self) -> tuple:
        """(checkpoint now because train.checkpoint_minutes passed, stop because of Ctrl-C).

        Host clock and a host flag, read every step in one process. Under torchrun the ranks must
        agree (the save is collective), so rank 0 decides, only at log points, which sync anyway.
        """
        minutes = self.cfg.train.checkpoint_minutes

        def decide():
            due = bool(minutes) and time.monotonic() - self._last_save >= 60 * minutes
            return due, bool(self._interrupted)

        if not self.dist.enabled:
            return decide()
        if self.step % self.cfg.train.log_every:
            return False, False
        return tuple(on_main(decide, self.dist))

    def _stop_interrupted(self):
        """After Ctrl-C, once ``last.pt`` holds the current step: say so, with the command that resumes."""
        if self.dist.is_main:  # train.json counts this segment's wall clock; the resume adds its own
            self._write_train_info(time.time() - self._t0, complete=False)
        raise TrainingInterrupted(f"interrupted: saved {self.run / 'checkpoints' / 'last.pt'} at step {self.step}; "
                                  f"resume with: {resume_command(self.run)}")

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> Path:
        with self._interrupted.catching():
            return self._fit()

    def _fit(self) -> Path:
        cfg = self.cfg
        if not self.resume:
            self.echo(f"run directory: {self.run}")
        t0 = self._t0 = time.time()
        self._cpu0 = time.process_time()
        self._last_save = time.monotonic()
        snapshot_attention(self)  # epoch 0 (AAD Fig. 6); rank 0, boundaries only, RNG untouched
        # batch > 0: a checkpoint from inside an epoch whose end (validation, best.pt) is still to do,
        # even when its step was the last one
        while self.epoch < cfg.train.epochs and (self.step < self.total_steps or self.batch > 0):
            self.loader.set_epoch(self.epoch)
            bar = None
            if cfg.train.progress and self.dist.is_main:
                bar = tqdm(total=self.steps_per_epoch, initial=self.batch, unit="batch", dynamic_ncols=True,
                           desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}", leave=True)
            for x, y in self.loader.iter_from(self.batch):
                if self.step >= self.total_steps:
                    break
                self.train_step(x, y)
                self.step += 1
                self.batch += 1
                if bar is not None:
                    bar.update(1)
                checkpoint = bool(cfg.train.checkpoint_every) and self.step % cfg.train.checkpoint_every == 0
                due, stop = self._boundary()
                checkpoint = checkpoint or due or stop
                if stop or self.step % cfg.train.log_every == 0:
                    self._flush(t0, bar)  # a stop logs the steps since the last line: the process ends here
                elif checkpoint:
                    # a NaN step must never be saved; the running mean goes on, so the logged lines are
                    # the same whether or not a (wall-clock) train.checkpoint_minutes save fell between them
                    self._check_finite()
                if checkpoint:
                    self._save("last")
                if stop:
                    if bar is not None:
                        bar.close()
                    self._stop_interrupted()
            if bar is not None:
                bar.close()
            self._flush(t0)
            self.epoch += 1
            self.batch = 0
            # rank 0 validates while the others wait; all ranks get the result (same best on every rank)
            val = on_main(self.validate, self.dist)
            snapshot_attention(self)
            if val:
                self.log.write({"epoch": self.epoch, "step": self.step, "split": "val",
                                "seconds": round(time.time() - t0, 3), **val})
                self.echo(f"epoch {self.epoch}: val clean {val['acc_clean']:.3f}, "
                          f"{val['attack']} {val['acc_adv']:.3f}")
            score = self._selection_score(val) if val else None
            improved = bool(val) and score > self.best
            if improved:
                self.best = score
            self._save("last", *(["best"] if improved or not val else []))
            if on_main(lambda: bool(self._interrupted), self.dist):  # Ctrl-C in validation: epoch end saved
                self._stop_interrupted()
        if self.dist.is_main:
            self._write_train_info(time.time() - t0)
        return self.run

    def _write_train_info(self, seconds: float, complete: bool = True) -> None:
        write_train_info(self.run, steps=self.step, epochs=self.epoch, world_size=self.dist.world_size,
                         seconds=seconds, cpu_seconds=time.process_time() - self._cpu0, resumed=self.resume,
                         device=self.device, fast_path=describe(self.fast), complete=complete)


def _checked_run_dir(cfg: RunConfig, resume: bool) -> Path:
    run = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    check_run_dir(run, resume)
    return run


def _load_dataset(cfg: RunConfig, d):
    """Rank 0 loads first (a ``--download`` happens once; a bad dataset fails on every rank), then the others."""
    box = {}

    def load():
        box["ds"] = load_dataset(cfg.data.name, root=cfg.data.root, download=cfg.data.download)

    on_main(load, d)
    if "ds" not in box:
        load()
    return box["ds"]


def train(cfg: RunConfig, *, resume: bool = False, echo=print) -> Path:
    """Train a run end to end and return its directory (evaluation is separate: ``run_final_eval``).

    Under torchrun the process group is destroyed on return (or on error), so rank 0 can go on
    to evaluate alone while the other processes exit.
    """
    try:
        return Trainer(cfg, resume=resume, echo=echo).fit()
    finally:
        shutdown_distributed()
