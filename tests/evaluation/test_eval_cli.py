"""``attnguard eval`` through the CLI: an attack on a subset (``pgd-2@5``) says its n, and a failed sanity
check (with ``--sanity``, or the check every evaluation runs) prints a warning line under the table and in eval.md."""

from __future__ import annotations

import json

import pytest

from attnguard.cli import main
from attnguard.evaluation import core as core_mod
from attnguard.evaluation import sanity as sanity_mod

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A run directory holding an untrained LeNet (the tables, not the numbers, are under test); its
    test examples are random images, so no dataset is read."""
    import torch
    import yaml

    from attnguard import create_model
    from attnguard.io import FORMAT, atomic_torch_save
    from attnguard.rundir import RunDir

    torch.manual_seed(0)
    model = create_model("lenet", width=0.25)
    config = {"data": {"name": "mnist-5k", "root": None}, "adversary": {"eps": 0.1}}
    path = tmp_path / "run"
    atomic_torch_save({"format": FORMAT, "model_config": model.config, "model": model.state_dict(),
                       "config": config}, path / "checkpoints" / "best.pt")
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    g = torch.Generator().manual_seed(0)
    monkeypatch.setattr(RunDir, "test_examples", lambda self, n: (
        torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)))
    return path


def _rows(text):
    return [[c.strip() for c in l.strip().strip("│").split("│")] for l in text.splitlines() if "│" in l]


def test_an_attack_on_a_subset_says_its_n(run, tmp_path, capsys):
    out = tmp_path / "ev.json"
    assert main(["eval", str(run), "--attacks", "fgsm,pgd-2@5", "--n-examples", "12", "--out", str(out),
                 "--device", "cpu", "--batch-size", "4"]) == 0
    text = capsys.readouterr().out
    rows = {r[0]: r for r in _rows(text)}
    assert rows["pgd-2"][2] == "5" and rows["fgsm"][2] == "12" and rows["clean"][2] == "12"
    assert any(k.startswith("worst case (first 5 examples") and r[2] == "5" for k, r in rows.items())
    ev = json.loads(out.read_text())
    assert ev["n_per_attack"] == {"fgsm": 12, "pgd-2": 5} and ev["n_worst"] == 5
    assert len(ev["per_example"]["attacks"]["pgd-2"]) == 5 and len(ev["per_example"]["clean"]) == 12
    assert "| pgd-2 |" in (tmp_path / "ev.md").read_text()


def _warn(check):
    return {"check": check, "status": "warn", "detail": "forced for the test"}


@pytest.mark.parametrize("sanity", [False, True])
def test_a_failed_sanity_check_prints_a_warning_under_the_table(run, tmp_path, capsys, monkeypatch, sanity):
    flags = ["--sanity"] if sanity else []
    argv = ["eval", str(run), "--attacks", "fgsm", "--n-examples", "6", "--device", "cpu", *flags]
    # passing checks: no warning line
    ok = {"check": "always-run check", "status": "pass", "detail": "fine"}
    monkeypatch.setattr(core_mod, "check_components_square", lambda per: [ok])
    if sanity:
        monkeypatch.setattr(sanity_mod, "check_iterative", lambda r, where: {**ok, "check": "iterative"})
    assert main(argv + ["--out", str(tmp_path / "ok.json")]) == 0
    text = capsys.readouterr().out
    assert "fine" in text and "WARNING" not in text and "WARNING" not in (tmp_path / "ok.md").read_text()
    # one failing check: a warning line under the table, and one in eval.md
    if sanity:
        monkeypatch.setattr(sanity_mod, "check_iterative", lambda r, where: _warn("iterative beats single-step"))
        failing = "iterative beats single-step"
    else:
        monkeypatch.setattr(core_mod, "check_components_square", lambda per: [_warn("square check")])
        failing = "square check"
    assert main(argv + ["--out", str(tmp_path / "bad.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    bottom = max(i for i, l in enumerate(lines) if l.startswith("└"))
    warnings = [l for l in lines if l.startswith("WARNING")]
    assert len(warnings) == 1 and failing in warnings[0] and lines.index(warnings[0]) > bottom
    md = (tmp_path / "bad.md").read_text()
    assert f"> **WARNING**: sanity check failed: {failing}" in md
    assert md.index("WARNING") < md.index("## Sanity checks")  # under the table, before the details
