"""The HTML report: self-contained, every run and value present, escaped config text, missing parts as notes."""

import base64
import json
import re
import sys
import types

import pytest
import torch
import yaml

import attnguard
from attnguard.errors import CheckpointError
from attnguard.io import atomic_torch_save
from attnguard.report import build_report

PNG = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('x')</script> & \"quotes\""


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: a second intra-op thread only adds OpenMP barrier spinning on shared CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_run(path, *, eps=0.3, clean=0.981, attacks=None, sanity=None, metrics=True, gallery=None, analysis=None,
              checkpoint=True, note=EVIL):
    cfg = {"data": {"name": "fake", "root": None}, "model": {"name": "lenet", "width": 0.25},
           "defense": {"preset": "madry"}, "adversary": {"eps": eps}, "seed": 0, "notes": note}
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    if checkpoint:
        model = attnguard.create_model("lenet", width=0.25)
        atomic_torch_save({"format": "attnguard-checkpoint", "model_config": model.config,
                           "model": model.state_dict(), "config": cfg}, path / "checkpoints" / "last.pt")
    if metrics:
        rows = [{"epoch": e, "step": e * 10, "split": s, "loss": 2.0 / e, "acc_clean": 0.5 + 0.1 * e,
                 "acc_adv": 0.2 + 0.1 * e} for e in (1, 2, 3) for s in ("train", "val")]
        (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    attacks = attacks if attacks is not None else {"fgsm": 0.612, "pgd-20": 0.438}
    ev = {"dataset": "fake", "model": "lenet", "eps": eps, "n_examples": 64, "clean": clean, "attacks": attacks,
          "worst_case": min(attacks.values()) if attacks else clean, "seconds": {"pgd-20": 1.5},
          "sanity": sanity if sanity is not None else [
              {"check": "gradient attacks beat random noise", "status": "pass", "detail": "ok"},
              {"check": "accuracy drops to 0 at eps=1", "status": "warn", "detail": "<b>0.02</b> left"}]}
    (path / "eval.json").write_text(json.dumps(ev))
    if gallery:
        (path / "gallery.png").write_bytes(gallery)
    if analysis:
        (path / "analysis").mkdir()
        (path / "analysis" / "analysis.json").write_text(json.dumps(analysis))
    return path


def tiny_png():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


ANALYSIS = {"attack": "stepll", "attack_used": "stepll", "eps": 0.3, "n_examples": 100, "n_correct": 90,
            "n_succeed": 60, "n_fail": 30, "boxes": "dataset",
            "clean_vs_adv": {"grid": "8x8", "rows": [{"cells": 5, "succeed": 0.393, "fail": 0.574},
                                                     {"cells": 10, "succeed": 0.49, "fail": 0.677}]},
            "attention_vs_box": {"table1": {"succeed": {"percentage": 0.741, "iou": 0.647},
                                            "fail": {"percentage": 0.259, "iou": 0.701}},
                                 "table2": {"threshold": 0.5, "n_images": 12,
                                            "succeed": {"percentage": 0.828, "confidence": 0.8944},
                                            "fail": {"percentage": 0.172, "confidence": 0.7941}}},
            "activation_in_region": {"box": {"clean": 0.41, "adv": 0.21}},
            "lime": {"n_images": 4, "num_samples": 300, "table4": [{"features": 8, "succeed": 0.413, "fail": 0.442}],
                     "table5": [{"features": 8, "succeed": 0.138, "fail": 0.212}]},
            "notes": ["a <note> to escape"], "plots": []}


@pytest.fixture
def runs(tmp_path):
    a = write_run(tmp_path / "madry-run", gallery=tiny_png(), analysis=ANALYSIS)
    b = write_run(tmp_path / "aad-run", eps=0.3, clean=0.975, attacks={"fgsm": 0.70, "pgd-20": 0.5, "cw-20": 0.52})
    return [a, b]


def test_report_is_self_contained_and_shows_every_run_and_value(runs, tmp_path):
    out = build_report(runs, tmp_path / "out" / "report.html", compute_missing=False)
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    # no external resources: every src/href is a data: URI or an in-page anchor, and there are no scripts
    for attr, value in re.findall(r'\b(src|href)\s*=\s*"([^"]*)"', page):
        assert value.startswith("data:image/png;base64,") or value.startswith("#"), (attr, value[:40])
    assert not re.search(r"https?://", page) and "<script" not in page.lower() and "<link" not in page.lower()
    assert "@import" not in page and "url(" not in page
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) >= 3  # two sets of training curves and the gallery
    assert all(base64.b64decode(i)[:8] == PNG for i in imgs)
    for name in ("madry-run", "aad-run"):
        assert name in page
    # evaluation table: both runs side by side, union of attacks, worst case, best per row in bold
    for value in ("98.1%", "97.5%", "61.2%", "43.8%", "70.0%", "50.0%", "52.0%"):
        assert value in page
    assert page.index(">clean<") < page.index(">fgsm<") < page.index(">pgd-20<") < page.index(">cw-20<") \
        < page.index(">worst case<")
    assert '<td class="best">98.1%<span class="n">n=64</span></td>' in page and '<td>&ndash;</td>' in page  # cw-20 missing in run 1
    # sanity badges and analysis tables
    assert 'class="badge ok">pass<' in page and 'class="badge warn">warn<' in page
    assert "0.574" in page and "74.1%" in page and "0.894" in page and "0.212" in page
    # escaping: config strings, check details and notes arrive as text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert "&lt;b&gt;0.02&lt;/b&gt;" in page and "a &lt;note&gt; to escape" in page
    assert "<details" in page and "config.yaml" in page


def test_report_notes_missing_parts_and_rejects_bad_paths(tmp_path):
    run = write_run(tmp_path / "bare", metrics=False, checkpoint=False, attacks={}, sanity=[])
    (run / "eval.json").write_text("{not json")
    page = build_report([run], tmp_path / "r.html").read_text()
    assert "eval.json is not valid JSON" in page and "No training curves" in page
    assert "no checkpoint in this run" in page and "No run has an eval.json" in page
    with pytest.raises(CheckpointError, match="not a run directory"):
        build_report([tmp_path / "missing"], tmp_path / "r2.html")
    with pytest.raises(CheckpointError, match="at least one"):
        build_report([], tmp_path / "r3.html")


def test_duplicate_run_names_get_their_parent(tmp_path):
    a = write_run(tmp_path / "exp1" / "run", checkpoint=False)
    b = write_run(tmp_path / "exp2" / "run", checkpoint=False)
    page = build_report([a, b], tmp_path / "r.html", compute_missing=False).read_text()
    assert "exp1/run" in page and "exp2/run" in page


def test_missing_gallery_and_analysis_are_computed(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    test = types.SimpleNamespace(images=torch.randint(0, 256, (24, 1, 28, 28), dtype=torch.uint8, generator=g),
                                 labels=torch.arange(24) % 10, boxes=torch.tensor([[4.0, 4, 20, 20]]).repeat(24, 1))
    info = types.SimpleNamespace(num_classes=10, class_names=[str(i) for i in range(10)])
    fake = types.ModuleType("attnguard.data")
    fake.load_dataset = lambda name, root=None: types.SimpleNamespace(info=info, train=test, test=test)
    monkeypatch.setitem(sys.modules, "attnguard.data", fake)
    run = write_run(tmp_path / "run")
    page = build_report([run], tmp_path / "r.html", gallery_n=2, analysis_n=24, lime_examples=0).read_text()
    assert "Grad-CAM gallery of run" in page and "computed for this report on the first 24" in page
    assert not (run / "gallery.png").exists() and not (run / "analysis").exists()  # run dirs stay untouched
