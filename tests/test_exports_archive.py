"""tools/exports_archive.py: exports leave the tree, stay in history and come back byte for byte."""
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "exports_archive.py"
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _load():
    spec = importlib.util.spec_from_file_location("exports_archive", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _git(root, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture
def repo(tmp_path, monkeypatch):
    _git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("/res/*.bin\n")
    d = tmp_path / "res"
    d.mkdir()
    (d / "a.bin").write_bytes(bytes(range(256)) * 3)
    (d / "b.bin").write_bytes(b"second model")
    _git(tmp_path, "add", ".gitignore")
    _git(tmp_path, "add", "-f", "res/a.bin", "res/b.bin")
    _git(tmp_path, "commit", "-q", "-m", "exports")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_archive_untracks_indexes_and_restore_brings_back_the_same_bytes(repo, capsys):
    ea = _load()
    head = _git(repo, "rev-parse", "HEAD").strip()
    assert ea.main(["archive", "res/a.bin", "res/b.bin"]) == 0
    assert _git(repo, "ls-files", "res").strip() == ""  # no longer travels as a tracked file
    assert (repo / "res" / "a.bin").is_file()  # still on disk, git-ignored
    idx = json.loads((repo / ea.INDEX).read_text())
    assert [e["path"] for e in idx] == ["res/a.bin", "res/b.bin"]
    assert all(e["commit"] == head for e in idx)
    assert idx[1]["bytes"] == len(b"second model")
    _git(repo, "add", str(ea.INDEX))
    _git(repo, "commit", "-q", "-m", "archive")
    (repo / "res" / "a.bin").unlink()
    (repo / "res" / "b.bin").write_bytes(b"corrupted")
    assert ea.main(["restore", "res/a*"]) == 0
    assert (repo / "res" / "a.bin").read_bytes() == bytes(range(256)) * 3
    assert (repo / "res" / "b.bin").read_bytes() == b"corrupted"  # not matched, left alone
    assert ea.main(["restore"]) == 0
    assert (repo / "res" / "b.bin").read_bytes() == b"second model"
    assert "present" in capsys.readouterr().out  # a.bin was already right
    assert _git(repo, "status", "--porcelain").strip() == ""  # restored files stay untracked and ignored


def test_bad_input_is_one_line_and_exit_2(repo, capsys):
    ea = _load()
    (repo / "res" / "a.bin").write_bytes(b"edited after the commit")
    assert ea.main(["archive", "res/a.bin"]) == 2
    assert ea.main(["archive", "res/nothing.bin"]) == 2
    assert ea.main(["restore", "nothing*"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("exports_archive: error:") for line in err)
    assert "differs from HEAD" in err[0] and "not tracked" in err[1]
    assert _git(repo, "ls-files", "res").split() == ["res/a.bin", "res/b.bin"]  # nothing was untracked


def test_restore_refuses_content_that_does_not_match_the_index(repo, capsys):
    ea = _load()
    assert ea.main(["archive", "res/b.bin"]) == 0
    idx = json.loads((repo / ea.INDEX).read_text())
    idx[0]["sha256"] = "0" * 64
    (repo / ea.INDEX).write_text(json.dumps(idx))
    (repo / "res" / "b.bin").unlink()
    assert ea.main(["restore", "res/b.bin"]) == 2
    assert "does not match" in capsys.readouterr().err
    assert not (repo / "res" / "b.bin").exists()
