import pytest
import torch
from torch import nn

from attnguard import create_model
from attnguard.attention import (attention_area, attention_vector, class_activation_feature,
                                 closed_form_classifier, grad_cam, mask_iou, normalize_cam, top_k_mask)
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
    assert attention_area(cam, kappa=1.0).tolist() == [[[False, True], [True, True]]]
    assert top_k_mask(cam, 1).tolist() == [[[False, False], [False, True]]]
    assert not attention_area(cam.requires_grad_()).requires_grad


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
