"""own_evals: which evaluation files beside a model file measured it (no model is loaded here)."""

from pathlib import Path

from attnguard.ownership import own_evals


def _folder(tmp_path: Path, *names):
    for n in names:
        (tmp_path / n).write_bytes(b"")
    return tmp_path


def test_by_name_by_weights_and_unknown(tmp_path):
    d = _folder(tmp_path, "a.safetensors", "b.safetensors")
    evals = [(d / "eval-a.json", {"checkpoint": "a.safetensors"}),
             (d / "eval-b.json", {"checkpoint": "b.safetensors", "weights": "fb"}),
             (d / "eval-copy.json", {"checkpoint": "last.pt", "weights": "fa"}),
             (d / "eval-old.json", {})]
    calls = []

    def fingerprint():
        calls.append(1)
        return "fa"

    notes = []
    mine = own_evals(d / "a.safetensors", evals, fingerprint, notes)
    assert [f.name for f, _ in mine] == ["eval-a.json", "eval-copy.json"]
    assert len(calls) == 1  # loaded once, however many files need it
    assert len(notes) == 2 and "eval-b.json" in notes[0] and "eval-old.json" in notes[1]


def test_alone_keeps_unlabelled_and_never_fingerprints(tmp_path):
    d = _folder(tmp_path, "a.safetensors")
    evals = [(d / "eval.json", {}), (d / "eval-a.json", {"checkpoint": "a.safetensors"})]

    def fingerprint():
        raise AssertionError("no file needed the weights")

    assert own_evals(d / "a.safetensors", evals, fingerprint, []) == evals


def test_other_name_without_weights_is_left_out(tmp_path):
    d = _folder(tmp_path, "a.pt")
    mine = own_evals(d / "a.pt", [(d / "eval-x.json", {"checkpoint": "best.pt"})], lambda: "f", None)
    assert mine == []
