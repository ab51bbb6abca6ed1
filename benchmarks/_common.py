"""Shared helpers of the speed benchmarks: arguments, timing, machine description, report append.

Timing protocol (every script): build everything outside the timed region, run each candidate
``warmup`` times, then ``repeats`` rounds in which the candidates run one after the other
(interleaved, so a burst of load from another process hits all of them alike). Each timed call
is bracketed by ``torch.cuda.synchronize()`` on CUDA, so the clock reads finished work; the
timed callables themselves make no host syncs. The reported figure is the median.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DOC = REPO / "docs" / "PERFORMANCE.md"


# -- arguments -----------------------------------------------------------------------------------
def base_parser(description: str, *, cpu_batch: int, cuda_batch: int, cpu_repeats: int = 3,
                cuda_repeats: int = 5) -> argparse.ArgumentParser:
    """The options every benchmark takes; ``finish_args`` fills the device-dependent defaults."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"examples per batch (default {cpu_batch} on cpu, {cuda_batch} on cuda)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed rounds; the median is reported (default {cpu_repeats} cpu, {cuda_repeats} cuda)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls of each candidate before timing")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time; cpu: this process's CPU time (time.process_time), which other "
                        "processes on a shared machine barely disturb; use it with --threads 1 (CPU device only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-idle", type=float, default=None, metavar="PCT",
                   help="before measuring, wait (up to 10 min) until the CPUs were at least PCT%% idle over 5 s "
                        "(other processes on a shared machine)")
    p.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="markdown file the results are appended to")
    p.add_argument("--no-append", action="store_true", help="print the results only")
    p.set_defaults(_cpu_batch=cpu_batch, _cuda_batch=cuda_batch, _cpu_repeats=cpu_repeats,
                   _cuda_repeats=cuda_repeats)
    return p


def finish_args(args: argparse.Namespace) -> torch.device:
    """Fill device-dependent defaults, set threads and seed; returns the device."""
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)")
    if args.batch_size is None:
        args.batch_size = args._cuda_batch if cuda else args._cpu_batch
    if args.repeats is None:
        args.repeats = args._cuda_repeats if cuda else args._cpu_repeats
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--batch-size and --repeats must be >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and cuda:
        raise SystemExit("--clock cpu measures host CPU time; on CUDA use --clock wall")
    CLOCK["name"] = args.clock
    torch.manual_seed(args.seed)
    if args.wait_idle is not None:
        wait_for_idle(args.wait_idle)
    return torch.device("cuda" if cuda else "cpu")


def idle_share(sample_s: float = 5.0) -> Optional[float]:
    """Fraction of CPU time spent idle over ``sample_s`` seconds (None where /proc/stat is missing)."""
    a = cpu_ticks()
    time.sleep(sample_s)
    b = cpu_ticks()
    if not a or not b:
        return None
    d = [y - x for x, y in zip(a, b)]
    return (d[3] + d[4]) / sum(d) if sum(d) > 0 else None


def wait_for_idle(min_idle_pct: float, timeout_s: float = 600.0) -> None:
    """Block until the machine was at least ``min_idle_pct`` % idle over a 5 s sample (or the timeout passes)."""
    t0 = time.time()
    while True:
        idle = idle_share()
        if idle is None or idle * 100 >= min_idle_pct:
            return
        if time.time() - t0 > timeout_s:
            print(f"still busy after {timeout_s:.0f} s ({idle:.0%} idle); measuring anyway", file=sys.stderr)
            return
        print(f"CPUs {idle:.0%} idle < {min_idle_pct:g}%; waiting ...", file=sys.stderr, flush=True)
        time.sleep(5)


# -- timing --------------------------------------------------------------------------------------
CLOCK = {"name": "wall"}  # set by finish_args; time_interleaved reads it


def clock_fn():
    return time.process_time if CLOCK["name"] == "cpu" else time.perf_counter


def clock_note() -> str:
    if CLOCK["name"] == "cpu":
        return (f"Clock: process CPU time with {torch.get_num_threads()} torch thread(s) (time.process_time; "
                "insensitive to other processes sharing the cores; images/s are per CPU-second)")
    return "Clock: wall time (time.perf_counter)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    seconds: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median of the timed rounds: how noisy the measurement was."""
        return (max(self.seconds) - min(self.seconds)) / self.median if self.seconds else float("nan")


def time_interleaved(candidates: Dict[str, Callable[[], object]], device: torch.device, *, warmup: int,
                     repeats: int, verbose: bool = True) -> Dict[str, Timing]:
    """Median wall time of each zero-argument callable, measured in interleaved rounds."""
    for name, fn in candidates.items():
        for _ in range(warmup):
            fn()
        sync(device)
    out = {name: Timing() for name in candidates}
    now = clock_fn()
    for r in range(repeats):
        for name, fn in candidates.items():
            sync(device)
            t0 = now()
            fn()
            sync(device)
            out[name].seconds.append(now() - t0)
        if verbose:
            print(f"  round {r + 1}/{repeats}: " + ", ".join(f"{n} {t.seconds[-1]:.3f}s" for n, t in out.items()),
                  file=sys.stderr, flush=True)
    return out


# -- machine description -------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_ticks() -> Optional[List[int]]:
    """Aggregate CPU tick counters from /proc/stat (user, nice, system, idle, iowait, irq, softirq, steal)."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None


def steal_share(before: Optional[List[int]], after: Optional[List[int]]) -> Optional[float]:
    """Fraction of CPU time the hypervisor gave to other guests between two snapshots (noise indicator)."""
    if not before or not after:
        return None
    d = [a - b for a, b in zip(after, before)]
    return d[7] / sum(d) if sum(d) > 0 else None


def machine(device: torch.device) -> Dict[str, object]:
    info = {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cpu",
        "load avg (1/5/15 min)": "/".join(f"{v:.2f}" for v in os.getloadavg()),
        "commit": git_commit(),
        "_ticks": cpu_ticks(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
        info["cuda"] = str(torch.version.cuda)
        info["cudnn.allow_tf32"] = str(torch.backends.cudnn.allow_tf32)
        info["matmul.allow_tf32"] = str(torch.backends.cuda.matmul.allow_tf32)
    return info


# -- output --------------------------------------------------------------------------------------
def command_line() -> str:
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
                   if k in os.environ)
    argv = [Path(sys.argv[0]).as_posix()]
    try:
        argv[0] = Path(sys.argv[0]).resolve().relative_to(REPO).as_posix()
    except ValueError:
        pass
    cmd = "python " + " ".join(shlex.quote(a) for a in argv + sys.argv[1:])
    return f"{env} {cmd}".strip()


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v):
        return v if isinstance(v, str) else f"{v:,.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def rate(v: float) -> str:
    """A throughput with sensible precision (7.4, 153, 12,345)."""
    return f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def report(title: str, device: torch.device, sections: Sequence[str], args: argparse.Namespace,
           machine_before: Optional[Dict[str, object]] = None) -> str:
    """Print the result block and append it to ``args.doc`` (unless ``--no-append``); returns the markdown."""
    after = machine(device)
    info = dict(machine_before or after)
    if machine_before is not None:
        info["load avg (1/5/15 min)"] = (f"{machine_before['load avg (1/5/15 min)']} at start, "
                                         f"{after['load avg (1/5/15 min)']} at end")
        steal = steal_share(machine_before["_ticks"], after["_ticks"])
        if steal is not None:
            info["CPU steal during run"] = f"{steal:.1%}"
    info = {k: v for k, v in info.items() if not k.startswith("_")}
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [f"### {title} ({date})", "", "```", command_line(), "```", "",
          "Machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()) + ".", ""]
    for s in sections:
        md += [s.rstrip(), ""]
    md += [clock_note() + ".", ""]
    text = "\n".join(md)
    print(text)
    if not args.no_append:
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        with open(args.doc, "a", encoding="utf-8") as f:
            f.write("\n" + text)
        print(f"(appended to {args.doc})", file=sys.stderr)
    return text


# -- small utilities -----------------------------------------------------------------------------
def count_macs(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates per example of one forward pass (Conv2d and Linear layers; the rest is small)."""
    total = [0]

    def conv_hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total[0] += out.numel() * k

    def lin_hook(m, inp, out):
        total[0] += out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return float(total[0])


def random_batch(n: int, shape: Sequence[int], num_classes: int, device: torch.device, seed: int):
    """Uniform [0, 1] images and uniform labels from a private generator (same data for every candidate)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return x.to(device), y.to(device)
