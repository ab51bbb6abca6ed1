"""torchvision ResNets with the CIFAR stem or the ImageNet stem."""

from __future__ import annotations

from torch import nn
import torchvision

from ..errors import AttnGuardError


def cifar_resnet18(num_classes: int = 10, input_size=(3, 32, 32)) -> nn.Module:
    """torchvision ResNet-18 with a 3x3 stride-1 stem and no max pool, for 32x32 inputs (AT+ALP Table 1)."""
    net = torchvision.models.resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(input_size[0], 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return net


def imagenet_resnet(depth: int, num_classes: int = 1000, input_size=(3, 224, 224), pretrained: bool = False) -> nn.Module:
    """torchvision ResNet-50/101/152 with the ImageNet stem; ImageNet weights when ``pretrained``.

    With pretrained weights and ``num_classes != 1000`` the final layer is replaced (fine-tuning,
    as in the AT+ALP gray/black-box experiments).
    """
    builder = getattr(torchvision.models, f"resnet{depth}")
    if not pretrained:
        net = builder(num_classes=num_classes)
    else:
        weights = torchvision.models.get_model_weights(f"resnet{depth}").DEFAULT
        try:
            net = builder(weights=weights)
        except Exception as e:  # no network, proxy, corrupt cache, ...
            raise AttnGuardError(
                f"pretrained weights for resnet{depth} could not be loaded ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else 'no detail'}); put {weights.url.rsplit('/', 1)[-1]} "
                "in $TORCH_HOME/hub/checkpoints or train without --pretrained"
            ) from None
        if num_classes != net.fc.out_features:
            net.fc = nn.Linear(net.fc.in_features, num_classes)
    if input_size[0] != 3:
        net.conv1 = nn.Conv2d(input_size[0], 64, 7, 2, 3, bias=False)
    return net
