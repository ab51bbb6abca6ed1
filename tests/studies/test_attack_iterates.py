"""``on_iterate`` of the PGD-type attacks (attacks/pgd.py, A3 in attacks/a3.py): it sees every round
(0 = the start, then each projected step, per restart) and changes no result, bitwise."""

import pytest
import torch

from attnguard import create_model
from attnguard.attacks.registry import build_attack


@pytest.fixture(scope="module")
def model_and_batch():
    torch.manual_seed(0)
    model = create_model("lenet", width=0.25).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    return model, x, y


@pytest.mark.parametrize("name,steps,restarts", [("iter-stepll-4", 4, 1), ("a3-iter-stepll-4", 4, 1),
                                                 ("pgd-3", 3, 1), ("a3-pgd-3", 3, 1), ("pgd-2x2", 2, 2)])
def test_callback_sees_each_round_and_changes_nothing(model_and_batch, name, steps, restarts):
    model, x, y = model_and_batch
    plain = build_attack(name, 0.3, seed=5)
    plain.skip_misclassified = False
    want = plain(model, x, y)

    seen = []
    watched = build_attack(name, 0.3, seed=5)
    watched.skip_misclassified = False
    watched.on_iterate = lambda step, xa: seen.append((step, xa.clone()))
    got = watched(model, x, y)

    assert torch.equal(got, want)
    assert [s for s, _ in seen] == list(range(steps + 1)) * restarts
    assert all(xa.shape == x.shape for _, xa in seen)
    if restarts == 1:
        assert torch.equal(seen[-1][1], got)  # the last round is the attack's output
    if "stepll" in name:
        assert torch.equal(seen[0][1], x)  # no random start: round 0 is the clean image
    # the rounds move: every step changes the batch
    assert all(not torch.equal(a, b) for (_, a), (_, b) in zip(seen[:steps], seen[1:steps + 1]))
