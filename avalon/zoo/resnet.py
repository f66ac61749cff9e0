"""A small CIFAR-style ResNet (He et al., 2016, section 4.2), sized by its stage widths.

A 3x3 stem, then one stage per width of `BasicBlock`s (two 3x3 conv + batch norm layers around an
identity residual). Every stage after the first halves the resolution with a stride-2 first block,
whose shortcut becomes a 1x1 stride-2 convolution with batch norm (the projection shortcut, option B)
because the residual's shape changes. Adaptive average pooling makes the head independent of the
input size. Weights start as torchvision's ResNets do: kaiming-normal (fan_out) convolutions, unit
batch-norm scales.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import nn
from ..nn import functional as F
from ..tensor import Tensor


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """`widths` channels per stage, `blocks` BasicBlocks per stage; logits for `num_classes`."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64), blocks: Sequence[int] | int = 1, in_channels: int = 3,
                 num_classes: int = 10) -> None:
        super().__init__()
        blocks = [blocks] * len(widths) if isinstance(blocks, int) else list(blocks)
        if len(blocks) != len(widths):
            raise ValueError(f"ResNet: need one block count per stage, got widths {tuple(widths)} and blocks "
                             f"{tuple(blocks)}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, planes = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(planes, w, stride=2 if i > 0 and j == 0 else 1))
                planes = w
            stages.append(nn.Sequential(*layers))
        self.layers = nn.ModuleList(stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes, num_classes)
        self.apply(_init)

    def forward(self, x: Any) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for stage in self.layers:
            out = stage(out)
        return self.fc(self.avgpool(out).flatten(1))


def _init(m: Any) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
