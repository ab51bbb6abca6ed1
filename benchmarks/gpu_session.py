"""One command for a lent GPU (one H100/H200, minutes of device time): tests, benchmarks, result rows.

Steps, each under its own cap taken from one global deadline (default 8 min), each recorded as
ok / failed / timeout / skipped-with-reason; a failing step never stops the next:

1. env: install the carried wheels (``.whl/``) that the machine lacks into a scratch folder
   (``pip install --no-index --no-deps --target``), put ``src/`` first on PYTHONPATH, then import
   every module in one child and skip whatever cannot run;
2. tests: ``pytest -m gpu`` (the tests that need CUDA);
3. bench: G3, G4, G2, G1 of docs/PERFORMANCE.md through the ``bench_*.py`` scripts at reduced rounds
   (their tables go to ``$OUT/perf.md``; G3 times attacks in fp32 and bf16 + channels_last);
4. rows: the time left goes to result rows (``--rows``, default ``benchmarks/gpu_rows.json``),
   resumed across sessions from the state folder (``_gpu_rows.py``);
5. pack: ``$OUT`` gets at most 8 files: summary.md (one screen), session.json (every measurement),
   perf.md, session.log, results.tar.gz (the rows' configs, metrics and eval*.json) and
   gpu_state.tar.NN (the state folder, for ``--absorb``).

    python benchmarks/gpu_session.py --prepare --data-from ../shared/data/cifar10-jpeg   # here, once
    python3 benchmarks/gpu_session.py --out $OUT --data .gpu_data/cifar10-jpeg --commit C # there
    python benchmarks/gpu_session.py --absorb DIR                                        # here, after
    python benchmarks/gpu_session.py --dry-run                                           # CPU, tiny sizes

The exact device-tool call and what to commit afterwards: docs/PERFORMANCE.md, "GPU session".
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gpu_env as E  # noqa: E402
import _gpu_rows as R  # noqa: E402
from _gpu_proc import Deadline, Log, SessionError, child_env, run_capped  # noqa: E402
from _gpu_report import MAX_OUT_FILES, junit_counts, md_tables, summary, verdicts  # noqa: E402

REPO = E.REPO
OUT_FILES = ("summary.md", "session.json", "perf.md", "session.log", "results.tar.gz")  # + gpu_state.tar.NN
# name, target, script, CUDA arguments, dry-run arguments, cap (s), modules it needs
BENCHES = [
    ("attacks", "G3", "bench_attacks.py", ["--repeats", "3"],
     ["--models", "lenet", "--batch-size", "4", "--steps", "2"], 90, ["torchattacks"]),
    ("gradcam", "G4", "bench_gradcam.py", ["--repeats", "3"], ["--no-imagenet", "--batch-size", "2"], 90,
     ["pytorch_grad_cam"]),
    ("defenses", "G2", "bench_defenses.py", ["--repeats", "3"],
     ["--models", "preact-resnet18", "--width", "0.125", "--batch-size", "2", "--presets", "madry", "afm", "--steps",
      "1"], 120, []),
    ("training", "G1", "bench_training.py",
     ["--repeats", "3", "--steps-per-round", "10", "--warmup-steps", "5", "--aa-worst-points", "20"],
     ["--batch-size", "2", "--steps-per-round", "1", "--warmup-steps", "0", "--width", "0.125", "--pgd-steps", "1",
      "--aa-points", "2", "--aa-version", "custom-tiny"], 180, []),
]
DRY_ROWS = [{"id": "dry-mnist5k-lenet-madry", "config": "aad/mnist5k-lenet-madry", "attacks": ["fgsm"], "n": 16,
             "set": ["model.width=0.125", "train.epochs=1", "train.max_steps=8", "train.batch_size=16",
                     "data.val_size=64", "train.log_every=1"], "checkpoint_every": 1}]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes (CI; < 2 min)")
    mode.add_argument("--prepare", action="store_true", help="here: fetch the wheels, copy the data, size the carry")
    mode.add_argument("--absorb", metavar="DIR", type=Path, help="here: restore the state folder from a session's files")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_out"), help="output folder ($OUT)")
    p.add_argument("--deadline-min", type=float, default=None, help="global deadline (default 8; dry run 6)")
    p.add_argument("--reserve-s", type=float, default=30.0, help="kept back from the deadline for packing")
    p.add_argument("--steps", default="tests,bench,rows",
                   help="comma-separated subset of tests,bench,rows (the env step always runs)")
    p.add_argument("--wheels", type=Path, default=REPO / ".whl", help="folder of carried wheels")
    p.add_argument("--state", type=Path, default=None, help="state folder (default .gpu_state; dry run: a scratch one)")
    p.add_argument("--state-budget-mib", type=float, default=20.0,
                   help="most the state folder may weigh (it travels both ways within the 64 MiB carry)")
    p.add_argument("--data", default=None, help="dataset folder the rows read as '{data}' (e.g. .gpu_data/cifar10-jpeg)")
    p.add_argument("--data-from", type=Path, default=None, help="--prepare: parquet folder to copy --data from")
    p.add_argument("--train-rows", type=int, default=40000,
                   help="--prepare: training rows to copy (the CPU CIFAR-10 protocol's data.train_size); 0 = all")
    p.add_argument("--rows", default=None, help="row list, a JSON file or inline JSON (default "
                   "benchmarks/gpu_rows.json; dry run: one tiny mnist-5k row)")
    p.add_argument("--min-row-s", type=float, default=60.0, help="start no row with fewer seconds left")
    p.add_argument("--tests-cap-s", type=float, default=120.0)
    p.add_argument("--retry", action="store_true", help="try failed and blocked rows again (from scratch)")
    p.add_argument("--force", action="store_true", help="--absorb: even over a state that changed since")
    p.add_argument("--append-perf", action="store_true", help="--absorb: append perf.md to docs/PERFORMANCE.md")
    p.add_argument("--commit", default=None, help="the commit being measured (the GPU machine has no .git; "
                   "--prepare prints the command with it filled in)")
    p.add_argument("--interrupt-after-checkpoint", action="store_true", help=argparse.SUPPRESS)  # test hook
    args = p.parse_args(argv)
    if not 0 < args.state_budget_mib <= 45:  # 3 parts of 15 MiB: what $OUT's 8 files leave for it
        p.error("--state-budget-mib must be in (0, 45]")
    unknown = set(args.steps.split(",")) - {"tests", "bench", "rows", ""}
    if unknown:
        p.error(f"--steps: unknown step(s) {sorted(unknown)}; choose from tests, bench, rows")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.deadline_min = args.deadline_min or (6.0 if args.dry_run else 8.0)
    args.data = args.data or (".gpu_data/cifar10-jpeg" if args.prepare else None)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.prepare:
            return prepare(args)
        if args.absorb:
            return absorb(args)
        return session(args)
    except SessionError as e:
        print(f"gpu_session: error: {e}", file=sys.stderr)
        return 2


# -- here, before and after ----------------------------------------------------------------------------
def prepare(args) -> int:
    wheels = E.prepare_wheels(args.wheels)
    for w in wheels:
        extra = f" (repacked without {', '.join(w['repacked_without'])})" if w["repacked_without"] else ""
        print(f"{w['wheel']:<48} {w['mib']:6.2f} MiB{extra}")
    data = _repo_path(args.data)
    if args.data_from:
        for f in E.prepare_data(args.data_from, data, args.train_rows or None):
            print(f"{f['file']:<48} {f['mib']:6.2f} MiB  {f['rows']} rows")
    state = args.state or REPO / ".gpu_state"
    rep = E.carry_report([args.wheels, state, data])
    for k, v in rep["parts"].items():
        print(f"{k:<48} {v:6.2f} MiB")
    room = rep["limit_mib"] - rep["total_mib"] + E.dir_mib(state)  # the state's own size is inside its budget
    budget = state_budget(room, args.state_budget_mib)
    print(f"total {rep['total_mib']:.1f} of {rep['limit_mib']} MiB; room for the state folder {room:.1f} MiB "
          f"(asked --state-budget-mib {args.state_budget_mib:g})")
    if budget is None:
        print(f"no room: the state folder needs at least {MIN_STATE_MIB:g} MiB (two rows' checkpoints); "
              "shrink the working tree or the carried data")
        return 1
    carry = [str(p.relative_to(REPO)) for p in (args.wheels, state, data) if p.is_relative_to(REPO)]
    extra = "" if budget == args.state_budget_mib else f" --state-budget-mib {budget:g}"
    if extra:
        print(f"the state budget is cut to {budget:g} MiB to fit the carry (the command below says so)")
    print(f"\ndevice tool: carry {json.dumps(carry)}, timeout_s 560, command:\n"
          f"PYTHONUNBUFFERED=1 python3 benchmarks/gpu_session.py --out $OUT --data {_rel(data)}{extra} --commit {_commit()}")
    return 0


MIN_STATE_MIB = 8.0  # a CIFAR row's resumable last.pt is ~3.3 MiB: two rows in flight, with their eval files


def state_budget(room_mib: float, wanted_mib: float) -> Optional[float]:
    """``wanted_mib`` if it fits ``room_mib``, else the room rounded down to 0.5 MiB if that still holds
    :data:`MIN_STATE_MIB`, else None. The committed result exports grow the working tree, which travels
    too, so the room left for the state shrinks from session to session."""
    if wanted_mib <= room_mib:
        return wanted_mib
    fit = math.floor(room_mib * 2) / 2
    return fit if fit >= MIN_STATE_MIB else None


def absorb(args) -> int:
    state = args.state or REPO / ".gpu_state"
    info = R.absorb(args.absorb, state, force=args.force)
    meta = json.loads((args.absorb / "session.json").read_text())
    keep = REPO / "gpu_out" / "sessions" / meta["session"]["id"]
    keep.mkdir(parents=True, exist_ok=True)
    for name in OUT_FILES:
        if (args.absorb / name).is_file():
            shutil.copyfile(args.absorb / name, keep / name)
    print(f"state restored: {info['restored']} (generation {info['generation']}, {info['mib']} MiB); "
          f"the one it replaced is in {info['previous']}")
    print(f"session files copied to {_rel(keep)}")
    if args.append_perf and (args.absorb / "perf.md").is_file():
        with open(REPO / "docs" / "PERFORMANCE.md", "a", encoding="utf-8") as f:
            f.write((args.absorb / "perf.md").read_text())
        print("perf.md appended to docs/PERFORMANCE.md: update its Status table, then commit it")
    return 0


# -- there ----------------------------------------------------------------------------------------------
def session(args) -> int:
    dry = args.dry_run
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("*"):
        if f.name in OUT_FILES or f.name.startswith("gpu_state.tar."):
            f.unlink()
    work = Path(tempfile.mkdtemp(prefix="gpu_session-"))
    deadline = Deadline(args.deadline_min * 60, args.reserve_s)
    log = Log(out / "session.log", deadline)
    started = _dt.datetime.now(_dt.timezone.utc)
    steps = {s.strip() for s in args.steps.split(",") if s.strip()}
    res: dict = {"session": {"id": started.strftime("%Y%m%d-%H%M%S") + ("-dry" if dry else ""),
                             "started": started.isoformat(timespec="seconds"), "mode": "dry-run" if dry else "gpu",
                             "argv": args.argv, "commit": args.commit or _commit(),
                             "deadline_s": args.deadline_min * 60}, "steps": []}
    state = R.State(args.state or (work / "state" if dry else REPO / ".gpu_state"))
    res["state_base_generation"] = state.base_generation
    rows = R.load_rows(args.rows or (json.dumps(DRY_ROWS) if dry else str(REPO / "benchmarks" / "gpu_rows.json")))
    data = _repo_path(args.data) if args.data else None
    if data is not None and not data.is_dir():
        res["data_note"] = f"--data {args.data} is not a folder: rows that read it are skipped"
        data = None
    site = work / "site"
    env = child_env([REPO / "src", site], {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")} if dry else None)
    log.say(f"{res['session']['id']}: deadline {args.deadline_min:g} min, out {out}, state {state.root}")

    def step(name, status, seconds=0.0, reason="", **extra):
        res["steps"].append({"name": name, "status": status, "seconds": round(seconds, 1), "reason": reason, **extra})
        if status != "ok":
            log.say(f"{name}: {status}{': ' + reason if reason else ''}")

    def guarded(name, fn, *a):
        """A bug in one step must not cost the summary of the others (the GPU time is spent either way)."""
        try:
            return fn(*a)
        except Exception as e:  # recorded, then the next step runs
            step(name, "failed", reason=f"{type(e).__name__}: {e}")
            log.append(traceback.format_exc())
            return None

    check = guarded("env", env_step, args, res, env, site, log, deadline, step) or {}
    ok_mods = {m for m, v in check.get("modules", {}).items() if v.get("ok")}
    cuda = bool(check.get("cuda"))
    device = "cpu" if dry else "cuda"
    no_device = None if dry or cuda else "no CUDA device (" + check.get("cuda_error", "torch.cuda.is_available() is False") + ")"

    if "tests" in steps:
        guarded("tests", tests_step, args, res, env, log, deadline, step, work, ok_mods, no_device, dry)
    if "bench" in steps:
        for name, target, script, cuda_args, dry_args, cap, needs in BENCHES:
            guarded(f"bench {target} ({script})", bench_step, res, env, log, deadline, step, ok_mods, no_device,
                    name, target, script, dry_args if dry else cuda_args, device, cap, needs, out)
    if "rows" in steps:
        ctx = R.RowContext(python=sys.executable, device=device, data=_rel(data) if data else None,
                           env=env, importable=lambda m: m in ok_mods, deadline=deadline, log=log,
                           min_row_s=5.0 if dry else args.min_row_s, retry=args.retry)
        guarded("rows", rows_step, res, rows, state, ctx, step, no_device, dry, args.interrupt_after_checkpoint or dry)
        guarded("pack", pack_step, res, state, out, 10 ** 6 if dry else args.state_budget_mib)
    res["targets"] = verdicts(res.get("benchmarks", {}), dry)
    _trim(out / "session.log")
    res["session"]["elapsed_s"] = round(deadline.elapsed(), 1)
    files = {p.name: round(p.stat().st_size / E.MIB, 3) for p in out.iterdir() if p.is_file()}
    res["session"]["out_files"] = {"summary.md": 0.0, "session.json": 0.0, **files}  # those two are small
    (out / "summary.md").write_text(summary(res, [b[1] for b in BENCHES]))
    (out / "session.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    log.say(f"done in {deadline.elapsed():.0f} s; {out / 'summary.md'}")
    print((out / "summary.md").read_text())
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(s["status"] in ("ok", "skipped") for s in res["steps"]) else 1


def pack_step(res, state, out, budget_mib) -> None:
    """Prune the state folder to what later sessions need, then tar it (and the rows' results) into ``out``."""
    res["state_notes"] = R.prune(state, budget_mib)
    state.data["generation"] += 1
    state.data["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    state.save()
    res["state_generation"] = state.data["generation"]
    res["state"] = {r: e["status"] for r, e in state.data["rows"].items()}
    res["state_pack"] = R.pack_state(state, out, max_parts=MAX_OUT_FILES - len(OUT_FILES))
    R.pack_results(state, out)


def _trim(path: Path, limit_mib: float = 15.0) -> None:
    """Keep a log under the device tool's per-file limit: its head and tail, the middle cut."""
    size = path.stat().st_size if path.is_file() else 0
    if size > limit_mib * E.MIB:
        data = path.read_bytes()
        keep = int(limit_mib * E.MIB / 2)
        path.write_bytes(data[:keep] + f"\n[... {size - 2 * keep} bytes cut ...]\n".encode() + data[-keep:])


def env_step(args, res, env, site, log, deadline, step) -> dict:
    """Install the wheels whose module is missing, then import everything in one child."""
    wheels = sorted(args.wheels.glob("*.whl")) if args.wheels.is_dir() else []
    res["env"] = {"wheels": [w.name for w in wheels]}
    if wheels:
        wanted = {w: E.WHEELS.get(w.name.split("-")[0].replace("_", "-").lower(), (w.name.split("-")[0],))[0]
                  for w in wheels}
        missing = set(E.missing_modules(sorted(set(wanted.values())), env))
        todo = [w for w, mod in wanted.items() if mod in missing]
        res["env"]["installed"] = [w.name for w in todo]
        if todo:
            p = run_capped([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, todo)],
                           cap_s=deadline.cap(120), log=log, env=env, cwd=REPO, name="pip-install")
            step("env: wheels", p.status, p.seconds, "" if p.rc == 0 else p.tail(3))
        else:
            step("env: wheels", "ok", 0.0, "every carried module was already importable")
    else:
        step("env: wheels", "skipped", 0.0, f"no wheels in {args.wheels}")
    p = run_capped([sys.executable, "-c", E.CHECK_CODE, *E.IMPORTS], cap_s=deadline.cap(120), log=log, env=env,
                   cwd=REPO, name="import-check")
    check = E.parse_check(p.output) or {}
    res["env"].update(check)
    bad = {m: v["error"] for m, v in check.get("modules", {}).items() if not v.get("ok")}
    src = check.get("modules", {}).get("attnguard", {}).get("file", "")
    if src and not src.startswith(str(REPO / "src")):
        bad["attnguard"] = f"imported from {src}, not this checkout"
    step("env: imports", "ok" if check and "attnguard" not in bad else "failed", p.seconds,
         "; ".join(f"{m} ({E.IMPORTS[m]}): {e}" for m, e in bad.items()))
    return check


def tests_step(args, res, env, log, deadline, step, work, ok_mods, no_device, dry) -> None:
    if no_device or "pytest" not in ok_mods:
        return step("tests", "skipped", reason=no_device or "cannot import pytest")
    junit = work / "junit.xml"
    where = ["tests/data/test_data.py"] if dry else ["tests", "benchmarks/test_benchmarks_smoke.py"]
    p = run_capped([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rfE",
                    "--continue-on-collection-errors", f"--junitxml={junit}", *where],
                   cap_s=deadline.cap(args.tests_cap_s), log=log, env=env, cwd=REPO, name="pytest-gpu")
    counts = junit_counts(junit)
    res["tests"] = {"rc": p.rc, "where": where, **counts, "tail": p.tail(15)}
    ok = p.rc in (0, 5) and not counts.get("failed_names")  # 5: nothing selected
    step("tests", "timeout" if p.timed_out else "ok" if ok else "failed", p.seconds,
         "" if ok else "; ".join(counts.get("failed_names", [])[:5]) or p.tail(3))


def bench_step(res, env, log, deadline, step, ok_mods, no_device, name, target, script, extra, device, cap, needs,
               out) -> None:
    label = f"bench {target} ({script})"
    missing = [m for m in needs if m not in ok_mods]
    if no_device or missing:
        return step(label, "skipped", reason=no_device or f"cannot import {', '.join(missing)}")
    if name == "training" and "pyautoattack" not in ok_mods:
        extra = [*extra, "--aa-points", "0"]  # its AutoAttack part runs the authors' code
    cmd = [sys.executable, f"benchmarks/{script}", "--device", device, *extra, "--doc", str(out.resolve() / "perf.md")]
    p = run_capped(cmd, cap_s=deadline.cap(cap), log=log, env=env, cwd=REPO, name=f"bench-{name}")
    res.setdefault("benchmarks", {})[target] = {"script": script, "args": extra, "rc": p.rc, "seconds": round(p.seconds, 1),
                                                "tables": md_tables(p.output) if p.rc == 0 else []}
    step(label, p.status, p.seconds, "" if p.rc == 0 else p.tail(3))


def rows_step(res, rows, state, ctx, step, no_device, dry, hook) -> None:
    if no_device:
        return step("rows", "skipped", reason=no_device)
    passes = []
    # A dry run plays three sessions over one state file: stopped at its first checkpoint, resumed, found done.
    for i in range(3 if dry else 1):
        ctx.interrupt_after_checkpoint = hook and i == 0
        t0 = ctx.deadline.elapsed()
        fresh = R.State(state.root)  # read back from disk, as a later session would
        recs = R.run_rows(rows, fresh, ctx)
        passes.append(recs)
        state.data = fresh.data
        bad = [r for r in recs if r.get("after") == "failed"]
        step(f"rows (pass {i + 1})", "failed" if bad else "ok", ctx.deadline.elapsed() - t0,
             "; ".join(f"{r['id']}: {r.get('reason')}" for r in bad))
    res["rows"] = passes
    if dry and any(r.get("action") != "none (found done)" for r in passes[-1]):
        step("rows: resume check", "failed", reason="the last pass should find every row done")


def _repo_path(p) -> Path:
    p = Path(p)
    return p if p.is_absolute() else REPO / p


def _rel(p: Path) -> str:
    """A path relative to the repository when inside it: the same string works on both machines."""
    p = Path(p).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):  # the device machine may lack git or .git
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
