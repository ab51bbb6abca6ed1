import pytest
import torch

import attnguard

from attnguard import AttnGuardError, UnknownNameError, create_model
from attnguard.models import MODELS, model_from_config

SMALL = {"lenet": {"width": 0.25}, "small-cnn": {"width": 0.25}, "resnet9": {"width": 0.125},
         "preact-resnet18": {"width": 0.125}, "resnet18": {}, "wrn-28-10": {"widen_factor": 1},
         "wrn-34-10": {"widen_factor": 1}}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_models_build_and_run(name):
    m = create_model(name, num_classes=7, **SMALL[name]).eval()
    x = torch.rand(3, *m.input_size)
    assert m(x).shape == (3, 7)
    # attention metadata resolves to real submodules
    m.get_submodule(m.attention_layer)
    for g in m.group_layers:
        m.get_submodule(g)


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "resnet152"])
def test_imagenet_models_metadata(name):
    entry = MODELS.entry(name)
    assert entry.meta["pretrainable"] and entry.meta["classifier"] == "net.fc"


def test_normalization_lives_inside_the_model():
    mean, std = (0.1307,), (0.3081,)
    m = create_model("lenet", width=0.25, mean=mean, std=std).eval()
    x = torch.rand(2, 1, 28, 28)
    expected = m.net((x - 0.1307) / 0.3081)
    torch.testing.assert_close(m(x), expected)


def test_rebuild_from_config_roundtrip():
    m = create_model("resnet9", num_classes=5, width=0.125, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    m2 = model_from_config(m.config)
    m2.load_state_dict(m.state_dict())
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(m.eval()(x), m2.eval()(x))


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownNameError) as e:
        create_model("resnet-18")
    msg = str(e.value)
    assert "resnet18" in msg and "lenet" in msg and "\n" not in msg


def test_pretrained_only_where_available():
    with pytest.raises(AttnGuardError, match="no pretrained weights"):
        create_model("lenet", pretrained=True)


def test_pretrained_weights_unreachable_gives_clear_error(tmp_path, monkeypatch):
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(AttnGuardError, match="could not be loaded") as e:
        create_model("resnet50", pretrained=True, num_classes=10)
    assert "\n" not in str(e.value)


def test_bad_model_options_are_user_errors():
    with pytest.raises(AttnGuardError, match="model 'lenet' takes no option 'depth'"):
        create_model("lenet", depth=3)
    # resnet9's dropout left in model.options when --model switches to a model without that option
    with pytest.raises(AttnGuardError, match=r"'preact-resnet18' takes no option 'dropout' .*model\.options=\{\}") as e:
        create_model("preact-resnet18", width=0.125, dropout=0.0)
    assert "\n" not in str(e.value) and "lambda" not in str(e.value)


@pytest.mark.parametrize("name,kw", [("lenet", {}), ("resnet9", {"width": 0.25})])
def test_dropout_option_keeps_rate_and_cam_exactness(name, kw):
    """AAD sec. 5.1 trains with keep rate 0.5: dropout is active in train mode only, and a head with
    dropout between GAP and the linear layer gives up the closed-form CAM (it would not describe training)."""
    torch.manual_seed(0)
    plain = attnguard.create_model(name, **kw)
    torch.manual_seed(0)
    dropped = attnguard.create_model(name, dropout=0.5, **kw)
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    x = torch.rand(4, *plain.input_size)
    dropped.eval(), plain.eval()
    assert torch.equal(dropped(x), plain(x))  # identical weights, no dropout at test time
    dropped.train()
    a, b = dropped(x), dropped(x)
    assert not torch.equal(a, b)  # fresh masks per call
    if name == "resnet9":
        assert plain.classifier == "net.fc" and dropped.classifier is None
    with pytest.raises(attnguard.AttnGuardError):
        attnguard.create_model(name, dropout=1.5, **kw)
