"""The ``attnguard`` command line: a thin layer over the library.

Exit status: 0 success; 2 bad input (a bad name, value, file or flag: one line on stderr, no
traceback); 3 training diverged (the loss became NaN or inf; the last good checkpoint is kept);
130 interrupted.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import List, Optional

from .errors import AttnGuardError, ConfigError
from .report.cli import add_report_parser, cmd_report
from .sweep.cli import add_sweep_parser, cmd_sweep
from .train.overrides import parse_set, train_overrides
from .utils.lists import split_list
from .utils.numbers import number_arg

EPILOG = """examples:
  attnguard train                                  # AAD MNIST row (LeNet, madry+aad, eps 0.3) on mnist-5k, CPU
  attnguard train --config atalp/cifar10-resnet18-at+alp --data-root ~/data --download
  attnguard list configs                           # the packaged configs, one per paper table row
  attnguard eval runs/RUN --attacks fgsm,pgd-20,cw-20,autoattack --n-examples 1000 --sanity
  attnguard explain runs/RUN --attack pgd-20 --n 16 --out gallery.png
  attnguard analyze runs/RUN --boxes boxes.csv
  attnguard report runs/RUN_A runs/RUN_B --out report.html
  attnguard list defenses
  torchrun --nproc-per-node 4 -m attnguard train --config FILE   # DDP, see docs/DISTRIBUTED.md

exit status: 0 ok, 2 bad input (one line on stderr), 3 training diverged (NaN/inf loss;
the last good checkpoint is kept), 130 interrupted
"""

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str):  # noqa: D401
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def _comma_list(text: str) -> List[str]:
    items = split_list(text)  # a transfer source may be a sweep run, whose directory name holds commas
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="attnguard", description="Attention-guided adversarial training and honest robustness "
                "evaluation for image classifiers.", epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    p.add_argument("--version", action="version", version=f"attnguard {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model with a defense (default: the AAD MNIST row on mnist-5k)",
                       description="Train with a defense preset, validate robustly each epoch, then evaluate. "
                       "Flags override values of --config; --set KEY=VALUE overrides any config key. "
                       "Checkpoints are written at each epoch end, every train.checkpoint_minutes of wall "
                       "clock (default 5; 0: off), every train.checkpoint_every steps, and on Ctrl-C (exit 130); "
                       "a killed run continues with --resume, which keeps the saved config: other flags or "
                       "--set values exit 2, except train.progress, train.log_every, train.device/--device, "
                       "train.checkpoint_every, train.checkpoint_minutes and eval.*. Resuming a finished run "
                       "says so and changes nothing. Exit status 3 when the loss becomes NaN/inf.")
    t.add_argument("--config", metavar="NAME_OR_FILE", help="a packaged config by name, e.g. "
                   "aad/mnist5k-lenet-madry (attnguard list configs), or a YAML file; a file may say "
                   "'extends: NAME' and override keys")
    t.add_argument("--dataset", metavar="D", help="dataset name (attnguard list datasets)")
    t.add_argument("--data-root", metavar="DIR", help="where torchvision datasets live")
    t.add_argument("--download", action="store_true", default=None, help="download a missing torchvision dataset")
    t.add_argument("--model", metavar="M", help="model name (attnguard list models)")
    t.add_argument("--defense", metavar="P", help="defense preset, e.g. madry, alp+aad, at+alp, afm, trades")
    t.add_argument("--epochs", type=int, metavar="N", help="passes over the training split")
    t.add_argument("--eps", type=number_arg, metavar="E", help="L-inf radius of the training adversary (and eval), "
                   "e.g. 0.3 or 8/255")
    t.add_argument("--batch-size", type=int, metavar="B", help="global batch (split across torchrun processes)")
    t.add_argument("--lr", type=float, metavar="LR", help="learning rate (the schedule's peak)")
    t.add_argument("--seed", type=int, metavar="S", help="seeds init, data order and the adversary")
    t.add_argument("--device", metavar="DEV", help="auto (default), cpu, cuda, cuda:N or mps")
    t.add_argument("--out", metavar="DIR", help="run directory (default runs/<time>-<dataset>-<model>-<defense>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt "
                   "(same result as an uninterrupted run)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, e.g. "
                   "train.amp=off (repeatable)")
    t.add_argument("--no-eval", action="store_true", help="skip the final evaluation")

    e = sub.add_parser("eval", help="evaluate a run or checkpoint against attacks (worst case per example)")
    e.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory, a .pt checkpoint or a "
                   ".safetensors export (attnguard export)")
    e.add_argument("--dataset", metavar="D", help="the dataset of a .safetensors export whose metadata names none "
                   "(attnguard list datasets); a run is evaluated on its own dataset")
    e.add_argument("--data-root", metavar="DIR", help="where a torchvision dataset lives (default: the run's data.root)")
    e.add_argument("--attacks", type=_comma_list, default=None, metavar="LIST",
                   help="comma-separated attack names (attnguard list attacks); default: the run's eval.attacks "
                   "(an export's or a bare checkpoint's: the train default)")
    e.add_argument("--eps", type=number_arg, default=None, metavar="E", help="e.g. 0.3 or 8/255; default: the "
                   "run's eval.eps, else its training eps")
    e.add_argument("--n-examples", type=int, default=None, metavar="N", help="first N test examples (default: "
                   "the run's eval.n_examples)")
    e.add_argument("--sanity", action="store_true", help="run the Carlini et al. 2019 sanity checks")
    e.add_argument("--out", metavar="FILE", help="eval.json path or directory (default: eval.json next to the "
                   "model, or eval-<attacks>-n<N>.json when eval.json exists); an existing file is refused "
                   "(exit 2) unless --force")
    e.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    e.add_argument("--device", default="auto", metavar="DEV")
    e.add_argument("--batch-size", type=int, default=256, metavar="B")
    e.add_argument("--seed", type=int, default=0, metavar="S")

    x = sub.add_parser("explain", help="PNG gallery: clean and adversarial images with their Grad-CAM")
    x.add_argument("run", metavar="RUN")
    x.add_argument("--attack", default="pgd-20")
    x.add_argument("--n", type=int, default=16, help="number of images (rows)")
    x.add_argument("--eps", type=number_arg, default=None, metavar="E", help="e.g. 0.3 or 8/255; default: the "
                   "run's eval.eps, else its training eps")
    x.add_argument("--only-fooled", action="store_true", help="show only examples the attack fooled (clean "
                   "correct, adversarial wrong): the first --n of them in the test split")
    x.add_argument("--out", default="gallery.png", help="PNG path; the shown test indices and predictions go "
                   "to a .json beside it")
    x.add_argument("--device", default="auto")

    a = sub.add_parser("analyze", help="the papers' attention analyses (IoU tables, LIME) and plots")
    a.add_argument("run", metavar="RUN")
    a.add_argument("--boxes", metavar="FILE_OR_DIR", help="Pascal VOC XML folder/file or CSV of boxes")
    a.add_argument("--attack", default="stepll")
    a.add_argument("--eps", type=number_arg, default=None, metavar="E", help="e.g. 0.3 or 8/255; default: the "
                   "run's eval.eps, else its training eps")
    a.add_argument("--n-examples", type=int, default=500)
    a.add_argument("--out", metavar="DIR", help="default RUN/analysis")
    a.add_argument("--device", default="auto")

    add_report_parser(sub)  # attnguard/report/cli.py

    x2 = sub.add_parser("export", help="write a run's weights as safetensors (metadata: model, classes, normalization)")
    x2.add_argument("run", metavar="RUN")
    x2.add_argument("--out", required=True, metavar="FILE.safetensors")
    x2.add_argument("--which", choices=("best", "last"), default=None,
                    help="checkpoint to export (default: the run config's eval.checkpoint, else best)")

    st = sub.add_parser("study", help="run one of the papers' studies: a figure (PNG) and its numbers (JSON)",
                        description="Run a study (attnguard list studies) on one or more runs. Writes NAME.png and "
                        "NAME.json into --out (default RUN/studies/ of the first run); the run's report shows them.")
    st.add_argument("name", metavar="NAME")
    st.add_argument("runs", nargs="+", metavar="RUN")
    st.add_argument("--out", metavar="DIR", help="output folder (default RUN/studies)")
    st.add_argument("--set", action="append", metavar="KEY=VALUE", help="a study option (repeatable)")
    st.add_argument("--device", default="auto", metavar="DEV")
    st.add_argument("--force", action="store_true", help="replace an existing NAME.json")

    add_sweep_parser(sub)  # attnguard/sweep/cli.py; copies the train flags, so after train
    ls = sub.add_parser("list", help="list datasets, models, defenses, regularizers, attacks, configs or studies")
    ls.add_argument("what", choices=("datasets", "models", "defenses", "regularizers", "attacks", "configs",
                                     "studies"))
    return p


def cmd_train(args) -> int:
    from .train.config import resolve_config
    from .train.rundir import finished_checkpoint, mark_complete, resume_config_file, resume_conflicts
    from .train.validate import check_names

    overrides = train_overrides(args)
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own config.yaml; drop --config")
        file = str(resume_config_file(args.out))
        cfg = resolve_config(file, overrides)
        # checked before anything is written: a resume must not relabel the run its checkpoint holds
        conflicts = resume_conflicts(resolve_config(file), cfg)
        if conflicts:
            raise ConfigError(f"--resume: {', '.join(conflicts)} differ from {args.out}/config.yaml; a resume "
                              "continues the saved run (drop those flags, or train a new run with another --out)")
        from pathlib import Path

        done = finished_checkpoint(Path(args.out), cfg)
        if done:
            print(f"{args.out} is complete (epoch {done['epoch']}, step {done['step']}); nothing to resume")
            if mark_complete(Path(args.out), done):  # stopped after its last checkpoint: finish the run's files
                print(f"marked {args.out}/train.json complete")
                if not args.no_eval and _is_main_process() and not (Path(args.out) / "eval.json").is_file():
                    _final_eval(Path(args.out), cfg)
            return 0
    else:
        cfg = resolve_config(args.config, overrides)
    check_names(cfg)
    from pathlib import Path

    from .train.interrupt import TrainingInterrupted
    from .train.trainer import train

    where = {"run": Path(cfg.out) if cfg.out else None}

    def echo(*parts, **kw):  # a default run directory (runs/<time>-...) is known once the trainer names it
        text = " ".join(map(str, parts))
        if text.startswith(RUN_DIR_LINE):
            where["run"] = Path(text[len(RUN_DIR_LINE):])
        print(*parts, **kw)

    try:
        run = train(cfg, resume=args.resume, echo=echo)
    except TrainingInterrupted:
        raise  # stopped at a step boundary: its message says what it saved
    except KeyboardInterrupt as e:
        raise KeyboardInterrupt(_hard_stop_message(where["run"])) from e
    if not args.no_eval and _is_main_process():
        try:
            _final_eval(run, cfg)
        except KeyboardInterrupt as e:
            raise KeyboardInterrupt(f"interrupted during the final evaluation: training of {run} is complete, no "
                                    f"eval.json written; evaluate with: attnguard eval {shlex.quote(str(run))}") from e
    return 0


RUN_DIR_LINE = "run directory: "  # the trainer's first line of a new run


def _hard_stop_message(run) -> str:
    """A Ctrl-C that could not wait for the step boundary (a second Ctrl-C, or one during setup): what
    the run directory holds, and the command that resumes it."""
    from .train.interrupt import resume_command

    if run is None or not (run / "config.yaml").is_file():
        return "interrupted before the run directory was written; nothing saved"
    last = run / "checkpoints" / "last.pt"
    held = f"the last checkpoint is {last}" if last.is_file() else "no checkpoint yet (it restarts from step 0)"
    return f"interrupted mid-step, nothing new saved; {held}; resume with: {resume_command(run)}"


def _is_main_process() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _final_eval(run, cfg) -> None:
    from .evaluation import format_table, run_eval

    ev = cfg.eval
    result = run_eval(run, ev.attacks, eps=ev.eps, n_examples=ev.n_examples, sanity=ev.sanity, out=run,
                      device=cfg.train.device, batch_size=ev.batch_size, seed=cfg.seed)
    _print_table(format_table(result))
    print(f"wrote {run}/eval.json and {run}/eval.md")


def _print_table(table) -> None:
    from rich.console import Console

    Console().print(table)


def cmd_eval(args) -> int:
    from .evaluation import format_table, run_eval
    from .evaluation.run import choose_eval_out

    from .rundir import RunDir

    from .train.config import EvalConfig

    if args.attacks:  # names first: a typo is reported as such even when the run path is wrong too
        from .attacks.registry import parse_attack

        for name in args.attacks:
            parse_attack(name)
    target = RunDir(args.target, dataset=args.dataset, data_root=args.data_root)
    # one source of defaults: what the run was configured to be evaluated with, else the train default
    attacks = args.attacks or target.get("eval.attacks") or EvalConfig().attacks
    n_examples = args.n_examples if args.n_examples is not None else \
        (target.get("eval.n_examples") or EvalConfig().n_examples)
    target.dataset  # noqa: B018 -- a missing or conflicting dataset fails now, in one line
    if args.eps is None:
        target.eps  # noqa: B018 -- likewise an export that records no eps
    # chosen (and a bad or taken --out refused) before the possibly hours-long evaluation, not after
    out = choose_eval_out(target, args.out, attacks, n_examples, force=args.force)
    result = run_eval(target, attacks, eps=args.eps, n_examples=n_examples, sanity=args.sanity,
                      out=out, device=args.device, batch_size=args.batch_size, seed=args.seed)
    _print_table(format_table(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def cmd_explain(args) -> int:
    from .analysis import explain

    path = explain(args.run, attack=args.attack, n=args.n, out=args.out, eps=args.eps, device=args.device,
                   only_fooled=args.only_fooled)
    if args.only_fooled:
        import json

        shown = json.loads(path.with_suffix(".json").read_text())
        if shown["shown"] < args.n:
            print(f"found only {shown['shown']} fooled examples of the {args.n} asked for in all "
                  f"{shown['scanned']} test examples")
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def cmd_analyze(args) -> int:
    from .analysis import analyze

    result = analyze(args.run, boxes=args.boxes, attack=args.attack, n_examples=args.n_examples,
                     out_dir=args.out, device=args.device, eps=args.eps)
    from .analysis.summary import summary_text

    print(summary_text(result))
    from .rundir import RunDir

    print(f"wrote {args.out or RunDir(args.run).analysis_dir}/analysis.json")
    return 0


def cmd_export(args) -> int:
    from .io import check_export_path, export_safetensors
    from .rundir import RunDir

    check_export_path(args.out)
    run = RunDir(args.run)
    model = run.model(which=args.which)
    try:
        eps = run.eps
    except AttnGuardError:  # an old run without an eps: the export then just records none
        eps = None
    seed = run.get("seed")
    export_safetensors(model, args.out, dataset=run.get("data.name"), eps=eps, defense=run.get("defense.preset"),
                       seed=seed if isinstance(seed, int) else None)
    print(f"wrote {args.out}")
    return 0


def cmd_study(args) -> int:
    from .studies import run_study

    ctx = run_study(args.name, args.runs, out=args.out, options=parse_set(args.set), device=args.device,
                    force=args.force)
    print(f"wrote {ctx.png} and {ctx.json}")
    return 0


def cmd_list(args) -> int:
    from .listing import listing

    for name, desc in listing(args.what):
        print(f"{name:<28} {desc}")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "explain": cmd_explain, "analyze": cmd_analyze,
            "report": cmd_report, "export": cmd_export, "study": cmd_study, "sweep": cmd_sweep,
            "list": cmd_list}


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["train"] + list(argv if argv is not None else sys.argv[1:]))
    try:
        return COMMANDS[args.command](args)
    except AttnGuardError as e:
        from .utils.runtime import ReplicaError

        if not isinstance(e, ReplicaError):  # under torchrun, rank 0 prints the message once
            print(f"attnguard {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_BAD_INPUT)
    except OSError as e:  # a missing, unreadable or unwritable path given by the user; a full disk
        print(f"attnguard {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as e:  # the trainer's says what it saved and how to resume
        print(_one_line(e) if str(e) else "interrupted", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
