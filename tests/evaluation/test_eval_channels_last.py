"""The evaluation runs attnguard's models in channels_last on the CPU (issue 14: a faster PGD evaluation in
fp32), and gives the caller's model back as it was.

What must hold: the convolutions really run in channels_last inside ``evaluate``; every parameter gets its
own tensor back afterwards (same storage, same strides), also when an attack raises; models that are not
registered attnguard architectures, and CUDA devices, are left in their format; and the result is the
NCHW evaluation's up to float rounding at decision boundaries.
"""

from __future__ import annotations

import pytest
import torch
from _support import load_mnist, train_tiny_lenet
from torch import nn

import attnguard
from attnguard.errors import AttnGuardError
from attnguard.evaluation import blocks
from attnguard.models import create_model


@pytest.fixture(scope="module")
def trained(request, one_thread):
    x, y = load_mnist(getattr(request.config, "cache", None))
    return train_tiny_lenet(x, y), x[4000:4200], y[4000:4200]


def _snapshot(model):
    return [(p.data_ptr(), p.stride()) for p in model.parameters()]


def test_which_models_and_devices():
    lenet = create_model("lenet", width=0.25)
    assert blocks.eval_channels_last(lenet, "cpu")
    assert blocks.eval_channels_last(create_model("resnet9", width=0.25), torch.device("cpu"))
    assert not blocks.eval_channels_last(lenet, "cuda")  # not measured in fp32 there
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    assert not blocks.eval_channels_last(plain, "cpu")  # could .view a channels_last activation


def test_convolutions_run_channels_last_inside_evaluate_and_the_model_is_given_back(one_thread):
    torch.manual_seed(0)
    model = create_model("lenet", width=0.25, input_size=(1, 12, 12)).eval()
    before = _snapshot(model)
    seen = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: seen.append(
                (mod.weight.is_contiguous(memory_format=torch.channels_last), out.dim() == 4 and out.shape[1] > 1
                 and out.is_contiguous(memory_format=torch.channels_last))))
    x = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    attnguard.evaluate(model, x, torch.zeros(6, dtype=torch.long), ["pgd-2"], 0.3, progress=False)
    assert seen and all(w and o for w, o in seen)
    assert _snapshot(model) == before  # the very tensors, in their own format
    assert all(p.is_contiguous() for p in model.parameters())


def test_weights_come_back_when_an_attack_raises(one_thread):
    model = create_model("lenet", width=0.25, input_size=(1, 12, 12)).eval()
    before = _snapshot(model)

    def broken(m, x, y):
        assert next(m.parameters()).is_contiguous(memory_format=torch.channels_last)
        return x + 1  # outside [0, 1]: the evaluation refuses it

    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    with pytest.raises(AttnGuardError):
        attnguard.evaluate(model, x, torch.zeros(4, dtype=torch.long), [broken], 0.3, progress=False)
    assert _snapshot(model) == before


def test_a_model_already_in_channels_last_is_left_as_it_is():
    model = create_model("lenet", width=0.25).to(memory_format=torch.channels_last)
    before = _snapshot(model)
    with blocks.channels_last_weights(model):
        assert _snapshot(model) == before
    assert _snapshot(model) == before


def test_the_result_is_the_nchw_evaluations_up_to_rounding(trained):
    model, x, y = trained
    per = {}
    for on in (True, False):
        per[on] = blocks.attack_correct(model, blocks.resolve_attacks(["pgd-10"], 0.1, norm="linf", seed=0,
                                                                      num_classes=10, device="cpu"),
                                        x, y, 0.1, norm="linf", batch_size=100, device="cpu", channels_last=on)
    assert torch.equal(per[True].clean, per[False].clean)
    a, b = per[True].attacks["pgd-10"], per[False].attacks["pgd-10"]
    assert 0 < int(b.sum()) < len(b)  # the attack fools some digits and not others: a real comparison
    assert int((a != b).sum()) <= 2  # 1% of 200: boundary cases of float rounding only
