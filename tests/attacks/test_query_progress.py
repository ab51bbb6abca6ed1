"""Black-box attacks report progress by queries (Square, AutoAttack's Square, RayS): the hook sees the
query count rise to the budget, a few dozen times per batch, and the evaluation sets it only with progress on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnguard.attacks.autoattack import AutoAttack
from attnguard.attacks.rays import RayS
from attnguard.attacks.square import Square, counting_queries
from attnguard.evaluation import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread


class Confident(nn.Module):
    """Always class 0 with a wide margin: no attack can fool it, so a search uses its whole budget."""

    num_classes = 10
    input_size = (1, 28, 28)

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 10, device=x.device)
        logits[:, 0] = 5.0
        return logits + 0.0 * x.flatten(1).sum(1, keepdim=True)  # still a function of x


def data(n=3):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.zeros(n, dtype=torch.long)


def _record():
    seen = []
    return seen, lambda used, budget: seen.append((used, budget))


def _rises_to(seen, budget):
    used = [u for u, _ in seen]
    assert all(b == budget for _, b in seen)
    assert used == sorted(used) and used[-1] == budget and used[0] < budget
    assert len(seen) <= 60  # every few queries, not every one


def test_square_reports_queries_up_to_its_budget():
    x, y = data()
    attack = Square(0.1, n_queries=120, seed=0)
    seen, attack.query_progress = _record()
    attack(Confident(), x, y)
    _rises_to(seen, 120)


def test_autoattack_reports_its_square_components_queries():
    x, y = data(2)
    attack = AutoAttack(0.1, version="custom", steps=2, n_queries=40, n_target_classes=1, seed=0)
    seen, attack.query_progress = _record()
    attack(Confident(), x, y)
    assert attack.last_robust["square"] == 2  # Square ran on both examples, to the end of its budget
    _rises_to(seen, 40)


def test_rays_reports_queries_up_to_its_budget():
    x, y = data()
    attack = RayS(0.1, queries=200)
    seen, attack.query_progress = _record()
    attack(Confident(), x, y)
    _rises_to(seen, 200)
    assert int(attack.last_queries.max()) == 200


def test_without_a_hook_nothing_is_wrapped():
    model = Confident()
    assert counting_queries(model, 100, None) is model


class SpySquare(Square):
    """A Square that records whether the evaluation gave it a query hook, and feeds it."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.had_hook = []

    def perturb(self, model, x, y):
        self.had_hook.append(self.query_progress is not None)
        return super().perturb(model, x, y)


@pytest.mark.parametrize("progress", [True, False])
def test_the_evaluation_sets_the_hook_only_with_progress_on(progress, capsys):
    x, y = data(4)
    spy = SpySquare(0.1, n_queries=30, seed=0)
    evaluate(Confident(), x, y, [spy], 0.1, progress=progress, batch_size=2)
    assert spy.had_hook == [progress, progress] and spy.query_progress is None
    # not a terminal (pytest captures stderr): the query bar prints nothing
    assert "queries" not in capsys.readouterr().err
