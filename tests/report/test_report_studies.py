"""The HTML report shows the studies a run holds (RUN/studies/NAME.png + NAME.json) and a sweep folder's
sweep.md / sweep.png, embedded as the report embeds its other figures."""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from attnguard.cli import main


def _png(path, colour="tab:blue"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([0, 1, 2], [2, 0, 1], color=colour)
    fig.savefig(path)
    plt.close(fig)
    return path


def _run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"name": "mnist-5k"}, "model": {"name": "lenet"},
                                                      "defense": {"preset": "madry+aad"}, "seed": 0}))
    return run


def _study(run, name, paper, options):
    folder = run / "studies"
    folder.mkdir(exist_ok=True)
    _png(folder / f"{name}.png")
    record = {"study": name, "paper": paper, "runs": [str(run)], "options": options,
              "date": "2026-12-01T10:00:00+00:00", "png": f"{name}.png", "numbers": {"x": [1, 2]}}
    (folder / f"{name}.json").write_text(json.dumps(record))
    return folder / f"{name}.png"


def _uri(png):
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _report(run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out), "--force"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    return out.read_text()


def test_each_study_is_a_figure_with_a_caption_from_its_json(tmp_path, capsys):
    run = _run(tmp_path)
    png = _study(run, "attack-rounds", "AAD Fig. 9", {"attack": "pgd-20", "rounds": 5})
    other = _study(run, "ablation-maps", "AAD Fig. 12", {})
    (run / "studies" / "notes.json").write_text("[1, 2]")  # not a study record: ignored
    html = _report(run, tmp_path, capsys)
    section = html[html.index("<h3>Studies</h3>"):]
    assert _uri(png) in section and _uri(other) in section
    assert ("attack-rounds (AAD Fig. 9); options: attack=pgd-20, rounds=5; runs: run; 2026-12-01T10:00:00+00:00"
            in section)
    assert "ablation-maps (AAD Fig. 12); runs: run" in section
    assert section.index("ablation-maps") < section.index("attack-rounds")  # by name


def test_a_run_without_studies_has_no_section_and_a_broken_one_is_a_note(tmp_path, capsys):
    run = _run(tmp_path)
    assert "<h3>Studies</h3>" not in _report(run, tmp_path, capsys)
    (run / "studies").mkdir()
    (run / "studies" / "bad.json").write_text("{not json")
    _study(run, "tsne", "AFM Fig. 6", {"attack": "pgd-20"})
    (run / "studies" / "tsne.png").unlink()
    html = _report(run, tmp_path, capsys)
    assert "bad.json could not be read" in html
    assert "tsne (AFM Fig. 6); options: attack=pgd-20" in html and "tsne.png is missing" in html


SWEEP_MD = """| defense.aad.alpha | seeds | n (examples) | clean | pgd-20 | worst case |
|---|---|---|---|---|---|
| 0 | 2 | 100 | 98.0 ± 0.5 | 40.0 ± 2.0 | 39.0 ± 2.0 |
| 0.01 | 2 | 100 | 97.5 ± 0.5 | 44.0 ± 1.0 | 43.5 ± 1.0 |

Accuracy in % (mean ± sample std over seeds).
"""


@pytest.mark.parametrize("with_config", [False, True])
def test_a_sweep_folder_shows_its_table_and_figure(tmp_path, capsys, with_config):
    folder = _run(tmp_path) if with_config else tmp_path / "sweep"
    folder.mkdir(exist_ok=True)
    (folder / "sweep.md").write_text(SWEEP_MD)
    png = _png(folder / "sweep.png", "tab:red")
    html = _report(folder, tmp_path, capsys)
    section = html[html.index("<h3>Sweep</h3>"):]
    assert _uri(png) in section
    assert "<th scope=\"col\">defense.aad.alpha</th>" in section and "<td>44.0 ± 1.0</td>" in section
    assert "---" not in section[:section.index("</table>")]  # the separator row is not a row
    assert "Accuracy in % (mean ± sample std over seeds)." in section
    # a sweep folder is not a run: none of a run's missing parts are listed
    if not with_config:
        assert "No config.yaml in this run" not in html and "No training curves" not in html
    assert ("no checkpoint in this run" in html) == with_config
