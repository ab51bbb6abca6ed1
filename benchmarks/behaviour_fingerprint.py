"""Behaviour fingerprint: the first 20 training losses per preset, bitwise, and the default run's eval.json.

A restructuring that claims "behaviour unchanged" runs this before and after, on the same machine
and thread count, and compares:

    python benchmarks/behaviour_fingerprint.py --out before.json          # on the old commit
    python benchmarks/behaviour_fingerprint.py --out after.json           # on the new one
    python benchmarks/behaviour_fingerprint.py --compare before.json after.json

Everything goes through the CLI (``attnguard train``), so the fingerprint does not depend on the
library's internal API, which is what a restructuring changes. One thread, deterministic
algorithms, CPU. Losses are stored as ``float.hex`` so equality is bitwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PRESETS = ["standard", "madry", "madry+aad", "alp", "alp+aad", "at", "at+alp", "afm", "trades", "trades+aad"]
# One BatchNorm model too: the fused clean+adversarial pass changes BN statistics, LeNet has no BN.
BN_PRESETS = ["madry", "madry+aad", "alp", "alp+aad", "at+alp", "afm", "trades"]
STEPS = 20


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return env


def _train(out: Path, args: list) -> None:
    cmd = [sys.executable, "-m", "attnguard", "train", "--out", str(out), "--device", "cpu",
           "--set", "train.deterministic=true", "--set", "train.progress=false", *args]
    subprocess.run(cmd, check=True, env=_env(), stdout=subprocess.DEVNULL)


def _losses(run: Path) -> list:
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [float(r["loss"]).hex() for r in lines if r.get("split") == "train"][:STEPS]


def _short(preset: str, extra: list) -> list:
    return ["--defense", preset, "--no-eval", "--set", f"train.max_steps={STEPS}", "--set", "train.log_every=1",
            *extra]


def fingerprint(skip_default: bool) -> dict:
    out: dict = {"lenet": {}, "resnet9": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for p in PRESETS:
            run = tmp / f"lenet-{p}"
            _train(run, _short(p, []))
            out["lenet"][p] = _losses(run)
            print(f"lenet {p}: {out['lenet'][p][:2]}", flush=True)
        bn = ["--dataset", "synthetic-boxes", "--model", "resnet9", "--set", "model.width=0.25",
              "--set", "train.batch_size=32", "--set", "adversary.steps=2"]
        for p in BN_PRESETS:
            run = tmp / f"resnet9-{p}"
            _train(run, _short(p, bn))
            out["resnet9"][p] = _losses(run)
            print(f"resnet9 {p}: {out['resnet9'][p][:2]}", flush=True)
        if not skip_default:
            run = tmp / "default"
            _train(run, [])
            ev = json.loads((run / "eval.json").read_text())
            out["default_eval"] = _strip_volatile(ev)
            out["default_losses"] = [float(json.loads(l)["loss"]).hex()
                                     for l in (run / "metrics.jsonl").read_text().splitlines()
                                     if l.strip() and json.loads(l).get("split") == "train"]
    return out


_VOLATILE = {"seconds", "time", "wall_clock", "created", "date", "system", "machine", "path", "checkpoint",
             "elapsed", "torch", "host", "started", "finished", "run"}


def _strip_volatile(obj):
    """eval.json minus timings, dates, paths and machine descriptions (which differ between any two runs)."""
    if isinstance(obj, dict):
        return {k: _strip_volatile(v) for k, v in obj.items() if k not in _VOLATILE}
    if isinstance(obj, list):
        return [_strip_volatile(v) for v in obj]
    return obj


def compare(a: dict, b: dict) -> int:
    bad = 0
    for model in ("lenet", "resnet9"):
        for p, losses in a.get(model, {}).items():
            other = b.get(model, {}).get(p)
            same = other == losses
            bad += not same
            print(f"{model:8s} {p:12s} {'identical' if same else 'DIFFERENT'} ({len(losses)} losses)")
    for key in ("default_losses", "default_eval"):
        if key in a or key in b:
            same = a.get(key) == b.get(key)
            bad += not same
            print(f"{key:21s} {'identical' if same else 'DIFFERENT'}")
    print("all identical" if not bad else f"{bad} difference(s)")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the fingerprint here")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two fingerprints")
    ap.add_argument("--skip-default", action="store_true", help="skip the full default run (about 2.5 minutes)")
    args = ap.parse_args()
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        return compare(a, b)
    fp = fingerprint(args.skip_default)
    text = json.dumps(fp, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
