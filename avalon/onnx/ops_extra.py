"""More ONNX ops mapped onto existing Avalon ops: Mod, GatherElements, GatherND, ScatterND,
ScatterElements, Hardmax, RMSNormalization, SpaceToDepth/DepthToSpace, Swish, IsNaN/IsInf, Sinh/Cosh,
LpNormalization, GroupNormalization, LRN, Unique and Compress (eager only: data-dependent shapes),
ReverseSequence, TensorScatter, BitCast (of constants), and the sequence ops (SplitToSequence,
SequenceAt, ...: torch's dynamo exporter emits them for `torch.split`), whose sequences are Python
lists of tensors while the graph runs."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Tensor
from .table import NeedsConstant, Node, T, axis, ints, onnx_op


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
    if a.dtype.is_float:  # Python's %, as numpy's mod: a zero result takes the divisor's sign
        r = ops.remainder(a, b)
        return ops.where(ops.eq(r, _c(r, 0.0)), ops.copysign(r, b), r)
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


# -- normalizations ---------------------------------------------------------------------------

@onnx_op("LpNormalization")
def lp_normalization(node: Node, x: Any) -> Tensor:
    """x / ||x||_p along `axis` (p 1 or 2); a zero norm gives 0, as the spec says."""
    x = T(x)
    a, p = axis(node.attr("axis", -1), x.ndim), int(node.attr("p", 2))
    if p not in (1, 2):
        raise node.unsupported(f"p={p} is not supported (1 or 2)")
    norm = ops.sum(ops.abs(x), a, True) if p == 1 else ops.sqrt(ops.sum(ops.mul(x, x), a, True))
    zero = ops.eq(norm, _c(norm, 0.0))
    return ops.where(zero, _c(x, 0.0), ops.div(x, ops.where(zero, _c(norm, 1.0), norm)))


@onnx_op("GroupNormalization")
def group_normalization(node: Node, x: Any, scale: Any, bias: Any) -> Tensor:
    """Mean and variance over each group of channels (in float32 when stash_type is 1); opset 18
    gives scale and bias per group, opset 21 per channel."""
    x, scale, bias = T(x), T(scale), T(bias)
    g, c = int(node.attr("num_groups")), x.shape[1]
    if c % g:
        raise node.unsupported(f"{c} channels do not split into {g} groups")
    if node.opset < 21 and scale.shape[0] == g:
        scale, bias = ops.repeat_interleave(scale, c // g, dim=0), ops.repeat_interleave(bias, c // g, dim=0)
    xf = ops.cast(x, dt.float32) if node.attr("stash_type", 1) == 1 and x.dtype is not dt.float64 else x
    grouped = ops.reshape(xf, (x.shape[0], g, -1))
    mean = ops.mean(grouped, 2, True)
    centered = ops.sub(grouped, mean)
    var = ops.mean(ops.mul(centered, centered), 2, True)
    y = ops.mul(centered, ops.rsqrt(ops.add(var, _c(var, node.attr("epsilon", 1e-5)))))
    y = ops.cast(ops.reshape(y, x.shape), x.dtype)
    per_channel = (c,) + (1,) * (x.ndim - 2)
    return ops.add(ops.mul(y, ops.reshape(scale, per_channel)), ops.reshape(bias, per_channel))


@onnx_op("LRN")
def lrn(node: Node, x: Any) -> Tensor:
    """x / (bias + alpha / size * sum of squares over channels [c - floor((size-1)/2), c +
    ceil((size-1)/2)])^beta. Written out: torch's local_response_norm centres even windows the
    other way."""
    x = T(x)
    size = int(node.attr("size"))
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = ops.mul(x, x)
    pad = [(0, 0)] * x.ndim
    pad[1] = (lo, hi)
    padded = ops.pad(sq, pad)
    total = None
    for k in range(size):
        part = ops.narrow(padded, 1, k, x.shape[1])
        total = part if total is None else ops.add(total, part)
    base = ops.add(_c(x, node.attr("bias", 1.0)), ops.mul(_c(x, node.attr("alpha", 1e-4) / size), total))
    return ops.div(x, ops.pow(base, _c(x, node.attr("beta", 0.75))))


# -- data-dependent and index ops -------------------------------------------------------------

def _eager(node: Node, x: Any, why: str) -> np.ndarray:
    """The values of `x` now: constants and eager tensors; a traced tensor raises NeedsConstant."""
    if isinstance(x, Tensor) and x.is_traced:
        raise NeedsConstant(f"{why}, so it runs eagerly only")
    return np.asarray(x.numpy() if isinstance(x, Tensor) else x)


@onnx_op("Unique")
def unique(node: Node, x: Any) -> Any:
    """numpy's unique picks the rows (first occurrences; sorted, or in order of appearance when
    sorted=0); Y is a take from X, so gradients reach X."""
    v = _eager(node, x, "Unique's output shape depends on the input's values")
    a = node.attr("axis")
    a = None if a is None else axis(a, v.ndim)
    _, idx, inv, counts = np.unique(v, return_index=True, return_inverse=True, return_counts=True, axis=a)
    inv = inv.reshape(-1)
    if not node.attr("sorted", 1):
        order = np.argsort(idx, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        idx, counts, inv = idx[order], counts[order], rank[inv]
    t = T(x)
    y = ops.take(ops.reshape(t, (-1,)) if a is None else t, Tensor(idx.astype(np.int64)), 0 if a is None else a)
    outs = (y, idx, inv, counts)
    return tuple(o if isinstance(o, Tensor) else o.astype(np.int64) for o in outs)[:max(node.n_outputs, 1)]


@onnx_op("Compress")
def compress(node: Node, x: Any, condition: Any) -> Tensor:
    """The slices along `axis` (of the flattened input without one) where condition is true; a
    shorter condition leaves the rest out, as numpy's compress."""
    keep = np.flatnonzero(_eager(node, condition, "Compress's output shape depends on the condition's values"))
    t = T(x)
    a = node.attr("axis")
    if a is None:
        t, a = ops.reshape(t, (-1,)), 0
    return ops.take(t, Tensor(keep.astype(np.int64)), axis(a, t.ndim))


@onnx_op("ReverseSequence")
def reverse_sequence(node: Node, x: Any, lens: Any) -> Tensor:
    """Each batch entry's first lens[b] steps along time_axis reversed: a gather from index
    lens[b] - 1 - t where t < lens[b], t elsewhere (traceable: lens may be a run-time tensor)."""
    x = T(x)
    ba, ta = axis(node.attr("batch_axis", 1), x.ndim), axis(node.attr("time_axis", 0), x.ndim)
    n = ops.reshape(ops.cast(T(lens), dt.int64), [x.shape[ba] if d == ba else 1 for d in range(x.ndim)])
    t = ops.iota(x.shape, ta, dt.int64)
    src = ops.where(ops.lt(t, n), ops.sub(ops.sub(n, 1), t), t)
    return ops.take_along_dim(x, src, ta)


@onnx_op("TensorScatter")
def tensor_scatter(node: Node, past: Any, update: Any, write_indices: Any = None) -> Tensor:
    """The KV-cache write: update's steps land along `axis` from write_indices[b] on (mode
    'circular': modulo the cache length). A gather of update where each cache position came from,
    so it traces and gradients reach both."""
    past, update = T(past), T(update)
    a = axis(node.attr("axis", -2), past.ndim)
    mode = node.attr("mode", "linear")
    if mode not in ("linear", "circular"):
        raise node.unsupported(f"mode {mode!r} is not supported (linear or circular)")
    if a == 0:
        raise node.unsupported("axis 0 is the batch axis")
    length, steps = past.shape[a], update.shape[a]
    w = ops.full((past.shape[0],), 0, dt.int64) if write_indices is None else ops.cast(T(write_indices), dt.int64)
    src = ops.sub(ops.iota(past.shape, a, dt.int64), ops.reshape(w, (-1,) + (1,) * (past.ndim - 1)))
    if mode == "circular":
        src = ops.remainder(src, length)
    ok = ops.logical_and(ops.ge(src, 0), ops.lt(src, steps))
    got = ops.take_along_dim(update, ops.clamp(src, 0, steps - 1), a)
    return ops.where(ok, ops.cast(got, past.dtype), past)


@onnx_op("Bernoulli")
def bernoulli(node: Node, x: Any) -> Tensor:
    raise node.unsupported("Bernoulli draws random numbers: Avalon's generator cannot reproduce onnx's (numpy's) "
                           "stream, seeded or not")


@onnx_op("BitCast")
def bitcast(node: Node, x: Any) -> Any:
    """A reinterpretation of the bits: numpy's view of a load-time constant, Avalon's `bitcast` op
    (x.view(dtype)) of a run-time tensor."""
    from .dtypes import avalon_dtype
    to = avalon_dtype(node.attr("to"), node)
    if x.dtype.itemsize != to.itemsize:
        raise node.unsupported(f"BitCast from {x.dtype} to {to.name} changes the width")
    if not isinstance(x, np.ndarray):
        return T(x).view(to)
    return x.view(to.np)


@onnx_op("Shrink")
def shrink(node: Node, x: Any) -> Tensor:
    """x + bias below -lambd, x - bias above lambd, 0 between (hard and soft shrinkage)."""
    x = T(x)
    lam, bias = float(node.attr("lambd", 0.5)), float(node.attr("bias", 0.0))
    lo, hi = ops.lt(x, ops.full((), -lam, x.dtype)), ops.gt(x, ops.full((), lam, x.dtype))
    zero = ops.full((), 0, x.dtype)
    return ops.where(lo, ops.add(x, ops.full((), bias, x.dtype)),
                     ops.where(hi, ops.sub(x, ops.full((), bias, x.dtype)), zero))


@onnx_op("MeanVarianceNormalization")
def mean_variance_normalization(node: Node, x: Any) -> Tensor:
    """(x - mean) / sqrt(mean(x^2) - mean^2), over `axes` (default N, H, W); onnx adds 1e-9."""
    x = T(x)
    axes = [a % x.ndim for a in node.attr("axes", [0, 2, 3])]
    mean = ops.mean(x, axes, keepdims=True)
    var = ops.sub(ops.mean(ops.mul(x, x), axes, keepdims=True), ops.mul(mean, mean))
    return ops.div(ops.sub(x, mean), ops.add(ops.sqrt(var), ops.full((), 1e-9, x.dtype)))
