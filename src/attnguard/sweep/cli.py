"""``attnguard sweep``: its flags (the train flags are copied from ``attnguard train``) and the command.

``attnguard.cli`` adds the parser with :func:`add_sweep_parser` and runs :func:`cmd_sweep`; this module
imports ``attnguard.cli`` only inside functions (it is imported by it).
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
from pathlib import Path
from typing import List

from ..errors import ConfigError

# train flags passed through to every run; --seed and --out are the sweep's own, --resume is decided per run
TRAIN_FLAGS = ("config", "dataset", "data_root", "download", "model", "defense", "epochs", "eps", "batch_size",
               "lr", "device", "set", "no_eval")

DESCRIPTION = """Train the cross product of --grid values and --seeds, each an ordinary run directory
DIR/KEY=VALUE,...,seed=S trained by its own `attnguard train` process, --jobs at a time (each with
OMP_NUM_THREADS = cores / jobs unless --threads). Run again to continue: finished runs are skipped,
interrupted ones resumed. A finished run without checkpoints (pruned; its config.yaml, train.json and
eval*.json kept) is done: its table row comes from those files, and an evaluation it lacks is reported
as not possible, one line each, not attempted. Writes DIR/sweep.md (mean ± std over seeds per grid point, the table of
`attnguard report --markdown`), DIR/sweep.json and DIR/sweep.png. Child output goes to DIR/logs/.
Exit status: 0 all runs done, 1 some runs failed, 2 bad input, 130 interrupted."""


def add_sweep_parser(sub) -> argparse.ArgumentParser:
    """Add ``sweep`` to the CLI's subparsers; ``train`` must be added first (its flags are copied)."""
    s = sub.add_parser("sweep", help="train a grid of configs over seeds, N at a time, resumable; sweep.md/png",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--grid", action="append", metavar="KEY=V1,V2,...", help="a config key (as --set takes it) "
                   "and its values, e.g. defense.aad.alpha=0,0.001,0.01 (repeatable: the cross product)")
    s.add_argument("--seeds", default="0", metavar="S1,S2,...", help="seeds of every grid point (default 0)")
    s.add_argument("--jobs", type=int, default=1, metavar="N", help="runs trained at the same time (default 1)")
    s.add_argument("--threads", type=int, metavar="T", help="OMP/MKL threads per run (default: cores / jobs)")
    s.add_argument("--out", required=True, metavar="DIR", help="the sweep folder (one run directory per run)")
    s.add_argument("--eval-attacks", metavar="LIST", help="after training, also run `attnguard eval RUN --attacks "
                   "LIST` per run, into eval-<attacks>-n<N>.json (an existing one is kept)")
    s.add_argument("--eval-n", type=int, metavar="N", help="examples of --eval-attacks (default: eval.n_examples)")
    s.add_argument("--metric", default="worst case", metavar="ATTACK", help="robust accuracy in sweep.png: an "
                   "evaluated attack's name, or 'worst case' (default)")
    s.add_argument("--print-commands", action="store_true", help="print one shell line per run still to do "
                   "(for a SLURM job array or GNU parallel) and exit")
    s.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    train = sub.choices["train"]
    for action in train._actions:  # the train flags themselves, so help and types cannot drift apart
        if action.dest in TRAIN_FLAGS:
            s._add_action(copy.copy(action))
    s.set_defaults(_sweep_parser=s)
    return s


def command_line(args) -> str:
    """The sweep command that ``args`` came from, for sweep.md and the resume hint."""
    parser = args._sweep_parser
    argv: List[str] = ["attnguard", "sweep"]
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help",):
            continue
        value = getattr(args, action.dest, None)
        if value != action.default:
            argv += _flag_args(action.option_strings[-1], value)
    return shlex.join(argv)


def _flag_args(flag: str, value) -> List[str]:
    """A parsed flag back as argv: nothing when unset, the bare flag when on, repeated for a list."""
    if value is None or value is False:
        return []
    if value is True:
        return [flag]
    if isinstance(value, list):
        return [a for v in value for a in (flag, str(v))]
    return [flag, str(value)]


def _comma(text: str, flag: str) -> List[str]:
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise ConfigError(f"{flag} expects a comma-separated list, got {text!r}")
    return items


def _check_numbers(args) -> None:
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    if args.eval_n is not None and args.eval_n < 1:
        raise ConfigError(f"--eval-n must be at least 1, got {args.eval_n}")
    if args.eval_n is not None and not args.eval_attacks:
        raise ConfigError("--eval-n needs --eval-attacks")


def _base(args):
    """The pass-through train flags as train argv (--config made absolute) and as a nested override dict."""
    from ..train.overrides import train_overrides

    ns = argparse.Namespace(**{k: getattr(args, k) for k in TRAIN_FLAGS})
    ns.seed, ns.out = None, None
    overrides = train_overrides(ns)
    config = args.config
    if config and Path(config).is_file():
        config = str(Path(config).resolve())  # the printed commands must work from any directory
    argv: List[str] = []
    for action in args._sweep_parser._actions:
        if action.dest not in TRAIN_FLAGS:
            continue
        value = config if action.dest == "config" else getattr(args, action.dest)
        argv += _flag_args(action.option_strings[0], value)
    return argv, overrides, config


def _flat_keys(d: dict, prefix: str = "") -> List[str]:
    out = []
    for k, v in d.items():
        out += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


def _check_overlap(axes, overrides: dict) -> None:
    """A swept key that a flag or --set also gives would have two values: refused."""
    from ..defenses.config import normalize_defense_section

    o = dict(overrides)
    if isinstance(o.get("defense"), dict):
        o["defense"] = normalize_defense_section(o["defense"])
    given = _flat_keys(o)
    for a in axes:
        clash = [g for g in given if g == a.key or g.startswith(a.key + ".") or a.key.startswith(g + ".")]
        if clash:
            raise ConfigError(f"--grid {a.key} is also given by a flag or --set ({clash[0]}); drop one of them")


def cmd_sweep(args) -> int:
    from .grid import expand, parse_grid, parse_seeds
    from .runner import (STATE_WORDS, Interrupted, Pool, Settings, check_grid, default_threads, impossible_lines, plan,
                         plan_line, shell_line)
    from .table import write_outputs

    _check_numbers(args)
    axes = parse_grid(args.grid)
    seeds = parse_seeds(args.seeds)
    eval_attacks = _comma(args.eval_attacks, "--eval-attacks") if args.eval_attacks is not None else None
    if eval_attacks or args.metric != "worst case":
        from ..attacks.registry import parse_attack

        for name in (eval_attacks or []) + ([args.metric] if args.metric != "worst case" else []):
            parse_attack(name)  # a typo fails now, not after hours of training
    runs = expand(axes, seeds)
    train_argv, overrides, config = _base(args)
    _check_overlap(axes, overrides)
    out = Path(args.out).resolve()
    settings = Settings(out=out, train_args=train_argv, base_overrides=overrides, config=config,
                        no_eval=bool(args.no_eval), eval_attacks=eval_attacks, eval_n=args.eval_n, device=args.device)
    configs = check_grid(settings, runs)
    jobs = plan(settings, runs, configs)
    todo = [j for j in jobs if j.steps]
    threads = args.threads or default_threads(args.jobs)
    if args.print_commands:
        for line in impossible_lines(jobs):  # stdout holds the commands only
            print(line, file=sys.stderr)
        for job in todo:
            print(shell_line(job, threads))
        return 0
    print(plan_line(jobs))
    for line in impossible_lines(jobs):
        print(line)
    if args.dry_run:
        for job in jobs:
            if job.steps:
                print(f"{job.run.name}: {job.state}\n  {shell_line(job, threads)}")
            elif job.state == "pruned":
                print(f"{job.run.name}: {STATE_WORDS['pruned']}")
        return 0
    command = command_line(args)
    pool = Pool(args.jobs, threads, out / "logs")
    try:
        if todo:
            out.mkdir(parents=True, exist_ok=True)
            print(f"{len(todo)} to do, {args.jobs} at a time, {threads} thread{'s' if threads > 1 else ''} each; "
                  f"logs in {out / 'logs'}")
            pool.run(todo)
    except Interrupted as e:
        _write(out, axes, runs, args, command, write_outputs)
        raise KeyboardInterrupt(f"{e} ({command})") from None
    written = _write(out, axes, runs, args, command, write_outputs)
    print("wrote " + ", ".join(str(p) for p in written))
    if pool.failed:
        names = ", ".join(j.run.name for j in pool.failed)
        print(f"attnguard sweep: {len(pool.failed)} of {len(todo)} runs failed: {names} (logs in {out / 'logs'}); "
              "run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


def _write(out, axes, runs, args, command, write_outputs):
    out.mkdir(parents=True, exist_ok=True)
    return write_outputs(out, axes, runs, metric=args.metric, command=command)
