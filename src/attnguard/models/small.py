"""Small networks for MNIST-sized inputs."""

from __future__ import annotations

import torch
from torch import nn


def _flat_size(module: nn.Module, input_size) -> int:
    with torch.no_grad():
        return int(module(torch.zeros(1, *input_size)).flatten(1).shape[1])


class LeNet(nn.Module):
    """The MNIST network of Madry et al. 2018: two 5x5 convs (32, 64) with max pooling, FC 1024.

    ``width`` scales all three widths (1.0 is the paper's network). ``block2`` (the second conv
    and its ReLU, 14x14 for 28x28 inputs) is the attention layer. ``dropout`` > 0 drops the FC
    layer's units in training (AAD sec. 5.1 trains LeNet with "keep rate = 0.5", i.e. dropout 0.5);
    the default 0 builds no dropout at all.
    """

    def __init__(self, num_classes: int = 10, input_size=(1, 28, 28), width: float = 1.0, dropout: float = 0.0):
        super().__init__()
        c1, c2, f = max(1, round(32 * width)), max(1, round(64 * width)), max(1, round(1024 * width))
        self.block1 = nn.Sequential(nn.Conv2d(input_size[0], c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        body = nn.Sequential(self.block1, self.block2, self.pool)
        self.fc1 = nn.Linear(_flat_size(body, input_size), f)
        self.fc2 = nn.Linear(f, num_classes)
        self.drop = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x):
        x = self.pool(self.block2(self.block1(x)))
        h = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(self.drop(h) if self.drop is not None else h)


class SmallCNN(nn.Module):
    """The four-conv MNIST network of the TRADES paper (Zhang et al. 2019): 32-32-64-64, FC 200-200."""

    def __init__(self, num_classes: int = 10, input_size=(1, 28, 28), width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        a, b, f = max(1, round(32 * width)), max(1, round(64 * width)), max(1, round(200 * width))
        self.block1 = nn.Sequential(
            nn.Conv2d(input_size[0], a, 3), nn.ReLU(), nn.Conv2d(a, a, 3), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.block2 = nn.Sequential(nn.Conv2d(a, b, 3), nn.ReLU(), nn.Conv2d(b, b, 3), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        body = nn.Sequential(self.block1, self.block2, self.pool)
        self.head = nn.Sequential(
            nn.Linear(_flat_size(body, input_size), f), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(f, f), nn.ReLU(), nn.Linear(f, num_classes),
        )

    def forward(self, x):
        return self.head(self.pool(self.block2(self.block1(x))).flatten(1))
