"""LeNet for 1x28x28 images, exactly the network of the README and DESIGN.md section 1 (Caffe's MNIST
LeNet: 20 and 50 filters of 5x5, 500 hidden units)."""
from __future__ import annotations

from typing import Any

from .. import nn
from ..nn import functional as F
from ..tensor import Tensor


class LeNet(nn.Module):
    """Conv(1,20,5) relu pool2 -> Conv(20,50,5) relu pool2 -> Linear(800,500) relu -> Linear(500,10)
    -> log_softmax. Returns log-probabilities, so train it with `nll`."""

    def __init__(self, num_classes: int = 10, dtype: Any = None):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, dtype=dtype)
        self.conv2 = nn.Conv2d(20, 50, 5, dtype=dtype)
        self.fc1 = nn.Linear(4 * 4 * 50, 500, dtype=dtype)
        self.fc2 = nn.Linear(500, num_classes, dtype=dtype)

    def forward(self, x: Any) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.reshape(x.shape[0], 4 * 4 * 50)
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)


def nll(log_probs: Any, target: Any) -> Tensor:
    """Mean negative log-likelihood of the labels, for models that return log-probabilities (LeNet):
    a criterion, `av.fit(model, X, Y, zoo.nll)`; the same as `F.nll_loss`."""
    return F.nll_loss(log_probs, target)
