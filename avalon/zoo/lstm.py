"""A sequence classifier: an LSTM reads the sequence, a linear layer classifies its last state."""
from __future__ import annotations

from typing import Any

from .. import nn
from ..tensor import Tensor


class LSTMClassifier(nn.Module):
    """nn.LSTM(batch_first=True) over (N, T, input_size) -> Linear on the last layer's final hidden
    state -> logits (train with `zoo.cross_entropy`)."""

    def __init__(self, input_size: int = 8, hidden_size: int = 64, num_classes: int = 10, num_layers: int = 1,
                 dtype: Any = None):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True, dtype=dtype)
        self.fc = nn.Linear(hidden_size, num_classes, dtype=dtype)

    def forward(self, x: Any) -> Tensor:
        _, (h, _) = self.lstm(x)
        return self.fc(h[-1])
