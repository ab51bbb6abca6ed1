"""Checkpoint safety: atomic writes survive a failure or a SIGKILL mid-write, and loads never run pickled code.

(The safetensors export through the CLI is tested in test_cli.py::test_export_safetensors.)
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from attnguard import CheckpointError
from attnguard.cli import main
from attnguard.io import FORMAT, atomic_torch_save, atomic_write_text, safe_load


def _payload(i, n=1000):
    return {"format": FORMAT, "i": i, "blob": torch.full((n,), float(i))}


def test_failed_write_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    atomic_torch_save(_payload(1), path)
    before = path.read_bytes()
    real_save = torch.save

    def torn_save(obj, f, *a, **k):  # half a checkpoint reaches the disk, then the "crash"
        real_save(obj, f, *a, **k)
        f.seek(0)
        f.truncate(len(before) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="No space left"):
        atomic_torch_save(_payload(2), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert safe_load(path)["i"] == 1
    assert os.listdir(path.parent) == ["last.pt"]  # the temp file was removed


def test_interrupt_during_fsync_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_torch_save(_payload(1), path)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save(_payload(2), path)
    monkeypatch.undo()
    assert safe_load(path)["i"] == 1 and os.listdir(tmp_path) == ["last.pt"]


def test_atomic_text_write_failure_keeps_old_text(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    atomic_write_text(path, "old: 1\n")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed")))
    with pytest.raises(OSError):
        atomic_write_text(path, "new: 2\n")
    monkeypatch.undo()
    assert path.read_text() == "old: 1\n" and os.listdir(tmp_path) == ["config.yaml"]


WRITER = textwrap.dedent("""
    import sys, torch
    from attnguard.io import FORMAT, atomic_torch_save
    i = 0
    while True:
        i += 1
        atomic_torch_save({"format": FORMAT, "i": i, "blob": torch.full((4_000_000,), float(i))}, sys.argv[1])
        print(i, flush=True)
""")


def test_sigkill_while_writing_large_checkpoints(tmp_path):
    """A process writing 16 MB checkpoints in a loop is SIGKILLed at a random moment; last.pt stays whole."""
    from attnguard.train.config import RunConfig
    from attnguard.train.rundir import open_run_dir

    run = tmp_path / "run"
    path = run / "checkpoints" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for _ in range(3):
            assert proc.stdout.readline().strip(), "writer died"
        time.sleep(0.013 + (time.time_ns() % 37) / 1000)  # somewhere inside a later write
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    ck = safe_load(path)
    assert ck["i"] >= 3 and torch.equal(ck["blob"], torch.full((4_000_000,), float(ck["i"])))
    # a kill mid-write may leave a temp file; the next run on this directory removes it
    open_run_dir(run, RunConfig(), resume=True)
    assert sorted(os.listdir(path.parent)) == ["last.pt"]
    assert safe_load(path)["i"] == ck["i"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


@pytest.fixture
def evil(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": FORMAT, "model_config": {"arch": "lenet"}, "payload": _Evil()}, tmp_path / "evil.pt")
    run = tmp_path / "evilrun"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("data:\n  name: mnist-5k\nadversary:\n  eps: 0.3\n")
    (run / "checkpoints" / "last.pt").write_bytes((tmp_path / "evil.pt").read_bytes())
    (run / "checkpoints" / "best.pt").write_bytes((tmp_path / "evil.pt").read_bytes())
    return tmp_path


def test_malicious_pickle_is_refused_by_safe_load(evil):
    with pytest.raises(CheckpointError, match="not a safe checkpoint") as e:
        safe_load(evil / "evil.pt")
    assert "\n" not in str(e.value)
    assert not (evil / "PWNED_BY_PICKLE").exists()


@pytest.mark.parametrize("argv", [
    ["eval", "evil.pt"],
    ["eval", "evilrun", "--attacks", "fgsm", "--n-examples", "5"],
    ["export", "evil.pt", "--out", "x.safetensors"],
    ["explain", "evilrun", "--out", "g.png"],
    ["train", "--resume", "--out", "evilrun", "--set", "train.progress=false", "--device", "cpu"],
], ids=["eval-file", "eval-run", "export", "explain", "resume"])
def test_malicious_pickle_through_the_cli(evil, capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "not a safe checkpoint" in lines[0], err
    assert not (evil / "PWNED_BY_PICKLE").exists()
    assert not (evil / "x.safetensors").exists() and not (evil / "g.png").exists()


def test_malicious_pickle_real_subprocess(evil):
    p = subprocess.run([sys.executable, "-m", "attnguard", "eval", "evil.pt"], cwd=evil, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 2
    assert [l for l in p.stderr.splitlines() if l.strip()] == [
        "attnguard eval: error: evil.pt is not a safe checkpoint: it holds Python objects that "
        "torch.load(weights_only=True) refuses to run; it was not loaded"]
    assert not (evil / "PWNED_BY_PICKLE").exists()
