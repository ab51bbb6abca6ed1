"""The study runner through the CLI: names, run counts, options and the no-overwrite rule."""

import json

import pytest

from attnguard.cli import main
from attnguard.studies import STUDIES


@pytest.fixture
def toy_study():
    def study(ctx):
        ctx.png.write_bytes(b"\x89PNG\r\n\x1a\n")
        return {"runs": len(ctx.runs), "k": ctx.options["k"]}

    STUDIES.add("toy-study", study, "a test study", min_runs=1, max_runs=2, options={"k": 1})
    yield
    STUDIES.remove("toy-study")


def test_unknown_study_is_one_line_exit_2(capsys):
    assert main(["study", "no-such-study", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown study 'no-such-study'" in err and "Valid studies" in err


def test_study_writes_json_and_refuses_to_overwrite(toy_study, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["study", "toy-study", "r1", "r2", "--out", str(out), "--set", "k=3"]) == 0
    rec = json.loads((out / "toy-study.json").read_text())
    assert rec["numbers"] == {"runs": 2, "k": 3} and rec["runs"] == ["r1", "r2"] and rec["png"] == "toy-study.png"
    assert main(["study", "toy-study", "r1", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["study", "toy-study", "r1", "--out", str(out), "--force"]) == 0
    assert json.loads((out / "toy-study.json").read_text())["numbers"]["runs"] == 1


def test_study_checks_run_count_and_options(toy_study, tmp_path, capsys):
    assert main(["study", "toy-study", "a", "b", "c", "--out", str(tmp_path)]) == 2
    assert "takes 1 to 2 run(s), got 3" in capsys.readouterr().err
    assert main(["study", "toy-study", "a", "--out", str(tmp_path), "--set", "nope=1"]) == 2
    assert "has no option nope (its options: k)" in capsys.readouterr().err


def test_default_output_is_the_first_runs_studies_folder(toy_study, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["study", "toy-study", str(run)]) == 0
    assert (run / "studies" / "toy-study.json").exists()
