"""tools/transfer_table.py: per-defense means over seed files and differences paired within each file."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("transfer_table", ROOT / "tools" / "transfer_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _doc(acc):
    """acc: {defense: (clean, gray, black, white)} at iterations [10, 200] (the K = 10 values are decoys)."""
    pairs, white = [], {}
    for d, (clean, gray, black, wb) in acc.items():
        for setting, v in (("gray-box", gray), ("black-box", black)):
            pairs.append({"target": f"t/{d}", "defense": d, "setting": setting, "clean_accuracy": clean,
                          "accuracy": [0.0, v]})
        white[f"t/{d}"] = [0.0, wb]
    return {"numbers": {"iterations": [10, 200], "n": 4, "pairs": pairs, "white_box": white}}


def test_means_and_paired_differences_by_hand():
    T = _tool()
    docs = [_doc({"alp": (0.9, 0.50, 0.75, 0.25), "at+alp": (0.8, 0.75, 0.75, 0.5)}),
            _doc({"alp": (0.9, 0.50, 0.50, 0.25), "at+alp": (0.9, 0.25, 1.0, 0.25)})]
    rows = {r.split(" | ")[0].strip("| "): r for r in T.table(docs, 200, [("alp", "at+alp")]).splitlines()[2:]}
    # gray: alp 50, 50 -> 50.0 ± 0.0; at+alp 75, 25 -> 50.0 ± 35.4; differences +25, -25
    assert rows["gray-box"] == "| gray-box | 50.0 ± 0.0 | 50.0 ± 35.4 | +0.0 ± 35.4 (+25.0, -25.0) |"
    # black: alp 75, 50; at+alp 75, 100 -> differences 0, +50 -> +25.0 ± 35.4
    assert rows["black-box"] == "| black-box | 62.5 ± 17.7 | 87.5 ± 17.7 | +25.0 ± 35.4 (+0.0, +50.0) |"
    assert rows["white-box"].startswith("| white-box | 25.0 ± 0.0 | 37.5 ± 17.7 | +12.5 ± 17.7")
    assert rows["clean"].startswith("| clean | 90.0 ± 0.0 | 85.0 ± 7.1 | -5.0 ± 7.1 (-10.0, +0.0)")
    with pytest.raises(SystemExit, match="not among"):
        T.table(docs, 50, [])


def test_the_mnist_fig3_table_in_results_is_what_the_committed_studies_give(capsys):
    T = _tool()
    F = ROOT / "docs" / "figures" / "atalp"
    names = ["transfer-curves-mnist.json", "transfer-curves-mnist-t1.json", "transfer-curves-mnist-t2.json"]
    T.main([str(F / n) for n in names] + ["--paired", "alp:at+alp", "--paired", "madry:at+alp"])
    gray = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| gray-box"))
    assert gray == "| gray-box | 85.5 ± 0.3 | 87.5 ± 0.5 | 85.1 ± 1.2 | -2.3 ± 1.7 (-1.8, -1.0, -4.2) | -0.3 ± 1.1 (+0.2, +0.4, -1.6) |"
    assert gray.split(" | ", 1)[1] in (ROOT / "docs" / "RESULTS.md").read_text()
