"""Model registry: ``create_model(name, ...)`` returns a :class:`NormalizedModel`.

Every model takes [0, 1] pixels; normalization is its first operation. Each registry entry
records the attention layer (Grad-CAM / CAM), the group layers (AT+ALP attention pairing) and,
when the attention layer feeds only global average pooling and a linear layer, the classifier
that enables the closed-form Grad-CAM.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from ..errors import AttnGuardError, check_range
from ..registry import Registry
from .base import NormalizedModel
from .cifar import PreActResNet, ResNet9, WideResNet
from .imagenet import cifar_resnet18, imagenet_resnet
from .small import LeNet, SmallCNN

# meta: input_size, attention_layer, group_layers, classifier (see above); pretrainable (torchvision
# ImageNet weights); takes_width (a ``width`` multiplier, which the run config's model.width feeds)
MODELS = Registry("model")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESNET_GROUPS = ["net.layer1", "net.layer2", "net.layer3", "net.layer4"]

MODELS.add("lenet", LeNet, "Madry et al. MNIST CNN: conv32-conv64 (5x5, max pool), fc1024 (AAD MNIST row)",
           input_size=(1, 28, 28), attention_layer="net.block2", group_layers=["net.block1", "net.block2"],
           classifier=None, takes_width=True)
MODELS.add("small-cnn", SmallCNN, "TRADES four-conv MNIST network: 32-32-64-64, fc200-200",
           input_size=(1, 28, 28), attention_layer="net.block2", group_layers=["net.block1", "net.block2"],
           classifier=None, takes_width=True)
MODELS.add("resnet9", ResNet9, "ResNet-9 (DAWNBench) for 32x32 inputs, GAP head (AAD CIFAR-10 row)",
           input_size=(3, 32, 32), attention_layer="net.layer3",
           group_layers=["net.layer1", "net.layer2", "net.layer3"], classifier="net.fc", takes_width=True)
MODELS.add("preact-resnet18",
           lambda num_classes=10, input_size=(3, 32, 32), width=1.0: PreActResNet(num_classes, input_size, width=width),
           "Pre-activation ResNet-18 for 32x32 inputs (Rice et al. 2020 baseline)",
           input_size=(3, 32, 32), attention_layer="net.final",
           group_layers=["net.layer1", "net.layer2", "net.layer3", "net.final"], classifier="net.fc", takes_width=True)
MODELS.add("resnet18", cifar_resnet18, "torchvision ResNet-18 with the CIFAR stem (AT+ALP CIFAR-10 Table 1)",
           input_size=(3, 32, 32), attention_layer="net.layer4", group_layers=_RESNET_GROUPS, classifier="net.fc")
for _depth in (28, 34):
    MODELS.add(f"wrn-{_depth}-10",
               (lambda d: lambda num_classes=10, input_size=(3, 32, 32), widen_factor=10, dropout=0.0:
                WideResNet(num_classes, input_size, depth=d, widen_factor=widen_factor, dropout=dropout))(_depth),
               f"Wide ResNet-{_depth}-10 for 32x32 inputs" + (" (AFM CIFAR rows)" if _depth == 34 else ""),
               input_size=(3, 32, 32), attention_layer="net.final",
               group_layers=["net.block1", "net.block2", "net.final"], classifier="net.fc")
for _depth in (50, 101, 152):
    MODELS.add(f"resnet{_depth}",
               (lambda d: lambda num_classes=1000, input_size=(3, 224, 224), pretrained=False:
                imagenet_resnet(d, num_classes, input_size, pretrained))(_depth),
               f"torchvision ResNet-{_depth}, ImageNet stem; ImageNet weights with pretrained=True",
               input_size=(3, 224, 224), attention_layer="net.layer4", group_layers=_RESNET_GROUPS,
               classifier="net.fc", pretrainable=True)


def create_model(
    name: str,
    num_classes: Optional[int] = None,
    input_size: Optional[Sequence[int]] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    pretrained: bool = False,
    **kwargs,
) -> NormalizedModel:
    """Build a registered model wrapped with its input normalization.

    Args:
        name: a registry name (``attnguard list models``).
        num_classes: output classes (default: the architecture's usual number).
        input_size: (C, H, W) of the inputs (default: the architecture's usual size).
        mean, std: per-channel normalization applied inside the model (default: ImageNet
            statistics for pretrained weights, otherwise none).
        pretrained: load torchvision ImageNet weights (ResNet-50/101/152 only).
        kwargs: architecture options (``width`` for lenet/small-cnn/resnet9/preact-resnet18,
            ``widen_factor`` and ``dropout`` for the WRNs, ``dropout`` for lenet,
            small-cnn and resnet9).
    """
    entry = MODELS.entry(name)
    meta = entry.meta
    input_size = tuple(input_size or meta["input_size"])
    if len(input_size) != 3:
        raise AttnGuardError(f"input_size must be (C, H, W), got {input_size}")
    for i, v in enumerate(input_size):
        check_range(f"input_size[{i}]", v, 1, None, integer=True)
    if num_classes is None:
        num_classes = 1000 if meta.get("pretrainable") else 10
    check_range("num_classes", num_classes, 1, None, integer=True)
    if "width" in kwargs:
        check_range("width", kwargs["width"], 1e-3, None)
    if "widen_factor" in kwargs:
        check_range("widen_factor", kwargs["widen_factor"], 1, None, integer=True)
    if "dropout" in kwargs:
        check_range("dropout", kwargs["dropout"], 0.0, 1.0)
    if pretrained and not meta.get("pretrainable"):
        raise AttnGuardError(f"model '{name}' has no pretrained weights; models with weights: "
                             + ", ".join(n for n in MODELS.names() if MODELS.entry(n).meta.get("pretrainable")))
    if meta.get("pretrainable"):
        kwargs["pretrained"] = pretrained
    try:
        net = entry.builder(num_classes=num_classes, input_size=input_size, **kwargs)
    except TypeError as e:
        # a builder's TypeError names a lambda, not the option; say which option and where it came from
        m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if m:
            raise AttnGuardError(f"model '{name}' takes no option '{m.group(1)}' (from model.options: a config "
                                 "written for another model can be cleared with --set 'model.options={}')") from None
        raise AttnGuardError(f"bad options for model '{name}': {e}") from None
    c = input_size[0]
    if mean is None:
        mean = IMAGENET_MEAN if pretrained else (0.0,) * c
    if std is None:
        std = IMAGENET_STD if pretrained else (1.0,) * c
    kwargs.pop("pretrained", None)
    config = dict(arch=name, num_classes=int(num_classes), input_size=list(input_size),
                  mean=[float(m) for m in mean], std=[float(s) for s in std], kwargs=dict(kwargs))
    return NormalizedModel(net, mean=mean, std=std, arch=name, num_classes=num_classes, input_size=input_size,
                           attention_layer=meta["attention_layer"], group_layers=meta["group_layers"],
                           # a head with dropout between GAP and the linear layer is not GAP+linear in training
                           classifier=meta["classifier"] if getattr(net, "exact_cam_head", True) else None,
                           config=config)


def model_from_config(config: dict) -> NormalizedModel:
    """Rebuild an (untrained) model from :attr:`NormalizedModel.config`, as stored in checkpoints."""
    return create_model(config["arch"], num_classes=config["num_classes"], input_size=config["input_size"],
                        mean=config["mean"], std=config["std"], **config.get("kwargs", {}))


__all__ = ["MODELS", "NormalizedModel", "create_model", "model_from_config", "IMAGENET_MEAN", "IMAGENET_STD"]
