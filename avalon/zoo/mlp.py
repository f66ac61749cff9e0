"""A multi-layer perceptron classifier."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import nn
from ..nn import functional as F
from ..tensor import Tensor


class MLP(nn.Module):
    """Flatten -> [Linear -> relu (-> dropout)] per hidden size -> Linear. Returns logits; train it
    with `cross_entropy`."""

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (128, 64), num_classes: int = 10,
                 dropout: float = 0.0, dtype: Any = None):
        super().__init__()
        sizes = [in_features, *hidden]
        self.hidden = [nn.Linear(a, b, dtype=dtype) for a, b in zip(sizes, sizes[1:])]
        self.out = nn.Linear(sizes[-1], num_classes, dtype=dtype)
        self.dropout = dropout

    def forward(self, x: Any) -> Tensor:
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = F.relu(layer(x))
            if self.dropout:
                x = F.dropout(x, self.dropout, self.training)
        return self.out(x)

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}" if self.dropout else ""


def cross_entropy(logits: Any, target: Any) -> Tensor:
    """Mean cross-entropy of the labels, for models that return logits (MLP, LSTMClassifier): a
    criterion, `av.fit(model, X, Y, zoo.cross_entropy)`; the same as `F.cross_entropy`."""
    return F.cross_entropy(logits, target)
