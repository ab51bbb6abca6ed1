"""Keep large model exports in git history instead of the working tree.

Why: every tracked file travels to the GPU machine with each device call, within 64 MiB together with
the carried wheels, data and resumable state (benchmarks/gpu_session.py). The committed CIFAR-10
exports weigh 1.6 MiB each; kept in the tree they would leave no room for the state. An archived export
stays in the commit that added it; ``docs/results/exports.json`` records that commit, the path, the
size and the SHA-256, and ``restore`` writes the file back to its path, which .gitignore names, so a
restored export neither travels nor gets committed twice.

    git add -f FILE.safetensors && git commit -m "..."          # the export enters history
    python tools/exports_archive.py archive FILE.safetensors    # untracked, kept on disk, indexed
    git add docs/results/exports.json && git commit -m "..."
    python tools/exports_archive.py restore 'docs/results/cifar10-cpu/cifar-madry-*'   # later
    python tools/exports_archive.py list

Exit status: 0 done, 2 bad input (one line, no traceback).
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

INDEX = Path("docs/results/exports.json")


class ArchiveError(Exception):
    pass


def _git(root: Path, *args: str, binary: bool = False):
    r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=not binary)
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace") if binary else r.stderr
        raise ArchiveError(f"git {' '.join(args[:2])}: {err.strip().splitlines()[-1] if err.strip() else 'failed'}")
    return r.stdout


def repo_root(start: Path) -> Path:
    return Path(_git(start, "rev-parse", "--show-toplevel").strip())


def load_index(root: Path) -> List[dict]:
    f = root / INDEX
    return json.loads(f.read_text()) if f.is_file() else []


def _write_index(root: Path, entries: List[dict]) -> None:
    f = root / INDEX
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(sorted(entries, key=lambda e: e["path"]), indent=1) + "\n")
    os.replace(tmp, f)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def archive(root: Path, paths: List[str]) -> List[dict]:
    """Index each committed, unmodified ``paths`` entry at HEAD and untrack it (the file stays on disk)."""
    head = _git(root, "rev-parse", "HEAD").strip()
    rels = []
    for p in paths:
        rel = Path(os.path.relpath(Path(p).resolve(), root)).as_posix()
        if rel.startswith(".."):
            raise ArchiveError(f"{p}: outside the repository")
        if not _git(root, "ls-files", "--", rel).strip():
            raise ArchiveError(f"{rel}: not tracked; commit it first (git add -f {rel})")
        if _git(root, "status", "--porcelain", "--", rel).strip():
            raise ArchiveError(f"{rel}: differs from HEAD; commit it first")
        rels.append(rel)
    by_path = {e["path"]: e for e in load_index(root)}
    added = []
    for rel in rels:
        blob = _git(root, "show", f"{head}:{rel}", binary=True)
        e = {"path": rel, "commit": head, "bytes": len(blob), "sha256": _sha256(blob)}
        by_path[rel] = e
        added.append(e)
    _git(root, "rm", "--cached", "-q", "--", *rels)
    _write_index(root, list(by_path.values()))
    return added


def restore(root: Path, patterns: List[str]) -> List[dict]:
    """Write back every indexed export whose path matches one of ``patterns`` (all when empty)."""
    chosen = [e for e in load_index(root) if not patterns or any(fnmatch.fnmatch(e["path"], p) for p in patterns)]
    if patterns and not chosen:
        raise ArchiveError(f"no archived export matches {' '.join(patterns)} (see: list)")
    done = []
    for e in chosen:
        dest = root / e["path"]
        if dest.is_file() and _sha256(dest.read_bytes()) == e["sha256"]:
            done.append({**e, "action": "present"})
            continue
        try:
            blob = _git(root, "show", f"{e['commit']}:{e['path']}", binary=True)
        except ArchiveError:
            raise ArchiveError(f"{e['path']}: commit {e['commit'][:12]} is not in this clone "
                               "(a shallow clone? fetch the full history)") from None
        if _sha256(blob) != e["sha256"]:
            raise ArchiveError(f"{e['path']}: the content in {e['commit'][:12]} does not match the index's SHA-256")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, dest)
        done.append({**e, "action": "restored"})
    return done


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="exports_archive", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("archive", help="index committed exports and untrack them")
    a.add_argument("paths", nargs="+")
    r = sub.add_parser("restore", help="write archived exports back from history")
    r.add_argument("patterns", nargs="*", help="fnmatch patterns on the indexed paths (default: all)")
    sub.add_parser("list", help="the index, with whether each file is on disk")
    args = p.parse_args(argv)
    try:
        root = repo_root(Path.cwd())
        if args.cmd == "archive":
            for e in archive(root, args.paths):
                print(f"archived {e['path']} ({e['bytes'] / 2**20:.2f} MiB) at {e['commit'][:12]}")
            print(f"now commit {INDEX} and the removals")
        elif args.cmd == "restore":
            for e in restore(root, args.patterns):
                print(f"{e['action']:<9} {e['path']}")
        else:
            for e in load_index(root):
                here = (root / e["path"]).is_file()
                print(f"{e['path']:<64} {e['bytes'] / 2**20:6.2f} MiB  {e['commit'][:12]}  {'on disk' if here else 'archived'}")
    except ArchiveError as e:
        print(f"exports_archive: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
