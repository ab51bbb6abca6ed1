import pytest
import torch
from torch import nn

from attnguard import create_model
from attnguard.attention import (attention_area, attention_vector, class_activation_feature,
                                 closed_form_classifier, grad_cam, mask_iou, normalize_cam, top_k_mask)
from attnguard.attention.gradcam import cam_from_activation
from attnguard.attention.hooks import forward_with_activations
from attnguard.defenses.aad import AADParams, attention_mask, preservation_loss
from attnguard.defenses.afm import AFM, feature_distance, norm_decay
from attnguard.defenses.afm_cam import AFMCAM
from attnguard.errors import ConfigError
from attnguard.models import MODELS

QUALIFYING = [n for n in MODELS.names() if MODELS.entry(n).meta["classifier"]]
OPTIONS = {"resnet9": {"width": 0.25}, "preact-resnet18": {"width": 0.25}}


@pytest.mark.parametrize("name", QUALIFYING)
def test_closed_form_equals_gradient_path(name):
    """Every built-in model whose attention layer feeds GAP + linear: both Grad-CAM paths agree."""
    torch.manual_seed(1)
    m = create_model(name, num_classes=10, **OPTIONS.get(name, {})).eval()
    x = torch.rand(2, *m.input_size)
    assert closed_form_classifier(m, None) is not None
    targets = [None] + [torch.tensor([c, 9 - c]) for c in range(10)]
    fast = torch.stack([grad_cam(m, None, x, target=t) for t in targets])
    slow = torch.stack([grad_cam(m, None, x, target=t, closed_form=False) for t in targets])
    scale = slow.abs().max()
    assert scale > 0, "degenerate (all-zero) maps: the comparison would prove nothing"
    assert ((fast - slow).abs().max() / scale) <= 1e-5


def test_models_without_gap_head_use_the_gradient_path():
    m = create_model("lenet", width=0.25)
    assert closed_form_classifier(m, None) is None
    with pytest.raises(ValueError, match="closed-form"):
        grad_cam(m, None, torch.rand(1, 1, 28, 28), closed_form=True)


def test_matches_pytorch_grad_cam_on_resnet18():
    cv2 = pytest.importorskip("cv2")
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 64, 64)
    targets = [4, 9]
    with pgc.GradCAM(model=net, target_layers=[net.layer4[-1]]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    ours = normalize_cam(grad_cam(net, net.layer4[-1], x, target=torch.tensor(targets))).numpy()
    ours = [cv2.resize(o, (64, 64)) for o in ours]  # same upsampling as pytorch-grad-cam
    for o, t in zip(ours, theirs):
        assert abs(o - t).max() <= 1e-4


def test_grad_cam_by_hand():
    """A 1x1-conv 'feature' layer with known weights, GAP and a linear head."""
    feat = nn.Conv2d(1, 2, 1, bias=False)
    feat.weight.data = torch.tensor([[[[1.0]]], [[[-1.0]]]])
    fc = nn.Linear(2, 2, bias=False)
    fc.weight.data = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    net = nn.Sequential(feat, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    x = torch.tensor([[[[1.0, 2.0], [0.0, 4.0]]]])
    # A^0 = x, A^1 = -x; class 0: alpha = W[0]/4 = (0.5, 0.25) -> 0.5x - 0.25x = 0.25x
    cam = grad_cam(net, net[0], x, target=0)
    torch.testing.assert_close(cam, 0.25 * x[:, 0])
    # class 1: alpha = (0, 0.75) -> -0.75x, ReLU -> 0
    torch.testing.assert_close(grad_cam(net, net[0], x, target=1), torch.zeros(1, 2, 2))


@pytest.mark.parametrize("name,opts", [("lenet", {"width": 0.25}), ("resnet9", {"width": 0.125})])
def test_grad_cam_is_differentiable_to_the_parameters(name, opts):
    m = create_model(name, **opts).train()
    x = torch.rand(4, *m.input_size)
    y = torch.arange(4)
    cam = grad_cam(m, None, x, target=y, create_graph=True)
    assert cam.requires_grad
    cam.square().sum().backward()
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert any(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)


def test_grad_cam_without_create_graph_is_detached_and_leaves_no_grads():
    m = create_model("lenet", width=0.25)
    cam = grad_cam(m, None, torch.rand(2, 1, 28, 28))
    assert not cam.requires_grad
    assert all(p.grad is None for p in m.parameters())


def test_class_activation_feature_is_true_class_grad_cam():
    m = create_model("resnet9", width=0.125).eval()
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([1, 2, 3])
    torch.testing.assert_close(class_activation_feature(m, x, y, create_graph=False), grad_cam(m, None, x, y))


def test_attention_vector_by_hand():
    a = torch.zeros(1, 2, 1, 2)
    a[0, 0, 0] = torch.tensor([3.0, 0.0])
    a[0, 1, 0] = torch.tensor([0.0, -4.0])
    # Q = sum_c |A_c|^2 = (9, 16); ||Q|| = sqrt(81 + 256) = sqrt(337)
    q = attention_vector(a)
    torch.testing.assert_close(q, torch.tensor([[9.0, 16.0]]) / 337 ** 0.5)


def test_attention_area_mean_threshold_and_top_k():
    cam = torch.tensor([[[0.0, 1.0], [2.0, 5.0]]])  # mean 2
    assert attention_area(cam).tolist() == [[[False, False], [True, True]]]
    assert top_k_mask(cam, 1).tolist() == [[[False, False], [False, True]]]
    assert not attention_area(cam.requires_grad_()).requires_grad


def test_numeric_kappa_thresholds_the_normalized_map():
    """AAD eq. 3 with a fixed kappa: ``Att = normalize(g) >= kappa``, whatever the scale of g."""
    cam = torch.tensor([[[1.0, 2.0], [3.0, 6.0]]])  # min-max normalized: (0, 0.2, 0.4, 1)
    assert attention_area(cam, kappa=0.5).tolist() == [[[False, False], [False, True]]]
    assert attention_area(cam, kappa=0.3).tolist() == [[[False, False], [True, True]]]
    assert attention_area(cam, kappa=0.2).tolist() == [[[False, True], [True, True]]]
    assert attention_area(cam, kappa=0.0).all()
    # Grad-CAM values on the MNIST LeNet peak near 0.01: the raw comparison selected nothing
    small = 0.01 * cam
    assert attention_area(small, kappa=0.5).tolist() == [[[False, False], [False, True]]]
    # each map is normalized on its own; the mean threshold is scale-free and unchanged
    both = torch.cat([cam, 100.0 * cam + 7.0])
    assert attention_area(both, kappa=0.3).tolist() == [[[False, False], [True, True]]] * 2
    assert attention_area(0.01 * both).tolist() == attention_area(both).tolist() == [[[False, False], [True, True]]] * 2


def test_aad_kappa_is_mean_or_a_fraction_of_the_map():
    assert AADParams(kappa=0.5).kappa == 0.5 and AADParams(kappa=1).kappa == 1.0
    for bad in (1.5, -0.1, "median", True):
        with pytest.raises(ConfigError, match="defense.aad.kappa"):
            AADParams(kappa=bad)
    # the mask AAD eq. 7 blacks out, on LeNet-scale maps: kappa 0.5 keeps the peak, not nothing
    cam = torch.tensor([[[0.001, 0.002], [0.003, 0.012]]])
    assert attention_mask(cam, (2, 2), 0.5).flatten().tolist() == [0.0, 0.0, 0.0, 1.0]


# ---------------------------------------------------------------- float32 attention terms under autocast
def _terms(g_clean, g_adv):
    return {"aad_pres": preservation_loss(g_clean, g_adv), "afm": feature_distance(g_clean, g_adv),
            "afm_norm": norm_decay(g_clean, g_adv)}


def _terms_by_hand(g_clean, g_adv):
    """The same terms in float64: L1 over cells, mean square over cells, L2 norms; batch means."""
    d = (g_clean - g_adv).flatten(1)
    return {"aad_pres": d.abs().sum(1).mean(), "afm": d.pow(2).mean(1).mean(),
            "afm_norm": (g_clean.flatten(1).norm(dim=1) + g_adv.flatten(1).norm(dim=1)).mean()}


def _assert_close_to_float64(cam, reference, b):
    assert cam.dtype == torch.float32
    got, want = _terms(cam[:b], cam[b:]), _terms_by_hand(reference[:b], reference[b:])
    for name in want:
        assert want[name] > 0, f"{name}: degenerate batch, the comparison would prove nothing"
        rel = abs(got[name].item() - want[name].item()) / want[name].item()
        assert rel <= 1e-3, f"{name} under bf16 autocast is off by {rel:.1e} relative"


def test_attention_terms_are_float32_under_autocast_gradient_path():
    """LeNet (no GAP head): Grad-CAM from the derivative; bf16 forward, float32 map and terms."""
    torch.manual_seed(0)
    m = create_model("lenet", width=0.5).train()
    x = torch.rand(8, 1, 28, 28)
    x_adv = (x + 0.3 * torch.randn_like(x).sign()).clamp(0, 1)
    yy = (torch.arange(8) % 10).repeat(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, (act,) = forward_with_activations(m, torch.cat([x, x_adv]), [m.attention_layer])
        assert act.dtype == torch.bfloat16  # the forward itself runs in bf16
        cam = cam_from_activation(logits, act, yy, create_graph=True)
        terms = _terms(cam[:8], cam[8:])
    # float64 from the same activation and derivative
    (grads,) = torch.autograd.grad(logits.gather(1, yy[:, None]).sum(), act, retain_graph=True)
    reference = torch.relu((grads.double().mean((2, 3), keepdim=True) * act.double()).sum(1))
    _assert_close_to_float64(cam, reference, 8)
    assert all(t.dtype == torch.float32 for t in terms.values())


def test_attention_terms_are_float32_under_autocast_closed_form():
    """GAP + linear head: the closed-form CAM (an einsum, which autocast runs in bf16) is float32."""
    torch.manual_seed(0)
    act = torch.rand(8, 16, 7, 7).bfloat16()  # what a bf16 forward hands over
    fc = nn.Linear(16, 10)
    yy = torch.arange(8) % 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cam = cam_from_activation(None, act, yy, classifier=fc)
    reference = torch.relu(torch.einsum("bc,bchw->bhw", fc.weight[yy].double(), act.double())) / 49
    _assert_close_to_float64(cam, reference, 4)


# ---------------------------------------------------------------- the afm-cam variant's map
def test_afm_cam_matches_zhou_cam_of_a_gap_head():
    """afm-cam's phi = h w * Grad-CAM: for a GAP + linear head, ReLU(sum_k W[c, k] A^k) (Zhou et al. 2016)."""
    torch.manual_seed(0)
    m = create_model("resnet9", width=0.125).eval()
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([1, 2, 3])
    _, (act,) = forward_with_activations(m, x, [m.attention_layer])
    fc = m.get_submodule(m.classifier)
    zhou = torch.relu(torch.einsum("bc,bchw->bhw", fc.weight[y], act))
    h, w = act.shape[-2:]
    phi = AFMCAM().cam_scale(h, w) * grad_cam(m, None, x, y, closed_form=False)
    torch.testing.assert_close(phi, zhou, rtol=1e-4, atol=1e-5)
    assert AFM().cam_scale(h, w) == 1.0  # AFM as written: Grad-CAM itself


def test_mask_iou_by_hand():
    a = torch.zeros(1, 8, 8)
    b = torch.zeros(1, 8, 8)
    a.view(-1)[[0, 1, 2, 3, 4]] = 1
    b.view(-1)[[2, 3, 4, 5, 6]] = 1
    # top-5 cells overlapping in 3: IoU = 3 / 7
    assert abs(float(mask_iou(a.bool(), b.bool())) - 3 / 7) < 1e-6
    empty = torch.zeros(1, 8, 8, dtype=torch.bool)
    assert float(mask_iou(empty, empty)) == 1.0


def test_bad_layer_name_lists_layers():
    m = create_model("lenet", width=0.25)
    with pytest.raises(ValueError, match="no layer 'net.block9'.*net.block2"):
        grad_cam(m, "net.block9", torch.rand(1, 1, 28, 28))
