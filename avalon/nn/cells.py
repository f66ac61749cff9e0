"""RNNCell, LSTMCell and GRUCell: one time step, with torch's parameter names (`weight_ih`,
`weight_hh`, `bias_ih`, `bias_hh`), gate order (LSTM i, f, g, o; GRU r, z, n), init and math."""
from __future__ import annotations

import math
from typing import Any

from .. import ops
from ..tensor import Tensor
from . import functional as F
from . import init
from .layers import _dtype, _place, empty
from .module import Module


class RNNCellBase(Module):
    """torch.nn.RNNCellBase: `num_chunks` gate blocks of `weight_ih` (num_chunks * hidden_size, input_size),
    `weight_hh`, `bias_ih` and `bias_hh`, every one ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)); the
    base of RNNCell, LSTMCell and GRUCell, and of custom cells subclassing it as in torch."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool, num_chunks: int, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(f"{type(self).__name__}: input_size and hidden_size must be positive")
        d = _dtype(dtype)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        g = num_chunks * hidden_size
        self.weight_ih = empty((g, input_size), d)
        self.weight_hh = empty((g, hidden_size), d)
        self.bias_ih = empty((g,), d) if bias else None
        self.bias_hh = empty((g,), d) if bias else None
        self.reset_parameters()
        _place(self, device)

    def reset_parameters(self) -> None:
        """Every weight and bias ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), as torch."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for _, p in self.named_parameters():
            init.uniform_(p, -stdv, stdv)

    def _projections(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return F.linear(x, self.weight_ih, self.bias_ih), F.linear(h, self.weight_hh, self.bias_hh)

    def _input(self, input: Any, hx: Any) -> tuple[Tensor, Any, bool]:
        x = F._t(input)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__}: expected input of shape (N, {self.input_size}) or "
                             f"({self.input_size},), got {x.shape}")
        batched = x.ndim == 2
        return (x if batched else ops.expand_dims(x, 0)), hx, batched

    def _state(self, h: Any, n: int, dtype: Any, batched: bool) -> Tensor:
        if h is None:
            return ops.zeros((n, self.hidden_size), dtype=dtype)
        h = F._t(h)
        h = h if batched else ops.expand_dims(h, 0)
        if h.shape != (n, self.hidden_size):  # a (1, H) state would broadcast over the batch without a word
            want = (n, self.hidden_size) if batched else (self.hidden_size,)
            raise ops.fail(ValueError(f"{type(self).__name__}: expected hidden state of shape {want} for input batch "
                                      f"size {n}, got {tuple(h.shape) if batched else tuple(h.shape[1:])}"))
        return h

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")
        return s + (f", nonlinearity={self.nonlinearity}" if getattr(self, "nonlinearity", "tanh") != "tanh" else "")


class _CellBase(RNNCellBase):
    _gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__(input_size, hidden_size, bias, self._gates, device, dtype)


class RNNCell(_CellBase):
    """h' = tanh(W_ih x + b_ih + W_hh h + b_hh) (or relu)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device: Any = None, dtype: Any = None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: unknown nonlinearity {nonlinearity!r}; use 'tanh' or 'relu'")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Any, hx: Any = None) -> Tensor:
        x, hx, batched = self._input(input, hx)
        h = self._state(hx, x.shape[0], x.dtype, batched)
        gi, gh = self._projections(x, h)
        h = ops.tanh(gi + gh) if self.nonlinearity == "tanh" else ops.relu(gi + gh)
        return h if batched else ops.squeeze(h, 0)


class LSTMCell(_CellBase):
    """(h', c') from gates i, f, g, o: c' = f c + i g, h' = o tanh(c')."""

    _gates = 4

    def forward(self, input: Any, hx: Any = None) -> tuple[Tensor, Tensor]:
        x, hx, batched = self._input(input, hx)
        h0, c0 = (None, None) if hx is None else hx
        h = self._state(h0, x.shape[0], x.dtype, batched)
        c = self._state(c0, x.shape[0], x.dtype, batched)
        gi, gh = self._projections(x, h)
        i, f, g, o = ops.chunk(gi + gh, 4, 1)
        c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
        h = ops.sigmoid(o) * ops.tanh(c)
        return (h, c) if batched else (ops.squeeze(h, 0), ops.squeeze(c, 0))


class GRUCell(_CellBase):
    """r, z = sigmoid(.), n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h."""

    _gates = 3

    def forward(self, input: Any, hx: Any = None) -> Tensor:
        x, hx, batched = self._input(input, hx)
        h = self._state(hx, x.shape[0], x.dtype, batched)
        gi, gh = self._projections(x, h)
        ir, iz, in_ = ops.chunk(gi, 3, 1)
        hr, hz, hn = ops.chunk(gh, 3, 1)
        r, z = ops.sigmoid(ir + hr), ops.sigmoid(iz + hz)
        n = ops.tanh(in_ + r * hn)
        h = (1.0 - z) * n + z * h
        return h if batched else ops.squeeze(h, 0)


__all__ = ["GRUCell", "LSTMCell", "RNNCell", "RNNCellBase"]
