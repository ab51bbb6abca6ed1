"""benchmarks/gpu_session.py, the one command of a lent GPU session, checked on the CPU.

Most tests drive its pieces directly: the row list, the row state machine (with a stand-in for the
attnguard CLI, so every transition is deterministic), pruning and packing the state folder and
restoring it, the wheel repacking and installing, the capped children, the benchmark-table
verdicts. One test runs the real ``--dry-run --steps rows``: real training, a stop at the first
checkpoint, ``--resume``, evaluation and a pass that finds the row done. The full dry run (tests
and benchmarks as well) is ``benchmarks/test_benchmarks_smoke.py::test_gpu_session_dry_run`` (slow).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _gpu_env as E  # noqa: E402
import _gpu_rows as R  # noqa: E402
import _gpu_report as G  # noqa: E402
from _gpu_proc import Deadline, Log, Proc, SessionError, child_env, run_capped  # noqa: E402


# -- the row list -------------------------------------------------------------------------------------
def test_rows_are_read_and_checked():
    (row,) = R.load_rows('[{"config": "aad/x", "seed": 1, "attacks": [["fgsm", "pgd-20"], "autoattack"], '
                         '"dataset": "parquet:{data}"}]')
    assert row.id == "aad-x-s1" and row.attacks == ["fgsm,pgd-20", "autoattack"]
    assert [row.eval_file(0), row.eval_file(1)] == ["eval.json", "eval-autoattack.json"]
    assert {"pyautoattack", "pyarrow", "attnguard.cli"} <= set(row.needs())
    other = R.load_rows('[{"config": "aad/x", "seed": 1, "set": ["model.width=0.5"]}]')[0]
    assert other.id != row.id and other.id.endswith("-s1")  # extra settings make another row
    with pytest.raises(SessionError, match="unknown keys"):
        R.load_rows('[{"config": "a", "epochs": 3}]')
    with pytest.raises(SessionError, match="repeat"):
        R.load_rows('[{"config": "a"}, {"config": "a"}]')
    with pytest.raises(SessionError, match="'config'"):
        R.load_rows('[{"seed": 2}]')
    with pytest.raises(SessionError, match="row id"):
        R.load_rows('[{"config": "a", "id": "a b/c"}]')


def test_shipped_row_list_loads():
    rows = R.load_rows(str(BENCH / "gpu_rows.json"))
    assert len(rows) >= 1 and all(r.dataset == "parquet:{data}" for r in rows)
    from attnguard.configs import find_config

    for r in rows:
        find_config(r.config)  # a packaged config: raises if the name is wrong


# -- the row state machine, with a stand-in for the CLI ----------------------------------------------------
class FakeCLI:
    """Plays ``attnguard train`` / ``eval``: writes the files the real commands write."""

    def __init__(self, train_rc=None):
        self.calls = []
        self.train_rc = train_rc

    def __call__(self, cmd, *, cap_s, log, env, cwd, name, stop_when=None, **_):
        self.calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        if "train" in cmd:
            if self.train_rc is not None:
                return Proc(self.train_rc, 0.1, False, False, "attnguard train: error: unknown model 'nope'\n")
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text("train:\n  epochs: 2\n")
            if "--resume" in cmd:
                assert (out / "checkpoints" / "last.pt").is_file()
                (out / "metrics.jsonl").write_text('{"epoch": 2, "step": 4}\n')
                (out / "train.json").write_text("{}")
                return Proc(0, 0.1, False, False, "")
            (out / "checkpoints" / "last.pt").write_bytes(b"ckpt")
            (out / "metrics.jsonl").write_text('{"epoch": 1, "step": 2}\n')
            if stop_when is not None and stop_when():  # the hook sees the first checkpoint
                return Proc(130, 0.1, False, True, "interrupted")
            (out / "train.json").write_text("{}")
            return Proc(0, 0.1, False, False, "")
        out.write_text(json.dumps({"clean": 0.9, "worst_case": 0.4, "attacks": {"fgsm": 0.4}, "n_examples": 16,
                                   "eps": 0.3, "seconds": {"fgsm": 1.0}}))
        return Proc(0, 0.1, False, False, "")


def _ctx(tmp_path, *, data=".gpu_data/x", minutes=5.0, **kw):
    d = Deadline(minutes * 60, 1.0)
    return R.RowContext(python=sys.executable, device="cpu", data=data, env={}, importable=lambda m: True,
                        deadline=d, log=Log(tmp_path / "session.log", d), min_row_s=1.0, **kw)


ROW = '[{"id": "r1", "config": "aad/mnist5k-lenet-madry", "attacks": ["fgsm"], "n": 16, "dataset": "parquet:{data}"}]'


def test_row_stops_resumes_then_is_found_done(tmp_path, monkeypatch):
    fake = FakeCLI()
    monkeypatch.setattr(R, "run_capped", fake)
    rows = R.load_rows(ROW)
    root = tmp_path / "state"
    first = R.run_rows(rows, R.State(root), _ctx(tmp_path, interrupt_after_checkpoint=True))
    assert first[0]["after"] == "partial" and first[0]["train"]["stopped_by_hook"]
    assert json.loads((root / "state.json").read_text())["rows"]["r1"]["status"] == "partial"  # saved to disk

    second = R.run_rows(rows, R.State(root), _ctx(tmp_path))  # a later session reads the file
    resume = fake.calls[1]
    assert "--resume" in resume and "--config" not in resume
    assert resume[resume.index("--dataset") + 1] == "parquet:.gpu_data/x"  # the data path is given again
    assert second[0]["after"] == "done" and second[0]["evals"][0]["worst_case"] == 0.4
    assert second[0]["epoch"] == 2 and second[0]["epochs"] == 2
    assert fake.calls[2][fake.calls[2].index("--attacks") + 1] == "fgsm"

    third = R.run_rows(rows, R.State(root), _ctx(tmp_path))
    assert third[0]["action"] == "none (found done)" and len(fake.calls) == 3
    hist = R.State(root).data["rows"]["r1"]["history"]
    assert [(h["from"], h["to"]) for h in hist] == [("pending", "partial"), ("partial", "done")]


def test_failed_row_is_recorded_and_retried_only_on_request(tmp_path, monkeypatch):
    fake = FakeCLI(train_rc=2)
    monkeypatch.setattr(R, "run_capped", fake)
    rows = R.load_rows(ROW)
    root = tmp_path / "state"
    (rec,) = R.run_rows(rows, R.State(root), _ctx(tmp_path))
    assert rec["after"] == "failed" and "unknown model 'nope'" in rec["reason"]
    (rec,) = R.run_rows(rows, R.State(root), _ctx(tmp_path))
    assert rec["action"] == "skipped" and rec["reason"].startswith("failed:") and len(fake.calls) == 1
    fake.train_rc = None
    (rec,) = R.run_rows(rows, R.State(root), _ctx(tmp_path, retry=True))
    assert rec["after"] == "done" and len(fake.calls) == 3


def test_rows_skip_what_cannot_run(tmp_path, monkeypatch):
    fake = FakeCLI()
    monkeypatch.setattr(R, "run_capped", fake)
    root = tmp_path / "state"
    (rec,) = R.run_rows(R.load_rows(ROW), R.State(root), _ctx(tmp_path, data=None))
    assert rec["action"] == "skipped" and "--data" in rec["reason"]
    ctx = _ctx(tmp_path)
    ctx.importable = lambda m: m != "pyarrow"
    (rec,) = R.run_rows(R.load_rows(ROW), R.State(root), ctx)
    assert rec["action"] == "skipped" and "pyarrow" in rec["reason"]
    (rec,) = R.run_rows(R.load_rows(ROW), R.State(root), _ctx(tmp_path, minutes=0.01))
    assert rec["action"] == "skipped" and "left" in rec["reason"]
    assert fake.calls == []
    R.run_rows(R.load_rows(ROW), R.State(root), _ctx(tmp_path, interrupt_after_checkpoint=True))
    changed = R.load_rows(ROW.replace('"n": 16', '"n": 32'))
    (rec,) = R.run_rows(changed, R.State(root), _ctx(tmp_path))
    assert rec["action"] == "skipped" and "spec changed" in rec["reason"]


# -- what travels back ----------------------------------------------------------------------------------
def _checkpoint(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "attnguard", "version": 1, "model_config": {"arch": "lenet"}, "step": 3,
                "model": {"w": torch.arange(3000.0)}, "optimizer": {"state": {0: {"m": torch.ones(3000)}}},
                "rng": torch.zeros(8, dtype=torch.uint8)}, path)


def test_prune_keeps_what_later_sessions_need(tmp_path):
    state = R.State(tmp_path / "state")
    for row_id, status in [("a", "done"), ("b", "trained"), ("c", "partial")]:
        run = state.run_dir(row_id)
        for name in ("last", "best"):
            _checkpoint(run / "checkpoints" / f"{name}.pt")
        (run / "config.yaml").write_text("eval:\n  checkpoint: best\n")
        state.data["rows"][row_id] = {"spec": {}, "status": status, "history": []}
    assert R.prune(state, budget_mib=100) == []
    load = lambda p: torch.load(p, weights_only=True)  # noqa: E731
    assert not (state.run_dir("a") / "checkpoints").exists()
    b = state.run_dir("b") / "checkpoints"
    assert sorted(p.name for p in b.iterdir()) == ["best.pt"] and "optimizer" not in load(b / "best.pt")
    assert torch.equal(load(b / "best.pt")["model"]["w"], torch.arange(3000.0))  # the weights survive
    c = state.run_dir("c") / "checkpoints"
    assert "optimizer" in load(c / "last.pt") and "rng" in load(c / "last.pt")  # a bitwise resume needs them
    assert "optimizer" not in load(c / "best.pt")
    notes = R.prune(state, budget_mib=0.001)
    assert len(notes) == 2 and {state.data["rows"][r]["status"] for r in "bc"} == {"blocked"}
    assert "state budget" in state.data["rows"]["c"]["reason"] and not c.exists()


def test_state_pack_and_absorb_round_trip(tmp_path):
    state = R.State(tmp_path / "state")
    _checkpoint(state.run_dir("c") / "checkpoints" / "last.pt")
    (state.run_dir("c") / "eval.json").write_text("{}")
    state.data["rows"]["c"] = {"spec": {}, "status": "partial", "history": []}
    state.data["generation"] = 1
    state.save()
    out = tmp_path / "out"
    out.mkdir()
    pack = R.pack_state(state, out, part_mib=0.01, max_parts=20)
    assert len(pack) > 2  # split into several parts
    R.pack_results(state, out)
    (out / "session.json").write_text(json.dumps({"session": {"id": "t"}, "state_pack": pack,
                                                  "state_base_generation": 0}))
    target = tmp_path / "restored"
    info = R.absorb(out, target)
    assert info["generation"] == 1
    for f in state.root.rglob("*"):
        if f.is_file():
            assert (target / f.relative_to(state.root)).read_bytes() == f.read_bytes()
    with pytest.raises(SessionError, match="generation"):  # the restored state moved on: would lose work
        R.absorb(out, target)
    assert R.absorb(out, target, force=True)["previous"]
    (out / pack[1]["file"]).write_bytes(b"torn")
    with pytest.raises(SessionError, match="sha256"):
        R.absorb(out, target, force=True)
    with pytest.raises(SessionError, match="parts"):
        R.pack_state(state, out, part_mib=0.01, max_parts=2)
    import tarfile

    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert "runs/c/eval.json" in names and not any("checkpoints" in n for n in names)


# -- wheels ---------------------------------------------------------------------------------------------
def test_wheel_repacked_without_examples_installs_and_imports(tmp_path):
    src = tmp_path / "toypkg-1.0-py3-none-any.whl"
    files = {"toypkg/__init__.py": "VALUE = 7\n", "toypkg/examples/model.bin": "0" * 5000,
             "toypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: toypkg\nVersion: 1.0\n",
             "toypkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(src, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr("toypkg-1.0.dist-info/RECORD", "".join(f"{n},," + "\n" for n in files)
                   + "toypkg-1.0.dist-info/RECORD,,\n")
    dst = tmp_path / "whl" / src.name
    dst.parent.mkdir()
    assert E.repack_without(src, dst, ("/examples/",)) == ["toypkg/examples/model.bin"]
    with zipfile.ZipFile(dst) as z:
        assert "toypkg/examples/model.bin" not in z.namelist()
        assert "examples" not in z.read("toypkg-1.0.dist-info/RECORD").decode()
    assert E.find_wheel(dst.parent, "toypkg") == dst
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                    str(dst)], check=True, capture_output=True)
    env = child_env([site])
    assert E.missing_modules(["toypkg", "no_such_module_xyz"], env) == ["no_such_module_xyz"]
    assert not (site / "toypkg" / "examples").exists()
    (dst.parent / "toypkg-2.0-py3-none-any.whl").write_bytes(dst.read_bytes())
    with pytest.raises(RuntimeError, match="keep one"):  # two versions would stop the whole install
        E.find_wheel(dst.parent, "toypkg")


# -- capped children --------------------------------------------------------------------------------------
SLEEPER = ("import sys, time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
           "    print('stopped cleanly'); sys.exit(130)\n")


def test_children_are_stopped_at_their_cap(tmp_path):
    d = Deadline(600, 0)
    log = Log(tmp_path / "session.log", d)
    p = run_capped([sys.executable, "-c", SLEEPER], cap_s=1.0, log=log, env=child_env([]), cwd=tmp_path, name="s")
    assert p.timed_out and p.rc == 130 and "stopped cleanly" in p.output and p.seconds < 30 and p.status == "timeout"
    deaf = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('deaf', flush=True)\ntime.sleep(60)\n"
    p = run_capped([sys.executable, "-c", deaf], cap_s=1.0, log=log, env=child_env([]), cwd=tmp_path, name="d",
                   grace_s=1.0)
    assert p.rc == -9 and p.seconds < 30  # SIGKILL after the grace period
    flag = tmp_path / "flag"
    flag.touch()
    p = run_capped([sys.executable, "-c", SLEEPER], cap_s=60, log=log, env=child_env([]), cwd=tmp_path, name="h",
                   stop_when=flag.is_file)
    assert p.stopped and not p.timed_out and p.seconds < 30
    assert "stopped cleanly" in (tmp_path / "session.log").read_text()
    assert Deadline(10, 4).cap(100) <= 6


# -- reading the benchmark tables ------------------------------------------------------------------------------
G3 = """### Attack throughput
| model | attack | images/s | vs torchattacks | spread |
|---|---|---|---|---|
| preact-resnet18 | torchattacks.PGD fp32 | 1,000 | 1.00x | 3% |
| preact-resnet18 | attnguard PGD fp32 | 1,050 | 1.05x | 2% |
| preact-resnet18 | attnguard PGD default (bf16 autocast + channels_last) | 2,000 | {r}x | 2% |

Notes.
"""


def test_verdicts_from_benchmark_tables():
    def v(target, text):
        return G.verdicts({target: {"tables": G.md_tables(text)}}, dry=False)[target]

    assert v("G3", G3.format(r="2.00")).endswith(": met") and v("G3", G3.format(r="1.40")).endswith(": missed")
    assert "fp32 1,050 img/s (1.05x)" in v("G3", G3.format(r="2.00"))
    g1 = "| quantity | value |\n|---|---|\n| PGD-10 adversarial training (madry), images/s | {} |\n"
    assert v("G1", g1.format("12,345")).endswith("met") and v("G1", g1.format("9,999")).endswith("missed")
    g2 = ("| model | preset | ms / step | images/s | vs madry | GPU target | spread |\n|---|---|---|---|---|---|---|\n"
          "| preact-resnet18 w1 3x32x32 | madry | 10 | 50 | 1.00x | - | 1% |\n"
          "| preact-resnet18 w1 3x32x32 | afm | 11 | 45 | 1.10x | <= 1.15x: {} | 1% |\n")
    assert v("G2", g2.format("met")) == "afm 1.10x: met" and v("G2", g2.format("missed")).endswith("missed")
    g4 = ("| model (layer net.layer4) | method | images/s | vs pytorch-grad-cam | spread |\n|---|---|---|---|---|\n"
          "| a | attnguard grad_cam, closed form, full | 10 | {}x | 1% |\n")
    assert v("G4", g4.format("6.10")).endswith(": met") and v("G4", g4.format("4.00")).endswith(": missed")
    assert G.verdicts({"G4": {"tables": G.md_tables(g4.format("6.10"))}}, dry=True)["G4"].endswith("GPU target]")


# -- the real thing, rows only ------------------------------------------------------------------------------------
def test_dry_run_rows_stop_resume_and_are_found_done(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(BENCH / "gpu_session.py"), "--dry-run", "--steps", "rows", "--out", str(out),
                        "--state", str(tmp_path / "state")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "session.json").read_text())
    p1, p2, p3 = (p[0] for p in res["rows"])
    assert p1["after"] in ("partial", "done")  # "done" only if training ended before the stop landed
    if p1["after"] == "partial":
        assert p1["train"]["stopped_by_hook"] and p2["train"]["resumed"]
    assert p2["after"] == "done" and p2["evals"][0]["n"] == 16 and p2["step"] == 8  # every planned step ran
    assert p3["action"] == "none (found done)"
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= G.MAX_OUT_FILES and {"summary.md", "session.json", "session.log", "gpu_state.tar.00",
                                              "results.tar.gz"} <= set(files)
    assert "| dry-mnist5k-lenet-madry | done |" in (out / "summary.md").read_text()
    info = R.absorb(out, tmp_path / "restored")  # the state travels back
    assert json.loads((tmp_path / "restored" / "state.json").read_text())["rows"]["dry-mnist5k-lenet-madry"]["status"] == "done"
    assert info["generation"] == 1


def test_prepare_data_keeps_the_first_training_rows_and_their_values(tmp_path):
    """--prepare carries the first N training rows (the protocol's data.train_size): the shards before the
    cut whole, the one it falls in cut; rewritten with zstd, the loaded images, labels and class names are
    those of the full folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from attnguard.data.files import load_parquet

    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    meta = {"huggingface": json.dumps({"info": {"features": {"label": {"names": ["a", "b", "c"]}}}})}
    for name, n in (("train-00000-of-00002", 5), ("train-00001-of-00002", 4), ("test-00000-of-00001", 3)):
        blobs = []
        for _ in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
            blobs.append({"bytes": buf.getvalue(), "path": "x.png"})
        table = pa.table({"image": pa.array(blobs), "label": pa.array(rng.integers(0, 3, n), pa.int64())})
        pq.write_table(table.replace_schema_metadata(meta), src / f"{name}.parquet", compression="none")
    dest = tmp_path / "dest"
    (dest).mkdir()
    (dest / "train-00009-of-00010.parquet").write_bytes(b"stale")
    got = E.prepare_data(src, dest, train_rows=7)
    assert [(Path(g["file"]).name, g["rows"]) for g in got] == [
        ("test-00000-of-00001.parquet", 3), ("train-00000-of-00002.parquet", 5), ("train-00001-of-00002.parquet", 2)]
    assert sorted(p.name for p in dest.iterdir()) == [Path(g["file"]).name for g in got]  # the stale shard is gone
    full, cut = load_parquet(str(src)), load_parquet(str(dest))
    assert torch.equal(cut[0].images, full[0].images[:7]) and torch.equal(cut[0].labels, full[0].labels[:7])
    assert torch.equal(cut[1].images, full[1].images) and cut[2] == full[2] == ["a", "b", "c"]
    assert len(E.prepare_data(src, dest)) == 3 and len(load_parquet(str(dest))[0].labels) == 9  # None: all rows


def test_state_budget_fits_the_room_the_tree_leaves():
    """--prepare cuts the state budget to the carry's room (the committed exports grow the tree)."""
    import gpu_session as G

    assert G.state_budget(30.0, 20.0) == 20.0  # room enough: as asked
    assert G.state_budget(13.1, 20.0) == 13.0  # cut, rounded down to 0.5 MiB
    assert G.state_budget(12.74, 20.0) == 12.5
    assert G.state_budget(G.MIN_STATE_MIB - 0.1, 20.0) is None  # too little for two rows' checkpoints
    assert G.state_budget(30.0, 5.0) == 5.0  # a smaller budget asked for is the caller's choice
