"""RNN, LSTM and GRU with PyTorch's parameters, gate order, math and return values.

Parameters are `weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}` (suffix `_reverse` for the
backward direction), gates stacked in torch's order: LSTM (i, f, g, o), GRU (r, z, n). The gate
nonlinearities are sigmoid (tanh only for the candidate g / n), and GRU's candidate is
n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), exactly as torch (the Julia original used tanh for every
gate; see the research notes). The time loop is Python, so a trace unrolls it; the input projection
of all time steps is one matmul per layer and direction.

LSTM's `proj_size=p` (0 < p < hidden_size) is torch's projected LSTM (Sak et al. 2014): each step's
h = W_hr (o * tanh(c)) with `weight_hr_l{k}` (p, hidden_size), so h, the output and h_0/h_n have p
features (c keeps hidden_size), `weight_hh_l{k}` is (4 hidden_size, p) and a layer above the first
reads p * num_directions features.
"""
from __future__ import annotations

import math
from typing import Any

from .. import amp, ops
from ..tensor import Tensor
from . import functional as F
from . import init
from .layers import _dtype, _place, empty
from .module import Module
from .packing import PackedSequence

__all__ = ["GRU", "LSTM", "RNN", "RNNBase"]


_NO_PROJ = object()  # (RNN's proj_size when not given: torch refuses the keyword whatever its value)


class RNNBase(Module):
    """Multi-layer, optionally bidirectional recurrent layer over (L, N, H_in) input
    ((N, L, H_in) with `batch_first`, or unbatched (L, H_in))."""

    _gates = 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if proj_size and self._gates != 4:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout should be a number in range [0, 1] representing the probability of an "
                             f"element being zeroed, got {dropout!r}")  # (True was read as p = 1)
        if input_size <= 0:  # torch's check (a 0-column weight ran on empty inputs)
            raise ValueError(f"input_size must be greater than zero, got {input_size}")
        if hidden_size <= 0 or num_layers <= 0:
            raise ValueError("hidden_size and num_layers must be positive")
        if isinstance(proj_size, bool) or not isinstance(proj_size, int):
            raise TypeError(f"proj_size should be of type int, got: {type(proj_size).__name__}")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        d = _dtype(dtype)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout, self.bidirectional = bias, batch_first, float(dropout), bidirectional
        self.proj_size = proj_size
        g, real = self._gates * hidden_size, self._real_hidden
        for layer in range(num_layers):
            for direction in range(self._directions):
                n_in = input_size if layer == 0 else real * self._directions
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                setattr(self, "weight_ih" + sfx, empty((g, n_in), d))
                setattr(self, "weight_hh" + sfx, empty((g, real), d))
                if bias:
                    setattr(self, "bias_ih" + sfx, empty((g,), d))
                    setattr(self, "bias_hh" + sfx, empty((g,), d))
                if proj_size:
                    setattr(self, "weight_hr" + sfx, empty((proj_size, hidden_size), d))
        self.reset_parameters()
        _place(self, device)

    @property
    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _real_hidden(self) -> int:
        """The features of h (and of each direction's output): proj_size when projecting."""
        return self.proj_size or self.hidden_size

    @property
    def _all_weights(self) -> list[list[str]]:
        """torch's per-layer-and-direction lists of parameter names, which init code walks (pointer_summarizer's
        `for names in lstm._all_weights: ... getattr(lstm, name)`)."""
        kinds = (("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if self.bias else ())
                 + (("weight_hr",) if self.proj_size else ()))
        return [[k + f"_l{layer}" + ("_reverse" if direction else "") for k in kinds]
                for layer in range(self.num_layers) for direction in range(self._directions)]

    @property
    def _flat_weights_names(self) -> list[str]:
        return [name for names in self._all_weights for name in names]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """torch's `all_weights`: the parameters themselves, per layer and direction."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def reset_parameters(self) -> None:
        """Every weight and bias ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), as torch."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for _, p in self.named_parameters():
            init.uniform_(p, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """No-op (cuDNN weight packing in torch)."""

    def _cell(self, gi: Tensor, gh: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def _initial(self, hx: Any, n: int, dtype: Any, batched: bool, size: int | None = None, which: str = "") -> Any:
        """The initial state (zeros when not given) as (layers * directions, N, size). A wrong shape is torch's
        RuntimeError "Expected hidden size (..), got [..]" (`which` "[0]"/"[1]": LSTM's h_0/c_0), an unbatched
        state compared after its batch dim is added, as torch does."""
        shape = (self.num_layers * self._directions, n, size or self.hidden_size)
        if hx is None:
            return ops.zeros(shape, dtype)
        h = F._t(hx)
        if not batched:
            h = ops.expand_dims(h, 1)
        if tuple(h.shape) != shape:
            raise ops.fail(RuntimeError(f"Expected hidden{which} size {shape}, got {list(h.shape)}"))
        return amp.lower_precision(h)[0]  # under autocast the state joins the input's dtype, as torch's RNNs

    def _run(self, input: Any, hx: Any, lstm: bool) -> tuple[Any, Tensor, Tensor | None]:
        packed = isinstance(input, PackedSequence)
        x = input.padded if packed else F._t(input)  # a packed batch is time-major already
        if x.ndim not in (2, 3):
            raise ops.fail(ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got {x.ndim}D instead"))
        batched = x.ndim == 3
        if not batched:
            x = ops.expand_dims(x, 1)
        elif self.batch_first and not packed:
            x = ops.transpose(x, 0, 1)
        if x.shape[-1] != self.input_size:
            raise ops.fail(ops.ArgumentError(f"{type(self).__name__}: input.size(-1) must be equal to input_size. "
                                             f"Expected {self.input_size}, got {x.shape[-1]}"))
        steps, n = x.shape[0], x.shape[1]
        # autocast: torch runs its RNNs (cuDNN's and oneDNN's) in the autocast dtype, input, state and weights
        # (the weights cast by the matmuls below, their biases by autocast_bias), so every output is low precision
        x = amp.lower_precision(x)[0]
        dtype = x.dtype if x.dtype.is_float else self.weight_ih_l0.dtype
        w_dtype = self.weight_ih_l0.dtype
        if x.dtype.is_float and dtype is not w_dtype and not amp.is_autocast_enabled(x.device.type):
            raise ops.fail(ValueError(  # (torch's words; the matmul inside would name only itself)
                f"{type(self).__name__}: input dtype ({dtype!r}) does not match weight dtype ({w_dtype!r}). Convert "
                f"input: input.to({w_dtype!r}), or convert model: model.to({dtype!r})"))
        name = type(self).__name__
        if lstm and hx is not None and not isinstance(hx, (tuple, list)):  # (indexing it took its first layer)
            raise ops.fail(TypeError(f"{name}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}"
                                     + (f" of shape {hx.shape}" if isinstance(hx, Tensor) else "")))
        if lstm and hx is not None and len(hx) != 2:
            raise ops.fail(TypeError(f"{name}: hx must be a tuple (h_0, c_0), got {len(hx)} items"))
        if not lstm and isinstance(hx, (tuple, list)):  # (it was stacked into one tensor of another shape)
            raise ops.fail(TypeError(f"{name}: hx must be one tensor h_0, got a {type(hx).__name__} (only LSTM "
                                     "takes (h_0, c_0))"))
        if hx is not None:  # torch's rank checks (RuntimeError), before the shapes'
            ranks = tuple(F._t(t).ndim for t in (hx if lstm else (hx,)))
            want = 3 if batched else 2
            if any(r != want for r in ranks):
                kind = "batched 3-D" if batched else "unbatched 2-D"
                got = (f"({ranks[0]}-D, {ranks[1]}-D) tensors" if lstm else f"{ranks[0]}-D tensor")
                raise ops.fail(RuntimeError(f"For {kind} input, hx{' and cx' if lstm else ''} should also be "
                                            f"{want}-D but got {got}"))
        if lstm:
            h0c0 = (None, None) if hx is None else hx
            h0 = self._initial(h0c0[0], n, dtype, batched, self._real_hidden, "[0]")
            c0 = self._initial(h0c0[1], n, dtype, batched, None, "[1]")
        else:
            h0, c0 = self._initial(hx, n, dtype, batched), None
        hs, cs = [], []
        layer_in = x
        # packed: a sequence's state stays as it is past its length, its outputs are zeros there
        live = (ops.lt(ops.reshape(ops.iota((steps,), 0, input.lengths.dtype), (steps, 1, 1)),
                       ops.reshape(input.lengths, (1, n, 1))) if packed else None)
        for layer in range(self.num_layers):
            outs = []
            for direction in range(self._directions):
                k = layer * self._directions + direction
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                w_ih, w_hh = getattr(self, "weight_ih" + sfx), getattr(self, "weight_hh" + sfx)
                b_ih = getattr(self, "bias_ih" + sfx) if self.bias else None
                b_hh = amp.autocast_bias(getattr(self, "bias_hh" + sfx)) if self.bias else None
                w_hr_t = ops.transpose(getattr(self, "weight_hr" + sfx)) if self.proj_size else None
                xw = F.linear(layer_in, w_ih, b_ih)  # all time steps at once: (L, N, G*H)
                w_hh_t = ops.transpose(w_hh)
                h, c = h0[k], (c0[k] if c0 is not None else None)
                ys: list[Any] = [None] * steps
                for t in (reversed(range(steps)) if direction else range(steps)):
                    gh = ops.matmul(h, w_hh_t)
                    if b_hh is not None:
                        gh = ops.add(gh, b_hh)
                    if live is None:
                        h, c = self._cell(xw[t], gh, h, c)
                        if w_hr_t is not None:
                            h = ops.matmul(h, w_hr_t)
                        ys[t] = h
                    else:
                        h_new, c_new = self._cell(xw[t], gh, h, c)
                        if w_hr_t is not None:
                            h_new = ops.matmul(h_new, w_hr_t)
                        h = ops.where(live[t], h_new, h)
                        c = ops.where(live[t], c_new, c) if c is not None else None
                        ys[t] = ops.where(live[t], h_new, 0.0)
                outs.append(ops.stack(ys, 0))
                hs.append(h)
                cs.append(c)
            layer_in = outs[0] if len(outs) == 1 else ops.concat(outs, 2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, True)
        out = layer_in
        h_n, c_n = ops.stack(hs, 0), (ops.stack(cs, 0) if lstm else None)
        if not batched:
            out, h_n = ops.squeeze(out, 1), ops.squeeze(h_n, 1)
            c_n = ops.squeeze(c_n, 1) if c_n is not None else None
        elif packed:
            out = PackedSequence(out, input.lengths)
        elif self.batch_first:
            out = ops.transpose(out, 0, 1)
        return out, h_n, c_n

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        return s


def _chunk(g: Tensor, i: int, size: int) -> Tensor:
    """Gate i of a (N, G*H) stack of gates."""
    return g[:, i * size:(i + 1) * size]


class RNN(RNNBase):
    """Elman RNN: h' = tanh(W_ih x + b_ih + W_hh h + b_hh) (or relu with `nonlinearity='relu'`)."""

    _gates = 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: Any = None, dtype: Any = None, proj_size: Any = _NO_PROJ) -> None:
        if proj_size is not _NO_PROJ:  # (torch's RNN takes the keyword only to refuse it, 0 as well)
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype)

    def _cell(self, gi, gh, h, c):
        pre = ops.add(gi, gh)
        return (ops.tanh(pre) if self.nonlinearity == "tanh" else ops.relu(pre)), None

    def forward(self, input: Any, hx: Any = None) -> tuple[Tensor, Tensor]:
        out, h_n, _ = self._run(input, hx, lstm=False)
        return out, h_n


class LSTM(RNNBase):
    """i, f, o = sigmoid(...), g = tanh(...); c' = f c + i g; h' = o tanh(c'). Returns (output, (h_n, c_n))."""

    _gates = 4

    def _cell(self, gi, gh, h, c):
        g = ops.add(gi, gh)
        hs = self.hidden_size
        i, f = ops.sigmoid(_chunk(g, 0, hs)), ops.sigmoid(_chunk(g, 1, hs))
        cand, o = ops.tanh(_chunk(g, 2, hs)), ops.sigmoid(_chunk(g, 3, hs))
        c = ops.add(ops.mul(f, c), ops.mul(i, cand))
        return ops.mul(o, ops.tanh(c)), c

    def forward(self, input: Any, hx: Any = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, h_n, c_n = self._run(input, hx, lstm=True)
        return out, (h_n, c_n)


class GRU(RNNBase):
    """r, z = sigmoid(...); n = tanh(W_in x + b_in + r (W_hn h + b_hn)); h' = (1 - z) n + z h."""

    _gates = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "proj_size" in kwargs:  # (torch's GRU refuses the keyword, 0 as well)
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__(*args, **kwargs)

    def _cell(self, gi, gh, h, c):
        hs = self.hidden_size
        r = ops.sigmoid(ops.add(_chunk(gi, 0, hs), _chunk(gh, 0, hs)))
        z = ops.sigmoid(ops.add(_chunk(gi, 1, hs), _chunk(gh, 1, hs)))
        n = ops.tanh(ops.add(_chunk(gi, 2, hs), ops.mul(r, _chunk(gh, 2, hs))))
        return ops.add(n, ops.mul(z, ops.sub(h, n))), None

    def forward(self, input: Any, hx: Any = None) -> tuple[Tensor, Tensor]:
        out, h_n, _ = self._run(input, hx, lstm=False)
        return out, h_n
