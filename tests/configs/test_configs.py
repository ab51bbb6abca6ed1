"""The packaged configs: ``extends:`` resolution, lookup by name from any directory, the listing,
and the one-line errors (cycle, missing parent, unknown name).

``fixtures/configs_before_extends.json`` holds every config as it was before the move into the
package (one flat file per row, read with ``yaml.safe_load``) and its header line. It pins today's
settings: a change that alters a setting on purpose updates the fixture in the same commit.
"""

import fnmatch
import json
import os
import tomllib
from pathlib import Path

import pytest
import yaml

from attnguard.cli import main
from attnguard.configs import CONFIG_DIR, config_names, find_config, list_configs, load_config_file, merge
from attnguard.errors import ConfigError
from attnguard.train.config import resolve_config

REPO = Path(__file__).resolve().parents[2]
BEFORE = json.loads((Path(__file__).parents[1] / "fixtures" / "configs_before_extends.json").read_text())


def _main(argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- identical to the old flat files
def test_every_old_config_still_exists_and_no_row_is_new():
    assert config_names() == sorted(BEFORE)


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_resolves_identically_to_the_old_file(name, tmp_path):
    old = BEFORE[name]["config"]
    assert load_config_file(name) == old
    assert load_config_file(name + ".yaml") == old
    # and through the whole resolution (family defaults, dataclass defaults), the same way for both
    old_file = _write(tmp_path / "old.yaml", yaml.safe_dump(old))
    assert resolve_config(name).to_dict() == resolve_config(str(old_file)).to_dict()


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_row_files_are_small_and_extend_a_base(name):
    data = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert data["extends"].startswith("_base")
    leaves = sum(len(v) if isinstance(v, dict) else 1 for k, v in data.items() if k != "extends")
    assert 1 <= leaves <= 3, data


def test_listing_keeps_the_header_lines():
    assert list_configs() == [(name, BEFORE[name]["description"]) for name in sorted(BEFORE)]


def test_package_data_ships_every_config():
    """A non-editable install only copies what pyproject's package-data globs match."""
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["attnguard"]
    files = [p.relative_to(CONFIG_DIR.parent).as_posix() for p in CONFIG_DIR.rglob("*.yaml")]
    assert len(files) > len(BEFORE)  # the rows and their bases
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert missing == []


# ---------------------------------------------------------------- the CLI from any directory
def test_list_configs_from_any_directory(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["list", "configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == sorted(BEFORE)
    assert not any("_base" in n for n in names)
    assert "row 'Madry adv', CPU protocol" in lines[names.index("aad/mnist5k-lenet-madry")]


def test_train_with_a_config_name_from_any_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "--config", "aad/mnist5k-lenet-madry", "--set", "train.max_steps=2", "--epochs", "1",
            "--set", "data.val_size=100", "--set", "train.val_steps=1", "--set", "train.progress=false",
            "--device", "cpu", "--no-eval", "--out", str(out)]
    assert main(argv) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    # the row's own key and the base's keys both arrived
    assert saved["defense"]["preset"] == "madry"
    assert (saved["data"]["name"], saved["model"]["width"], saved["adversary"]["step_size"]) == ("mnist-5k", 0.5, 0.1)
    assert saved["eval"]["attacks"] == BEFORE["aad/mnist5k-lenet-madry"]["config"]["eval"]["attacks"]


def _one_line_error(capsys, argv, *needles):
    assert _main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


def test_unknown_name_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _one_line_error(capsys, ["train", "--config", "aad/mnist5k-lenet-madri"], "not found",
                    "attnguard list configs", "did you mean aad/mnist5k-lenet-madry")
    _one_line_error(capsys, ["train", "--config", "../configs/aad/x.yaml"], "not found")


def test_extends_cycle_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "a.yaml", "extends: b\ntrain:\n  epochs: 1\n")
    _write(tmp_path / "b.yaml", "extends: a.yaml\n")
    _one_line_error(capsys, ["train", "--config", "a.yaml"], "cycle", "a.yaml -> ", "b.yaml -> ")
    _write(tmp_path / "self.yaml", "extends: self\n")
    _one_line_error(capsys, ["train", "--config", "self.yaml"], "cycle")


def test_missing_parent_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "child.yaml", "extends: aad/no-such-base\n")
    _one_line_error(capsys, ["train", "--config", "child.yaml"], "child.yaml extends 'aad/no-such-base'",
                    "attnguard list configs")
    _write(tmp_path / "bad.yaml", "extends: [a, b]\n")
    _one_line_error(capsys, ["train", "--config", "bad.yaml"], "extends must be one config name")


# ---------------------------------------------------------------- lookup order and merging
def test_a_file_on_disk_wins_over_the_packaged_name(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert find_config("aad/mnist5k-lenet-madry") == CONFIG_DIR / "aad" / "mnist5k-lenet-madry.yaml"
    local = _write(tmp_path / "aad" / "mnist5k-lenet-madry.yaml", "defense:\n  preset: trades\n")
    assert find_config("aad/mnist5k-lenet-madry").resolve() == local.resolve()
    assert load_config_file("aad/mnist5k-lenet-madry") == {"defense": {"preset": "trades"}}


def test_a_user_file_extends_a_packaged_config(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "mine.yaml", "extends: aad/mnist5k-lenet-madry\ntrain:\n  epochs: 24\n")
    got = load_config_file("mine.yaml")
    want = dict(BEFORE["aad/mnist5k-lenet-madry"]["config"])
    want["train"] = {**want["train"], "epochs": 24}
    assert got == want
    assert resolve_config("mine.yaml").train.epochs == 24


def test_chained_extends_merge_deeply_and_the_child_wins(tmp_path):
    _write(tmp_path / "root.yaml", "optim:\n  lr: 0.1\n  milestones: [0.5, 0.75]\ntrain:\n  epochs: 3\n")
    _write(tmp_path / "sub" / "mid.yaml", "extends: ../root\noptim:\n  lr: 0.2\n  momentum: 0.8\n")
    leaf = _write(tmp_path / "sub" / "leaf.yaml", "extends: mid.yaml\noptim:\n  milestones: [0.9]\n")
    assert load_config_file(leaf) == {"optim": {"lr": 0.2, "momentum": 0.8, "milestones": [0.9]},
                                      "train": {"epochs": 3}}


def test_merge_leaves_its_inputs_alone():
    base, over = {"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}
    assert merge(base, over) == {"a": {"b": 3, "c": 2}}
    assert base == {"a": {"b": 1, "c": 2}} and over == {"a": {"b": 3}}


def test_a_packaged_name_cannot_leave_the_package(monkeypatch, tmp_path):
    outside = _write(tmp_path / "outside.yaml", "train:\n  epochs: 2\n")
    name = os.path.relpath(outside.with_suffix(""), CONFIG_DIR)  # '../../..' up from the package folder
    deep = tmp_path.joinpath(*"abcdefghijklmnop")  # from here the same '..'s do not reach the file
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert (CONFIG_DIR / (name + ".yaml")).resolve() == outside.resolve()
    with pytest.raises(ConfigError, match="not found"):
        find_config(name)


def test_a_parent_flat_key_and_a_child_section_merge_child_first(tmp_path):
    """A parent written with today's flat defense keys and a child with the per-part sections are one key."""
    from attnguard.configs import load_config_file

    (tmp_path / "parent.yaml").write_text("defense:\n  preset: madry+aad\n  aad_alpha: 0.3\n  aad_beta: 0.2\n")
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\ndefense:\n  aad:\n    alpha: 0.05\n")
    data = load_config_file(str(tmp_path / "child.yaml"))
    assert data["defense"]["aad"] == {"alpha": 0.05, "beta": 0.2}
    assert "aad_alpha" not in data["defense"]


def test_model_options_belong_to_the_model_they_were_written_for():
    """A layer that switches model.name without options of its own drops the lower layers' options
    (resnet9's dropout must not reach preact-resnet18); options given with the switch, or a layer that
    keeps the model, are merged as before."""
    from attnguard.configs import load_config_file, merge
    from attnguard.models import create_model
    from attnguard.train.config import resolve_config

    base = "cpu/cifar10-resnet9-madry"
    assert resolve_config(base).model.options == {"dropout": 0.0}
    switched = resolve_config(base, {"model": {"name": "preact-resnet18"}})
    assert switched.model.name == "preact-resnet18" and switched.model.options == {}
    assert switched.model.width == resolve_config(base).model.width  # only options are the model's own
    create_model("preact-resnet18", num_classes=10, input_size=(3, 32, 32), width=0.25, **switched.model.options)
    given = resolve_config(base, {"model": {"name": "preact-resnet18", "options": {"depth": 3}}})
    assert given.model.options == {"depth": 3}  # the flag's options are used (and rejected by the model if wrong)
    same = resolve_config(base, {"model": {"name": "resnet9", "width": 0.5}})
    assert same.model.options == {"dropout": 0.0} and same.model.width == 0.5
    # the same rule in a config file's extends: chain
    child = merge(load_config_file(base), {"model": {"name": "lenet"}})
    assert "options" not in child["model"]
    assert merge({"model": {"name": "a", "options": {"x": 1}}}, {"model": {"options": {"y": 2}}}) == \
        {"model": {"name": "a", "options": {"x": 1, "y": 2}}}
