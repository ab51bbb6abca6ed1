"""sweep.png's subtitle names the examples behind each number: a worst case over autoattack@100 is not made
on the 1,000 examples of the clean accuracy."""

from attnguard.sweep.table import _title_facts

POINT = {"n": 1}


def test_subtitle_names_the_examples_of_the_robust_metric():
    data = {"points": [POINT], "n_examples": [1000], "metric_n_examples": [100], "eps": [0.3],
            "metric": "worst case"}
    assert _title_facts(data) == ("n = 1 seed per point, clean on 1000 test examples, worst case on the first 100, "
                                  "eps 0.3")
    same = {**data, "metric_n_examples": [1000], "metric": "pgd-20"}
    assert _title_facts(same) == "n = 1 seed per point, 1000 test examples, eps 0.3"
    older = {k: v for k, v in data.items() if k != "metric_n_examples"}  # a sweep.json written before the key
    assert _title_facts(older) == "n = 1 seed per point, 1000 test examples, eps 0.3"
