import os

import pytest
import torch

from attnguard import CheckpointError, create_model
from attnguard.io import FORMAT, atomic_torch_save, atomic_write_text, export_safetensors, safe_load
from attnguard.rundir import load_model


def _ckpt(model):
    return {"format": FORMAT, "model_config": model.config, "model": model.state_dict()}


def test_atomic_save_and_load_model_from_run_dir(tmp_path):
    m = create_model("lenet", width=0.25, mean=(0.1,), std=(0.3,))
    atomic_torch_save(_ckpt(m), tmp_path / "checkpoints" / "best.pt")
    loaded = load_model(tmp_path)
    assert not loaded.training
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), m.eval()(x))
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "checkpoints").iterdir())


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_malicious_pickle_does_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="not a safe checkpoint"):
        safe_load(path)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", b"PK\x03\x04garbage"])
def test_foreign_or_truncated_files_are_clear_errors(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert "\n" not in str(e.value)


def test_truncated_checkpoint(tmp_path):
    m = create_model("lenet", width=0.25)
    path = tmp_path / "m.pt"
    atomic_torch_save(_ckpt(m), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_model(path)


def test_torch_file_without_header_is_foreign(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(create_model("lenet", width=0.25).state_dict(), path)
    with pytest.raises(CheckpointError, match="not an attnguard checkpoint"):
        load_model(path)


def test_missing_paths(tmp_path):
    with pytest.raises(CheckpointError, match="no such run directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        load_model(tmp_path)


def test_safetensors_roundtrip_keeps_metadata(tmp_path):
    m = create_model("resnet9", num_classes=4, width=0.125, mean=(0.4, 0.5, 0.6), std=(0.2, 0.2, 0.2)).eval()
    out = tmp_path / "model.safetensors"
    export_safetensors(m, out)
    back = load_model(out)
    assert back.arch == "resnet9" and back.num_classes == 4
    assert back.config["mean"] == pytest.approx([0.4, 0.5, 0.6])
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(back(x), m(x))


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "first")
    atomic_write_text(p, "second")
    assert p.read_text() == "second"
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]


def test_our_checkpoints_load_with_weights_only(tmp_path):
    # what we write must load under weights_only=True (no custom classes inside)
    m = create_model("lenet", width=0.25)
    atomic_torch_save(_ckpt(m), tmp_path / "c.pt")
    obj = torch.load(tmp_path / "c.pt", weights_only=True)
    assert obj["format"] == FORMAT


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os

    p = tmp_path / "eval.json"
    atomic_write_text(p, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~umask)
