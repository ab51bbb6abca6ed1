import json

import yaml

from attnguard.report.aggregate import aggregate_markdown, run_summary


def _run(tmp_path, name, seed, clean_bits, attacks, extra=None):
    d = tmp_path / name
    d.mkdir()
    cfg = {"data": {"name": "mnist-5k"}, "model": {"name": "lenet"}, "defense": {"preset": "madry"},
           "adversary": {"eps": 0.3}, "seed": seed}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "metrics.jsonl").write_text(json.dumps({"step": 1, "seconds": 10.0 * (seed + 1)}) + "\n")

    def ev(bits_clean, atks):
        n = len(bits_clean)
        acc = {k: v.count("1") / n for k, v in atks.items()}
        return {"dataset": "mnist-5k", "model": "m", "eps": 0.3, "n_examples": n, "clean": bits_clean.count("1") / n,
                "attacks": acc, "worst_case": min(acc.values()), "seconds": {k: 1.0 for k in atks}, "sanity": [],
                "per_example": {"clean": bits_clean, "attacks": atks}}

    (d / "eval.json").write_text(json.dumps(ev(clean_bits, attacks)))
    if extra:
        (d / "eval-aa.json").write_text(json.dumps(ev(clean_bits[: len(extra["autoattack"])], extra)))
    return d


def test_worst_case_merges_every_evaluation_file(tmp_path):
    # pgd fools example 1; autoattack (on the first 3 examples only) fools example 2
    d = _run(tmp_path, "a", 0, "1111", {"pgd-20": "1011"}, extra={"autoattack": "110"})
    s = run_summary(d)
    assert s["acc"]["pgd-20"] == 0.75 and s["acc"]["autoattack"] == 2 / 3
    # common examples 0..2: robust to both only example 0 -> 1/3
    assert s["n_worst"] == 3 and abs(s["worst_case"] - 1 / 3) < 1e-12


def test_mean_and_sample_std_over_seeds(tmp_path):
    a = _run(tmp_path, "s0", 0, "1111", {"pgd-20": "1100"})  # 50 %
    b = _run(tmp_path, "s1", 1, "1111", {"pgd-20": "1110"})  # 75 %
    table = aggregate_markdown([a, b])
    row = [l for l in table.splitlines() if "`madry`" in l][0]
    # mean 62.5, sample std of (50, 75) = 17.7; train time mean of 10 and 20 s
    assert "62.5 ± 17.7" in row and "| 2 |" in row and "15.0 ± 7.1" in row


def test_train_json_gives_time_and_training_machine(tmp_path):
    a = _run(tmp_path, "s0", 0, "11", {"pgd-20": "10"})
    (a / "train.json").write_text(json.dumps({"seconds": 42.0, "system": {
        "cpu": "TestCPU", "cores": 2, "threads": 1, "torch": "9.9", "device": "cpu"}}))
    assert run_summary(a)["train_seconds"] == 42.0  # train.json wins over the last metrics line
    assert "Trained on: TestCPU (2 cores, 1 threads), torch 9.9" in aggregate_markdown([a])


def test_cpu_seconds_column_only_when_every_run_recorded_them(tmp_path):
    a = _run(tmp_path, "s0", 0, "11", {"pgd-20": "10"})
    b = _run(tmp_path, "s1", 1, "11", {"pgd-20": "11"})
    (a / "train.json").write_text(json.dumps({"seconds": 90.0, "cpu_seconds": 30.0}))
    assert "train CPU (s)" not in aggregate_markdown([a, b])  # b (an older run) has no train.json
    (b / "train.json").write_text(json.dumps({"seconds": 300.0, "cpu_seconds": 50.0}))
    table = aggregate_markdown([a, b])
    header, _, row = table.splitlines()[:3]
    assert header.rstrip(" |").endswith("train CPU (s)")
    assert row.rstrip(" |").endswith("195.0 ± 148.5 | 40.0 ± 14.1")  # wall (90, 300) then CPU (30, 50)


def test_html_report_merges_every_evaluation_file(tmp_path):
    from attnguard.report import build_report

    d = _run(tmp_path, "a", 0, "1111", {"pgd-20": "1011"}, extra={"autoattack": "110"})
    html = build_report(d, tmp_path / "r.html", compute_missing=False).read_text()
    table = html[html.index('class="data eval"'):]
    table = table[:table.index("</table>")]
    assert ">autoattack<" in table and ">pgd-20<" in table
    assert "33.3%" in table  # worst case over both files on the 3 common examples, as in run_summary
    assert "worst case on the first" in table and "evaluation merged from eval.json, eval-aa.json" in html


def test_merge_keeps_the_autoattack_breakdown_of_the_file_that_supplies_autoattack():
    from attnguard.report.aggregate import merge_evals

    base = {"n_examples": 100, "clean": 0.9, "attacks": {"pgd-20": 0.5}, "worst_case": 0.5}
    aa = {"n_examples": 30, "clean": 0.9, "attacks": {"autoattack": 0.4}, "worst_case": 0.4,
          "autoattack_components": {"autoattack": {"n_examples": 30, "robust": {"apgd-ce": 0.45, "square": 0.4}}}}
    merged = merge_evals([base, aa])
    assert merged["autoattack_components"] == aa["autoattack_components"]
    # a later file that re-runs autoattack on more examples without a breakdown drops the stale one
    again = {"n_examples": 60, "clean": 0.9, "attacks": {"autoattack": 0.38}, "worst_case": 0.38}
    assert "autoattack_components" not in merge_evals([base, aa, again])


def test_merge_takes_clean_accuracy_from_the_file_on_the_most_examples():
    from attnguard.report.aggregate import merge_evals

    # a run without eval.json: its AutoAttack file (500) sorts before its 1,000-example file
    aa = {"n_examples": 500, "clean": 0.504, "attacks": {"autoattack": 0.242}, "worst_case": 0.242}
    big = {"n_examples": 1000, "clean": 0.532, "attacks": {"pgd-20": 0.319}, "worst_case": 0.3}
    for order in ([aa, big], [big, aa]):
        merged = merge_evals(order)
        assert (merged["clean"], merged["n"]["clean"], merged["n_examples"]) == (0.532, 1000, 1000)
        assert merged["n"]["autoattack"] == 500 and merged["attacks"]["pgd-20"] == 0.319


def _other_model_file(d, name, clean_bits, attacks, weights=None):
    n = len(clean_bits)
    acc = {k: v.count("1") / n for k, v in attacks.items()}
    e = {"dataset": "mnist-5k", "model": "m", "eps": 0.3, "n_examples": n, "clean": clean_bits.count("1") / n,
         "attacks": acc, "worst_case": min(acc.values()), "seconds": {}, "sanity": [],
         "per_example": {"clean": clean_bits, "attacks": attacks}}
    if weights:
        e.update(weights=weights, checkpoint="best.pt")
    (d / name).write_text(json.dumps(e))


def test_an_evaluation_of_other_weights_is_never_merged(tmp_path):
    # eval.json: the final model, robust to pgd on 3 of 4; eval-best.json: an earlier checkpoint's file
    # (other clean outcomes on example 2) whose pgd fooled everything: merged, it would drag the
    # worst case to 0 and put the other model's pgd-100 into this row
    d = _run(tmp_path, "a", 0, "1111", {"pgd-20": "1011"})
    _other_model_file(d, "eval-best.json", "1101", {"pgd-20": "0000", "pgd-100": "0000"})
    s = run_summary(d)
    assert s["acc"] == {"clean": 1.0, "pgd-20": 0.75} and s["worst_case"] == 0.75
    assert len(s["left_out"]) == 1 and "eval-best.json" in s["left_out"][0] and "differ on 1 of the first 4" in \
        s["left_out"][0]
    assert "Not merged:" in aggregate_markdown([d]) and "eval-best.json" in aggregate_markdown([d])
    # with fingerprints the weights decide, even where the clean outcomes happen to agree
    ev = json.loads((d / "eval.json").read_text())
    (d / "eval.json").write_text(json.dumps({**ev, "weights": "aaaa"}))
    _other_model_file(d, "eval-best.json", "1111", {"pgd-100": "0000"}, weights="bbbb")
    s = run_summary(d)
    assert "pgd-100" not in s["acc"] and "other weights (best.pt bbbb, not aaaa)" in s["left_out"][0]
    _other_model_file(d, "eval-best.json", "1111", {"pgd-100": "0011"}, weights="aaaa")  # the same weights: merged
    s = run_summary(d)
    assert s["acc"]["pgd-100"] == 0.5 and s["left_out"] == [] and s["worst_case"] == 0.5  # 1011 and 0011


def test_eval_records_which_weights_it_measured(tmp_path):
    import torch

    from attnguard.io import weights_fingerprint

    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert weights_fingerprint(a) == weights_fingerprint(b) and len(weights_fingerprint(a)) == 16
    with torch.no_grad():
        b.bias[0] += 1e-6  # one value, a little: another model
    assert weights_fingerprint(a) != weights_fingerprint(b)
