"""Residual networks for 32x32 inputs, each ending in ``final -> global average pool -> fc``.

That ending makes the closed-form Grad-CAM exact (see ``attnguard.attention.gradcam``).
"""

from __future__ import annotations

from torch import nn
import torch.nn.functional as F


def _conv_bn(cin: int, cout: int, pool: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c, c), _conv_bn(c, c))

    def forward(self, x):
        return x + self.body(x)


class ResNet9(nn.Module):
    """ResNet-9 (Page 2018, DAWNBench), used by the AAD paper on CIFAR-10.

    prep 64 -> layer1 128 (+res) -> layer2 256 -> layer3 512 (+res) -> GAP -> fc. Global average
    pooling replaces the original max pooling so the closed-form CAM applies. ``dropout`` > 0 drops
    pooled features before the classifier in training (AAD sec. 5.1: "keep rate = 0.5"); the
    closed-form CAM then no longer describes the train-mode forward, so ``exact_cam_head`` is False
    and Grad-CAM takes the gradient path.
    """

    def __init__(self, num_classes: int = 10, input_size=(3, 32, 32), width: float = 1.0, dropout: float = 0.0):
        super().__init__()
        w = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.prep = _conv_bn(input_size[0], w[0])
        self.layer1 = nn.Sequential(_conv_bn(w[0], w[1], pool=True), _Residual(w[1]))
        self.layer2 = _conv_bn(w[1], w[2], pool=True)
        self.layer3 = nn.Sequential(_conv_bn(w[2], w[3], pool=True), _Residual(w[3]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[3], num_classes)
        self.drop = nn.Dropout(dropout) if dropout > 0 else None
        self.exact_cam_head = self.drop is None

    def forward(self, x):
        x = self.pool(self.layer3(self.layer2(self.layer1(self.prep(x))))).flatten(1)
        return self.fc(self.drop(x) if self.drop is not None else x)


class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = drop
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.drop > 0:
            out = F.dropout(out, p=self.drop, training=self.training)
        return self.conv2(out) + skip


class _Final(nn.Sequential):
    """The last BN + ReLU of a pre-activation network: its output is the attention feature map."""

    def __init__(self, c: int):
        super().__init__(nn.BatchNorm2d(c), nn.ReLU(inplace=False))


class PreActResNet(nn.Module):
    """Pre-activation ResNet (He et al. 2016), the usual adversarial-training baseline (Rice et al. 2020)."""

    def __init__(self, num_classes: int = 10, input_size=(3, 32, 32), blocks=(2, 2, 2, 2), width: float = 1.0):
        super().__init__()
        w = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(input_size[0], w[0], 3, 1, 1, bias=False)
        layers, cin = [], w[0]
        for i, (n, c) in enumerate(zip(blocks, w)):
            stride = 1 if i == 0 else 2
            layer = []
            for j in range(n):
                layer.append(_PreActBlock(cin, c, stride if j == 0 else 1))
                cin = c
            layers.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.final = _Final(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.fc(self.pool(self.final(x)).flatten(1))


class WideResNet(nn.Module):
    """Wide ResNet (Zagoruyko & Komodakis 2016), WRN-depth-k, as used by Madry, TRADES and AFM."""

    def __init__(self, num_classes: int = 10, input_size=(3, 32, 32), depth: int = 28, widen_factor: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 (e.g. 16, 28, 34), got {depth}")
        n = (depth - 4) // 6
        w = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(input_size[0], w[0], 3, 1, 1, bias=False)
        groups, cin = [], w[0]
        for i, c in enumerate(w[1:]):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(_PreActBlock(cin, c, stride if j == 0 else 1, drop=dropout))
                cin = c
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.final = _Final(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.pool(self.final(x)).flatten(1))
