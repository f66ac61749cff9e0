"""ONNX contractions, convolution, pooling, normalization and recurrent layers as Avalon ops."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import ops
from ..interop.nnops import conv, pool
from ..ir import dtypes as dt
from ..tensor import Tensor
from .ops_vision import gathered_pool
from .table import Node, T, axis, onnx_op


def _c(x: Tensor, v: float) -> Tensor:
    return ops.full((), v, x.dtype)


@onnx_op("MatMul")
def matmul(node: Node, a: Any, b: Any) -> Tensor:
    return ops.matmul(T(a), T(b))


@onnx_op("Gemm")
def gemm(node: Node, a: Any, b: Any, c: Any = None) -> Tensor:
    a, b = T(a), T(b)
    if node.attr("transA", 0):
        a = ops.t(a)
    if node.attr("transB", 0):
        b = ops.t(b)
    y = ops.matmul(a, b)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if alpha != 1.0:
        y = ops.mul(y, _c(y, alpha))
    if c is not None:
        c = T(c)
        y = ops.add(y, c if beta == 1.0 else ops.mul(c, _c(c, beta)))
    return y


def _auto_pad(node: Node, spatial: tuple[int, ...], kernel: list[int], strides: list[int],
              dilations: list[int]) -> tuple[list[int], list[int]]:
    """(low, high) padding per spatial dim from `pads` or `auto_pad`."""
    n = len(spatial)
    mode = node.attr("auto_pad", "NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode in ("NOTSET", ""):
        p = list(node.attr("pads", [0] * (2 * n)))
        return p[:n], p[n:]
    if mode == "VALID":
        return [0] * n, [0] * n
    lo, hi = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        lo.append(small if mode == "SAME_UPPER" else big)
        hi.append(big if mode == "SAME_UPPER" else small)
    return lo, hi


def _geometry(node: Node, x: Tensor, kernel: list[int]) -> tuple[list[int], list[int], list[int], list[int]]:
    n = x.ndim - 2
    strides = list(node.attr("strides", [1] * n))
    dil = list(node.attr("dilations", [1] * n))
    lo, hi = _auto_pad(node, x.shape[2:], kernel, strides, dil)
    return strides, dil, lo, hi


@onnx_op("Conv")
def conv_(node: Node, x: Any, w: Any, b: Any = None) -> Tensor:
    x, w = T(x), T(w)
    if x.ndim not in (3, 4, 5):
        raise node.unsupported(f"{x.ndim - 2}-d convolution is not supported")
    s, d, lo, hi = _geometry(node, x, list(node.attr("kernel_shape", w.shape[2:])))
    return conv(x, w, None if b is None else T(b), s, lo, hi, d, node.attr("group", 1))


@onnx_op("ConvTranspose")
def conv_transpose(node: Node, x: Any, w: Any, b: Any = None) -> Tensor:
    x, w = T(x), T(w)
    n = x.ndim - 2
    if n not in (1, 2, 3):
        raise node.unsupported(f"{n}-d transposed convolution is not supported")
    k = list(node.attr("kernel_shape", w.shape[2:]))
    s = list(node.attr("strides", [1] * n))
    d = list(node.attr("dilations", [1] * n))
    op = list(node.attr("output_padding", [0] * n))
    mode = node.attr("auto_pad", "NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    out_shape = node.attr("output_shape")
    if out_shape is not None or mode in ("SAME_UPPER", "SAME_LOWER"):
        target = list(out_shape)[-n:] if out_shape is not None else [size * st for size, st in zip(x.shape[2:], s)]
        total = [st * (size - 1) + o + (kk - 1) * dd + 1 - t
                 for size, st, o, kk, dd, t in zip(x.shape[2:], s, op, k, d, target)]
        if min(total) < 0:
            op = [o - min(t, 0) for o, t in zip(op, total)]
            total = [max(t, 0) for t in total]
        lower = mode == "SAME_LOWER"
        lo = [t - t // 2 if lower else t // 2 for t in total]
        hi = [t - a for t, a in zip(total, lo)]
    elif mode == "VALID":
        lo = hi = [0] * n
    else:
        p = list(node.attr("pads", [0] * (2 * n)))
        lo, hi = p[:n], p[n:]
    return conv(x, w, None if b is None else T(b), s, lo, hi, d, node.attr("group", 1), True, op)


def _pool(kind: str) -> Any:
    def rule(node: Node, x: Any) -> Tensor:
        x = T(x)
        k = list(node.attr("kernel_shape"))
        s, d, lo, hi = _geometry(node, x, k)
        mode = node.attr("auto_pad", "NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        ceil = bool(node.attr("ceil_mode", 0))
        include = bool(node.attr("count_include_pad", 0)) if kind == "avg" else True
        if kind == "avg" and mode in ("SAME_UPPER", "SAME_LOWER"):
            include = False  # auto padding never counts
        if x.ndim not in (3, 4) or any(v != 1 for v in d) or node.n_outputs > 1:
            y = gathered_pool(kind, x, k, s, d, lo, hi, ceil, include, storage_order=node.attr("storage_order", 0))
            return y[:node.n_outputs] if kind == "max" else y
        return pool(kind, x, k, s, lo, hi, ceil, include)
    return rule


onnx_op("MaxPool")(_pool("max"))
onnx_op("AveragePool")(_pool("avg"))


@onnx_op("GlobalAveragePool")
def global_avg(node: Node, x: Any) -> Tensor:
    x = T(x)
    return ops.mean(x, list(range(2, x.ndim)), True)


@onnx_op("GlobalMaxPool")
def global_max(node: Node, x: Any) -> Tensor:
    x = T(x)
    return ops.amax(x, list(range(2, x.ndim)), True)


# -- normalization --------------------------------------------------------------------------

def _per_channel(v: Any, x: Tensor) -> Tensor:
    return ops.reshape(ops.cast(T(v), x.dtype), (1, -1) + (1,) * (x.ndim - 2))


@onnx_op("BatchNormalization")
def batch_norm(node: Node, x: Any, scale: Any, bias: Any, mean: Any, var: Any) -> Any:
    x = T(x)
    eps = node.attr("epsilon", 1e-5)
    if node.attr("training_mode", 0):
        m = node.attr("momentum", 0.9)
        axes = [0] + list(range(2, x.ndim))
        bm = ops.mean(x, axes, keepdims=True)
        c = ops.sub(x, bm)
        bv = ops.mean(ops.mul(c, c), axes, keepdims=True)
        y = ops.mul(c, ops.rsqrt(ops.add(bv, _c(x, eps))))
        y = ops.add(ops.mul(y, _per_channel(scale, x)), _per_channel(bias, x))
        rm = ops.add(ops.mul(T(mean), _c(x, m)), ops.mul(ops.reshape(bm, (-1,)), _c(x, 1 - m)))
        rv = ops.add(ops.mul(T(var), _c(x, m)), ops.mul(ops.reshape(bv, (-1,)), _c(x, 1 - m)))
        return (y, rm, rv)[:node.n_outputs]
    y = ops.mul(ops.sub(x, _per_channel(mean, x)), ops.rsqrt(ops.add(_per_channel(var, x), _c(x, eps))))
    return ops.add(ops.mul(y, _per_channel(scale, x)), _per_channel(bias, x))


@onnx_op("LayerNormalization")
def layer_norm(node: Node, x: Any, scale: Any, bias: Any = None) -> Any:
    x = T(x)
    a = axis(node.attr("axis", -1), x.ndim)
    axes = list(range(a, x.ndim))
    mean = ops.mean(x, axes, keepdims=True)
    c = ops.sub(x, mean)
    rstd = ops.rsqrt(ops.add(ops.mean(ops.mul(c, c), axes, keepdims=True), _c(x, node.attr("epsilon", 1e-5))))
    y = ops.mul(ops.mul(c, rstd), T(scale))
    if bias is not None:
        y = ops.add(y, T(bias))
    return (y, mean, rstd)[:node.n_outputs]


@onnx_op("InstanceNormalization")
def instance_norm(node: Node, x: Any, scale: Any, bias: Any) -> Tensor:
    x = T(x)
    axes = list(range(2, x.ndim))
    c = ops.sub(x, ops.mean(x, axes, keepdims=True))
    y = ops.mul(c, ops.rsqrt(ops.add(ops.mean(ops.mul(c, c), axes, keepdims=True), _c(x, node.attr("epsilon", 1e-5)))))
    return ops.add(ops.mul(y, _per_channel(scale, x)), _per_channel(bias, x))


# -- recurrent layers -----------------------------------------------------------------------

def _k(x: Tensor, v: float) -> Tensor:
    return ops.full((), v, x.dtype)


# ONNX's RNN activation functions: (default alpha, default beta, f(x, alpha, beta))
_ACT: dict[str, tuple[float | None, float | None, Any]] = {
    "sigmoid": (None, None, lambda x, a, b: ops.sigmoid(x)),
    "tanh": (None, None, lambda x, a, b: ops.tanh(x)),
    "relu": (None, None, lambda x, a, b: ops.relu(x)),
    "affine": (1.0, 0.0, lambda x, a, b: ops.add(ops.mul(x, _k(x, a)), _k(x, b))),
    "leakyrelu": (0.01, None, lambda x, a, b: ops.where(ops.ge(x, _k(x, 0.0)), x, ops.mul(x, _k(x, a)))),
    "thresholdedrelu": (1.0, None, lambda x, a, b: ops.where(ops.gt(x, _k(x, a)), x, _k(x, 0.0))),
    "scaledtanh": (1.0, 1.0, lambda x, a, b: ops.mul(ops.tanh(ops.mul(x, _k(x, b))), _k(x, a))),
    "hardsigmoid": (0.2, 0.5, lambda x, a, b: ops.clip(ops.add(ops.mul(x, _k(x, a)), _k(x, b)), 0.0, 1.0)),
    "elu": (1.0, None, lambda x, a, b: ops.where(ops.ge(x, _k(x, 0.0)), x,
                                                 ops.mul(ops.sub(ops.exp(x), _k(x, 1.0)), _k(x, a)))),
    "softsign": (None, None, lambda x, a, b: ops.div(x, ops.add(ops.abs(x), _k(x, 1.0)))),
    "softplus": (None, None, lambda x, a, b: ops.log(ops.add(ops.exp(x), _k(x, 1.0)))),
}


def _activations(node: Node, default: list[str], dirs: int) -> list[Any]:
    """Each direction's activation functions, with their activation_alpha/beta (consumed in order by
    the functions that take them, as onnxruntime reads them) and `clip` (gate inputs clipped to
    [-clip, clip] before their activation; an LSTM's third function, of the cell state, is not) applied."""
    names = node.attr("activations") or default * dirs
    names = [n.decode() if isinstance(n, bytes) else n for n in names]
    alphas, betas = list(node.attr("activation_alpha") or []), list(node.attr("activation_beta") or [])
    clip = node.attr("clip")
    out = []
    for j, n in enumerate(names):
        if n.lower() not in _ACT:
            raise node.unsupported(f"activation {n!r} is not supported")
        da, db, fn = _ACT[n.lower()]
        a = (alphas.pop(0) if alphas else da) if da is not None else None
        b = (betas.pop(0) if betas else db) if db is not None else None

        gate = not (len(default) == 3 and j % 3 == 2)

        def act(x: Tensor, fn: Any = fn, a: Any = a, b: Any = b, gate: bool = gate) -> Tensor:
            if clip is not None and gate:
                x = ops.clip(x, -float(clip), float(clip))
            return fn(x, a, b)
        out.append(act)
    return out


def _rnn(kind: str) -> Any:
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[kind]
    default = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}[kind]

    def rule(node: Node, x: Any, w: Any, r: Any, b: Any = None, seq_lens: Any = None, h0: Any = None,
             c0: Any = None, p: Any = None) -> tuple:
        x, w, r = T(x), T(w), T(r)
        direction = node.attr("direction", "forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        dirs = 2 if direction == "bidirectional" else 1
        acts = _activations(node, default, dirs)
        forget = bool(node.attr("input_forget", 0))  # the forget gate is 1 - the input gate
        layout = node.attr("layout", 0)
        if layout:
            x = ops.permute(x, (1, 0, 2))
        seq, batch = x.shape[0], x.shape[1]
        hidden = r.shape[-1]
        _check_shapes(node, kind, gates, dirs, x, w, r, b, h0, c0, layout)
        valid = _valid_steps(seq_lens, seq, batch)
        ys, hs, cs = [], [], []
        for d in range(dirs):
            f = acts[d * len(default):(d + 1) * len(default)]
            wd, rd = ops.t(w[d]), ops.t(r[d])
            bd = T(b)[d] if b is not None else ops.zeros(2 * gates * hidden, dtype=x.dtype)
            wb, rb = bd[:gates * hidden], bd[gates * hidden:]
            h = _initial(h0, d, batch, hidden, x, layout)
            c = _initial(c0, d, batch, hidden, x, layout)
            peep = None if p is None else tuple(T(p)[d][k * hidden:(k + 1) * hidden] for k in range(3))  # i, o, f
            reverse = direction == "reverse" or d == 1
            steps = range(seq - 1, -1, -1) if reverse else range(seq)
            out = [None] * seq
            xw = ops.add(ops.matmul(x, wd), wb)  # every step's input projection at once
            for t in steps:
                h1, c1 = _cell(kind, node, xw[t], h, c, rd, rb, hidden, f, peep, forget)
                if valid is None:
                    h, c, out[t] = h1, c1, h1
                else:  # past a row's length its state holds and its output is 0 (a reverse pass starts at its end)
                    h, c = ops.where(valid[t], h1, h), ops.where(valid[t], c1, c)
                    out[t] = ops.where(valid[t], h1, ops.zeros_like(h1))
            ys.append(ops.stack(out, 0))
            hs.append(h)
            cs.append(c)
        y = ops.stack(ys, 1)  # (seq, dirs, batch, hidden)
        yh, yc = ops.stack(hs, 0), ops.stack(cs, 0)
        if layout:
            y, yh, yc = ops.permute(y, (2, 0, 1, 3)), ops.permute(yh, (1, 0, 2)), ops.permute(yc, (1, 0, 2))
        return (y, yh, yc)[:node.n_outputs]
    return rule


def _valid_steps(seq_lens: Any, seq: int, batch: int) -> list[Tensor] | None:
    """Per step, a (batch, 1) mask of the rows still within their sequence_lens; None when every row
    runs the whole sequence (lengths known now and all equal to it). Lengths known only at run time
    (the TorchScript exporter's packed sequences) are masked in the graph, so the rule traces."""
    if seq_lens is None:
        return None
    if not (isinstance(seq_lens, Tensor) and seq_lens.is_traced):
        lens = np.asarray(seq_lens.numpy() if isinstance(seq_lens, Tensor) else seq_lens).reshape(-1)
        if (lens == seq).all():
            return None
    n = ops.reshape(ops.cast(T(seq_lens), dt.int64), (batch, 1))
    return [ops.lt(ops.full((), t, dt.int64), n) for t in range(seq)]


def _check_shapes(node: Node, kind: str, gates: int, dirs: int, x: Tensor, w: Tensor, r: Tensor, b: Any,
                  h0: Any, c0: Any, layout: int) -> None:
    """W (dirs, gates*hidden, input), R (dirs, gates*hidden, hidden), B (dirs, 2*gates*hidden) and the
    initial states (dirs, batch, hidden), hidden_size from R: a clear error for a malformed file (torch's
    dynamo exporter writes nn.LSTM(proj_size=...) as an LSTM whose R and initial_c disagree: ONNX's LSTM
    has no projection) instead of a broadcast failure inside a step."""
    hidden = r.shape[-1]
    batch, inp = x.shape[1], x.shape[2]
    want = {"W": (w, (dirs, gates * hidden, inp)), "R": (r, (dirs, gates * hidden, hidden)),
            "B": (b, (dirs, 2 * gates * hidden))}
    state = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
    want.update({"initial_h": (h0, state), "initial_c": (c0, state)})
    for name, (v, shape) in want.items():
        got = None if v is None else tuple(v.shape) if isinstance(v, Tensor) else np.shape(v)
        if got is not None and got != shape:
            raise node.unsupported(f"{name} has shape {got}, expected {shape} ({dirs} direction(s), hidden size "
                                   f"{hidden} from R, input size {inp}): a malformed {kind}; torch's exporter "
                                   "writes one for nn.LSTM(proj_size=...), a projection ONNX's LSTM cannot express")


def _initial(v: Any, d: int, batch: int, hidden: int, x: Tensor, layout: int) -> Tensor:
    if v is None:
        return ops.zeros(batch, hidden, dtype=x.dtype)
    v = T(v)
    return v[:, d] if layout else v[d]


def _cell(kind: str, node: Node, xw: Tensor, h: Tensor, c: Tensor, rd: Tensor, rb: Tensor, hidden: int,
          f: list[Any], peep: tuple[Tensor, ...] | None = None, forget: bool = False) -> tuple[Tensor, Tensor]:
    if kind == "RNN":
        return f[0](ops.add(xw, ops.add(ops.matmul(h, rd), rb))), c
    if kind == "LSTM":  # peepholes (P: i, o, f) read the old cell state, the output gate's the new one
        g = ops.add(xw, ops.add(ops.matmul(h, rd), rb))
        i, o, fg, cc = (g[:, k * hidden:(k + 1) * hidden] for k in range(4))
        if peep is not None:
            i, fg = ops.add(i, ops.mul(peep[0], c)), ops.add(fg, ops.mul(peep[2], c))
        gi = f[0](i)
        gf = ops.sub(ops.full((), 1.0, gi.dtype), gi) if forget else f[0](fg)
        c = ops.add(ops.mul(gf, c), ops.mul(gi, f[1](cc)))
        if peep is not None:
            o = ops.add(o, ops.mul(peep[1], c))
        return ops.mul(f[0](o), f[2](c)), c
    hw = hidden
    xz, xr, xh = xw[:, :hw], xw[:, hw:2 * hw], xw[:, 2 * hw:]
    rz, rr, rh = rd[:, :hw], rd[:, hw:2 * hw], rd[:, 2 * hw:]
    bz, br, bh = rb[:hw], rb[hw:2 * hw], rb[2 * hw:]
    z = f[0](ops.add(xz, ops.add(ops.matmul(h, rz), bz)))
    rg = f[0](ops.add(xr, ops.add(ops.matmul(h, rr), br)))
    if node.attr("linear_before_reset", 0):
        hh = f[1](ops.add(xh, ops.mul(rg, ops.add(ops.matmul(h, rh), bh))))
    else:
        hh = f[1](ops.add(xh, ops.add(ops.matmul(ops.mul(rg, h), rh), bh)))
    one = ops.full((), 1.0, h.dtype)
    return ops.add(ops.mul(ops.sub(one, z), hh), ops.mul(z, h)), c


onnx_op("RNN")(_rnn("RNN"))
onnx_op("GRU")(_rnn("GRU"))
onnx_op("LSTM")(_rnn("LSTM"))

