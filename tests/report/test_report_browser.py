"""The report in a real browser: headless Chromium renders it without errors and the page is not blank."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from attnguard.report import build_report

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio"]

# Injected into a test copy of the page: collects script errors, console.error calls, resources that
# failed to load and images that did not decode, then writes the tally into the title after load.
HOOK = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  if (t && t !== window && (t.src || t.href)) { __errors.push('resource ' + String(t.src || t.href).slice(0, 60)); }
  else { __errors.push('error ' + e.message); }
}, true);
window.addEventListener('unhandledrejection', function (e) { __errors.push('rejection ' + e.reason); });
var __ce = console.error;
console.error = function () { __errors.push('console ' + Array.prototype.join.call(arguments, ' ')); __ce.apply(console, arguments); };
window.addEventListener('load', function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) broken++; }
  if (broken) __errors.push('broken images ' + broken);
  document.title = 'ERRORS:' + __errors.length + ':IMAGES:' + imgs.length + ':' + __errors.join('|');
});
</script>"""


def chromium(args, tmp_path, timeout=90):
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def png_bytes(color):
    from io import BytesIO

    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.bar([0, 1, 2], [3, 1, 2], color=color)
    buf = BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@pytest.fixture
def report(tmp_path):
    runs = []
    for name, clean, pgd in (("madry", 0.98, 0.91), ("aad <b>", 0.975, 0.93)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text("data:\n  name: mnist\nmodel:\n  name: lenet\nadversary:\n  eps: 0.3\n"
                                         "note: \"</pre><script>alert(1)</script>\"\n")
        rows = [{"epoch": e, "split": s, "loss": 1.0 / e, "acc_clean": 0.6 + 0.1 * e, "acc_adv": 0.3 + 0.1 * e}
                for e in (1, 2, 3) for s in ("train", "val")]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        (run / "eval.json").write_text(json.dumps({
            "dataset": "mnist", "model": "lenet", "eps": 0.3, "n_examples": 100, "clean": clean,
            "attacks": {"fgsm": pgd + 0.03, "pgd-20": pgd}, "worst_case": pgd, "seconds": {},
            "sanity": [{"check": "grad", "status": "pass", "detail": "fine"},
                       {"check": "eps", "status": "warn", "detail": "check"}]}))
        (run / "gallery.png").write_bytes(png_bytes("#c51b7d"))
        (run / "analysis").mkdir()
        (run / "analysis" / "iou.png").write_bytes(png_bytes("#1b7837"))
        (run / "analysis" / "analysis.json").write_text(json.dumps({
            "attack": "stepll", "eps": 0.3, "n_examples": 50, "n_correct": 48, "n_succeed": 10, "n_fail": 38,
            "clean_vs_adv": {"grid": "8x8", "rows": [{"cells": 5, "succeed": 0.4, "fail": 0.6}]},
            "plots": ["iou.png"], "notes": []}))
        runs.append(run)
    return build_report(runs, tmp_path / "report.html", compute_missing=False)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_without_errors_and_is_not_blank(report, tmp_path):
    page = report.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>\n" + HOOK, 1))
    dom = chromium(["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", dom.stdout, re.S)
    assert title, dom.stdout[:500]
    m = re.match(r"ERRORS:(\d+):IMAGES:(\d+):(.*)", title.group(1), re.S)
    assert m, f"the probe did not run: {title.group(1)!r}"
    assert m.group(1) == "0", m.group(3)
    assert int(m.group(2)) == 6  # per run: training curves, gallery, one analysis plot
    assert "alert(1)" not in re.sub(r"&lt;script&gt;alert\(1\)&lt;/script&gt;", "", dom.stdout)  # stayed text

    shot = tmp_path / "shot.png"
    out = chromium([f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri()], tmp_path)
    assert shot.is_file(), out.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert img.shape[:2] == (2000, 1280)
    assert img.std() > 20  # header band, tables and figures: far from a blank page
    white = (img > 245).all(axis=2).mean()
    assert white < 0.9, f"{white:.0%} of the screenshot is white"
    header = img[:60, :, :]  # the coloured header band is drawn
    assert header[..., 2].mean() > header[..., 0].mean() + 40
