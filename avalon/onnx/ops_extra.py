"""More ONNX ops mapped onto existing Avalon ops: Mod, GatherElements, GatherND, ScatterND,
ScatterElements, Hardmax, RMSNormalization, SpaceToDepth/DepthToSpace, Swish, IsNaN/IsInf, Sinh/Cosh,
and the sequence ops (SplitToSequence, SequenceAt, ...: torch's dynamo exporter emits them for
`torch.split`), whose sequences are Python lists of tensors while the graph runs."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Tensor
from .table import Node, T, axis, ints, onnx_op


def _c(x: Tensor, v: float) -> Tensor:
    return ops.full((), v, x.dtype)


@onnx_op("Mod")
def mod(node: Node, a: Any, b: Any) -> Tensor:
    """fmod=0: the remainder takes the divisor's sign (integers only); fmod=1: C's fmod (the dividend's)."""
    a, b = T(a), T(b)
    if node.attr("fmod", 0):
        q = ops.div(ops.cast(a, dt.float64), ops.cast(b, dt.float64))
        trunc = ops.mul(ops.sign(q), ops.floor(ops.abs(q)))
        return ops.cast(ops.sub(ops.cast(a, dt.float64), ops.mul(trunc, ops.cast(b, dt.float64))), a.dtype)
    if a.dtype.is_float:  # numpy's mod on inf/nan/-0 edges is not a - floor(a/b)*b; not taken
        raise node.unsupported("fmod=0 on floating-point inputs is not supported")
    # integer floor division through float64: exact while |a| < 2**53
    q = ops.cast(ops.floor(ops.div(ops.cast(a, dt.float64), ops.cast(b, dt.float64))), a.dtype)
    return ops.sub(a, ops.mul(q, b))


@onnx_op("GatherElements")
def gather_elements(node: Node, x: Any, idx: Any) -> Tensor:
    """A take from the flattened input at each index's linear offset (exact for every dtype)."""
    x, i = T(x), ops.cast(T(idx), dt.int64)
    a = axis(node.attr("axis", 0), x.ndim)
    i = ops.where(ops.lt(i, 0), ops.add(i, x.shape[a]), i)
    strides = [math.prod(x.shape[d + 1:]) for d in range(x.ndim)]
    lin = None
    for d in range(x.ndim):
        coord = i if d == a else ops.iota(i.shape, d)
        term = ops.mul(ops.cast(coord, dt.int64), strides[d])
        lin = term if lin is None else ops.add(lin, term)
    out = ops.take(ops.reshape(x, (-1,)), ops.reshape(lin, (-1,)), 0)
    return ops.reshape(out, i.shape)


@onnx_op("GatherND")
def gather_nd(node: Node, x: Any, idx: Any) -> Tensor:
    """indices (..., k) address the first k dims after `batch_dims`: a take from `x` with those
    dims (and the batch dims, each index row reading its own batch) merged into one."""
    x, i = T(x), ops.cast(T(idx), dt.int64)
    b, k = int(node.attr("batch_dims", 0)), i.shape[-1]
    if b + k > x.ndim or i.shape[:b] != x.shape[:b]:
        raise node.unsupported(f"indices {i.shape} (batch_dims={b}) do not fit data {x.shape}")
    dims = x.shape[:b + k]
    rows = i.shape[:-1]
    lin = ops.full(rows, 0, dt.int64)
    for d in range(b + k):
        if d < b:
            coord = ops.cast(ops.iota(rows, d), dt.int64)
        else:
            c = ops.reshape(ops.slice_(i, [0] * (i.ndim - 1) + [d - b], [*rows, d - b + 1]), rows)
            coord = ops.where(ops.lt(c, 0), ops.add(c, dims[d]), c)
        lin = ops.add(lin, ops.mul(coord, math.prod(dims[d + 1:])))
    return ops.take(ops.reshape(x, (math.prod(dims),) + x.shape[b + k:]), lin, 0)


@onnx_op("ScatterND")
def scatter_nd(node: Node, x: Any, idx: Any, updates: Any) -> Any:
    """`data` with `updates` written (reduction 'add' / 'mul' / 'max' / 'min': combined with what is
    there) at the rows that indices (..., k) address in its first k dims: torch's TorchScript
    exporter writes slice assignment this way (HF's causal-mask padding, Swin's window mask). One
    `index_put` (the reductions: `index_reduce` over the flattened rows), so gradients reach both."""
    red = node.attr("reduction", "none")
    if red not in ("none", "add", "mul", "max", "min"):
        raise node.unsupported(f"reduction {red!r} is not supported (only none, add, mul, max and min)")
    if all(isinstance(v, np.ndarray) for v in (x, idx, updates)):  # constants: numpy's own
        out, ii = x.copy(), np.asarray(idx).astype(np.int64)
        rows = tuple(np.moveaxis(ii, -1, 0))
        if red == "none":
            out[rows] = updates
        else:
            {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}[red].at(out, rows, updates)
        return out
    xt, it = T(x), ops.cast(T(idx), dt.int64)
    k = it.shape[-1]
    if k > xt.ndim:
        raise node.unsupported(f"indices {it.shape} address {k} dims of data {xt.shape}")
    want = it.shape[:-1] + xt.shape[k:]
    u = T(updates)
    if u.shape != want:
        raise node.unsupported(f"updates {u.shape} do not match indices {it.shape} and data {xt.shape} "
                               f"(expected {want})")
    cols = [ops.reshape(ops.slice_(it, [0] * (it.ndim - 1) + [j], [*it.shape[:-1], j + 1]), it.shape[:-1])
            for j in range(k)]
    if red in ("none", "add"):
        return ops.index_put(xt, cols, u, accumulate=red == "add")
    dims = xt.shape[:k]
    cols = [ops.where(ops.lt(c, 0), ops.add(c, n), c) for c, n in zip(cols, dims)]  # negatives count from the end
    lin = cols[0]
    for j in range(1, k):
        lin = ops.add(ops.mul(lin, dims[j]), cols[j])
    m = math.prod(it.shape[:-1])
    rows = ops.reshape(xt, (math.prod(dims),) + xt.shape[k:])
    out = ops.index_reduce(rows, 0, ops.reshape(lin, (m,)), ops.reshape(ops.cast(u, xt.dtype), (m,) + xt.shape[k:]),
                           {"mul": "prod", "max": "amax", "min": "amin"}[red])
    return ops.reshape(out, xt.shape)


@onnx_op("ScatterElements")
def scatter_elements(node: Node, x: Any, idx: Any, updates: Any) -> Tensor:
    """torch.scatter as ONNX writes it (reduction none/add/mul/max/min), negative indices counting
    from the end."""
    red = node.attr("reduction", "none")
    how = {"none": None, "add": "sum", "mul": "prod", "max": "amax", "min": "amin"}
    if red not in how:
        raise node.unsupported(f"reduction {red!r} is not supported")
    xt, i = T(x), ops.cast(T(idx), dt.int64)
    a = axis(node.attr("axis", 0), xt.ndim)
    i = ops.where(ops.lt(i, 0), ops.add(i, xt.shape[a]), i)
    u = ops.cast(T(updates), xt.dtype)
    if how[red] is None:
        return ops.scatter(xt, a, i, u)
    return ops.scatter_reduce(xt, a, i, u, how[red])


@onnx_op("Hardmax")
def hardmax(node: Node, x: Any) -> Tensor:
    x = T(x)
    a = axis(node.attr("axis", -1), x.ndim)
    return ops.cast(ops.eq(ops.iota(x.shape, a), ops.argmax(x, a, True)), x.dtype)


@onnx_op("RMSNormalization")
def rms_norm(node: Node, x: Any, scale: Any) -> Tensor:
    x = T(x)
    a = axis(node.attr("axis", -1), x.ndim)
    xf = ops.cast(x, dt.float32) if node.attr("stash_type", 1) == 1 and x.dtype is not dt.float64 else x
    ms = ops.mean(ops.mul(xf, xf), list(range(a, x.ndim)), keepdims=True)
    y = ops.mul(xf, ops.rsqrt(ops.add(ms, _c(xf, node.attr("epsilon", 1e-5)))))
    return ops.mul(ops.cast(y, x.dtype), T(scale))


@onnx_op("SpaceToDepth")
def space_to_depth(node: Node, x: Any) -> Tensor:
    x, b = T(x), node.attr("blocksize")
    n, c, h, w = x.shape
    perm = (0, 3, 5, 1, 2, 4) if node.attr("mode", "DCR") == "DCR" else (0, 1, 3, 5, 2, 4)
    y = ops.permute(ops.reshape(x, (n, c, h // b, b, w // b, b)), perm)
    return ops.reshape(y, (n, c * b * b, h // b, w // b))


@onnx_op("DepthToSpace")
def depth_to_space(node: Node, x: Any) -> Tensor:
    x, b = T(x), node.attr("blocksize")
    n, c, h, w = x.shape
    if node.attr("mode", "DCR") == "DCR":
        y = ops.permute(ops.reshape(x, (n, b, b, c // (b * b), h, w)), (0, 3, 4, 1, 5, 2))
    else:
        y = ops.permute(ops.reshape(x, (n, c // (b * b), b, b, h, w)), (0, 1, 4, 2, 5, 3))
    return ops.reshape(y, (n, c // (b * b), h * b, w * b))


@onnx_op("Swish")
def swish(node: Node, x: Any) -> Tensor:
    x = T(x)
    return ops.mul(x, ops.sigmoid(ops.mul(x, _c(x, node.attr("alpha", 1.0)))))


@onnx_op("IsNaN")
def isnan(node: Node, x: Any) -> Tensor:
    x = T(x)
    return ops.ne(x, x)


@onnx_op("IsInf")
def isinf(node: Node, x: Any) -> Tensor:
    x = T(x)
    pos, neg = ops.eq(x, _c(x, math.inf)), ops.eq(x, _c(x, -math.inf))
    if not node.attr("detect_positive", 1):
        return neg
    if not node.attr("detect_negative", 1):
        return pos
    return ops.logical_or(pos, neg)


@onnx_op("Sinh", "Cosh")
def sinh_cosh(node: Node, x: Any) -> Tensor:
    x = T(x)
    e, ei = ops.exp(x), ops.exp(ops.neg(x))
    return ops.mul(ops.sub(e, ei) if node.op_type == "Sinh" else ops.add(e, ei), _c(x, 0.5))


# -- sequences (Python lists while the graph runs) ---------------------------------------------

def _seq(node: Node, s: Any) -> list:
    if not isinstance(s, list):
        raise node.unsupported("expects a sequence (from SplitToSequence, SequenceConstruct, ...)")
    return s


def _position(node: Node, s: list, pos: Any, insert: bool = False) -> int:
    """A position as Python indexes a list (negative counts from the back); inserting may also
    take len(s)."""
    p = ints(pos, "position")[0]
    if not -len(s) <= p < len(s) + (1 if insert else 0):
        raise IndexError(f"ONNX node {node.name!r} ({node.op_type}): position {p} is out of range for a "
                         f"sequence of {len(s)}")
    return p


@onnx_op("SplitToSequence")
def split_to_sequence(node: Node, x: Any, split: Any = None) -> list:
    """`split` a scalar (chunks of that size, the last one shorter) or sizes; none: pieces of one,
    squeezed unless keepdims."""
    x = T(x)
    a = axis(node.attr("axis", 0), x.ndim)
    n = x.shape[a]
    if split is None:
        parts = list(ops.split(x, [1] * n, a))
        return parts if node.attr("keepdims", 1) else [ops.squeeze(p, a) for p in parts]
    sizes = ints(split, "split")
    if np.ndim(split) == 0:
        sizes = [sizes[0]] * (n // sizes[0]) + ([n % sizes[0]] if n % sizes[0] else [])
    return list(ops.split(x, sizes, a))


@onnx_op("SequenceAt")
def sequence_at(node: Node, s: Any, pos: Any) -> Any:
    s = _seq(node, s)
    return s[_position(node, s, pos)]


@onnx_op("SequenceConstruct")
def sequence_construct(node: Node, *xs: Any) -> list:
    return list(xs)


@onnx_op("SequenceEmpty")
def sequence_empty(node: Node) -> list:
    return []


@onnx_op("SequenceLength")
def sequence_length(node: Node, s: Any) -> np.ndarray:
    return np.array(len(_seq(node, s)), dtype=np.int64)


@onnx_op("SequenceInsert")
def sequence_insert(node: Node, s: Any, x: Any, pos: Any = None) -> list:
    s = list(_seq(node, s))
    s.insert(len(s) if pos is None else _position(node, s, pos, insert=True), x)
    return s


@onnx_op("SequenceErase")
def sequence_erase(node: Node, s: Any, pos: Any = None) -> list:
    s = list(_seq(node, s))
    del s[-1 if pos is None else _position(node, s, pos)]
    return s


@onnx_op("ConcatFromSequence")
def concat_from_sequence(node: Node, s: Any) -> Tensor:
    ts = [T(x) for x in _seq(node, s)]
    if node.attr("new_axis", 0):
        a = axis(node.attr("axis"), ts[0].ndim + 1)
        ts = [ops.unsqueeze(t, a) for t in ts]
    else:
        a = axis(node.attr("axis"), ts[0].ndim)
    return ops.concat(ts, a)
