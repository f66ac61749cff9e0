"""The primitive ops, each declared once. Composites (softmax, losses, norms, LSTM cells) live in
`avalon.nn` and are built from these, so autodiff and fusion see through them."""
from __future__ import annotations

import math

from . import dtypes as dt
from .registry import Attr, ShapeError, define_op, same_dtype
from .types import TensorType as T

PURE = "pure"
EW = "elementwise"


def _dims(name: str, what: str, shape) -> tuple[int, ...]:
    """A shape given as an attribute: non-negative dims (a TensorType would raise a plain ValueError)."""
    if any(s < 0 for s in shape):
        raise ShapeError(f"{name}: {what} {list(shape)} has a negative dimension")
    return tuple(shape)


def _same(name):
    def infer(ts, a):
        same_dtype(name, ts)
        shapes = {t.shape for t in ts}
        if len(shapes) > 1:
            raise ShapeError(f"{name}: operand shapes differ ({', '.join(str(t.shape) for t in ts)}); "
                             "broadcasts must be explicit in the IR")
        return [T(ts[0].shape, ts[0].dtype)]
    return infer


def _floating(name):
    base = _same(name)

    def infer(ts, a):
        if not ts[0].dtype.is_float:
            raise ShapeError(f"{name}: needs a floating-point operand, got {ts[0].dtype}")
        return base(ts, a)
    return infer


# Each op's categories are its traits (see registry.TRAITS), declared here and nowhere else.
for _n in ("exp", "log", "tanh", "sigmoid", "sqrt", "rsqrt", "erf"):
    define_op(_n, 1, _floating(_n), traits={EW, PURE}, doc=f"elementwise {_n}")
for _n in ("neg", "abs", "relu", "sign"):
    define_op(_n, 1, _same(_n), traits={EW, PURE, "bool_as_int"}, doc=f"elementwise {_n}")
for _n in ("add", "mul", "maximum", "minimum"):
    define_op(_n, 2, _same(_n), traits={EW, PURE, "bool_as_int", "commutative"}, doc=f"elementwise {_n}")
for _n in ("sub", "div", "pow"):
    define_op(_n, 2, _same(_n), traits={EW, PURE, "bool_as_int"}, doc=f"elementwise {_n}")


def _compare(name):
    base = _same(name)
    return lambda ts, a: [base(ts, a)[0].with_dtype(dt.bool_)]


for _n in ("eq", "ne"):
    define_op(_n, 2, _compare(_n), traits={EW, PURE, "commutative"}, doc=f"elementwise comparison {_n}, giving i1")
for _n in ("lt", "le", "gt", "ge"):
    define_op(_n, 2, _compare(_n), traits={EW, PURE}, doc=f"elementwise comparison {_n}, giving i1")


def _logical(name):
    base = _same(name)

    def infer(ts, a):
        if any(t.dtype != dt.bool_ for t in ts):
            raise ShapeError(f"{name}: operands must be i1")
        return base(ts, a)
    return infer


define_op("logical_and", 2, _logical("logical_and"), traits={EW, PURE, "commutative"})
define_op("logical_or", 2, _logical("logical_or"), traits={EW, PURE, "commutative"})
define_op("logical_not", 1, _logical("logical_not"), traits={EW, PURE})


def _where(ts, a):
    c, x, y = ts
    if c.dtype != dt.bool_:
        raise ShapeError(f"where: condition must be i1, got {c.dtype}")
    if not (c.shape == x.shape == y.shape):
        raise ShapeError(f"where: shapes differ ({c.shape}, {x.shape}, {y.shape})")
    same_dtype("where", [x, y])
    return [T(x.shape, x.dtype)]


define_op("stop_gradient", 1, _same("stop_gradient"), traits={EW, PURE},
          doc="identity whose operand gets no gradient (jax.lax.stop_gradient, torch's detach)")
define_op("where", 3, _where, traits={EW, PURE}, doc="select x where cond else y")


def _check(ts, a):
    x, ok = ts
    if a["error"] not in ("value", "linalg"):
        raise ShapeError(f"check: error must be 'value' or 'linalg', got {a['error']!r}")
    if ok.dtype != dt.bool_:
        raise ShapeError(f"check: the condition must be i1, got {ok.dtype}")
    if ok.shape != x.shape:
        raise ShapeError(f"check: the condition's shape {ok.shape} is not the value's {x.shape}; broadcast it first")
    return [T(x.shape, x.dtype)]


define_op("check", 2, _check, {"message": Attr("str"), "error": Attr("str", "value")}, traits={EW, PURE},
          doc="x itself, raising ValueCheckError(message) (error = 'linalg': also a LinAlgError) at run time where "
              "any element of ok is false: the checks torch makes on values (binary_cross_entropy's inputs in "
              "[0, 1], a Cholesky factor's pivots) kept in compiled graphs")
define_op("cast", 1, lambda ts, a: [T(ts[0].shape, a["dtype"])], {"dtype": Attr("dtype")},
          traits={EW, PURE}, doc="convert element type")


def _constant(ts, a):
    import numpy as np
    v = a["value"]
    shape = _dims("constant", "shape", a["shape"])
    if isinstance(v, np.ndarray) and v.size != math.prod(shape) and v.size != 1:
        raise ShapeError(f"constant: {v.size} values for shape {shape}")
    return [T(shape, a["dtype"])]


define_op("constant", 0, _constant, {"value": Attr("value"), "shape": Attr("ints", []),
                                     "dtype": Attr("dtype", dt.float32)},
          traits={PURE}, doc="a scalar splat to `shape`, or a dense array of that shape")


def _broadcast(ts, a):
    src, shape = ts[0].shape, _dims("broadcast", "shape", a["shape"])
    if len(src) > len(shape):
        raise ShapeError(f"broadcast: cannot broadcast shape {src} to lower rank shape {shape}")
    for s, d in zip(reversed(src), reversed(shape)):
        if s != d and s != 1:
            raise ShapeError(f"broadcast: cannot broadcast shape {src} to {shape}")
    return [T(shape, ts[0].dtype)]


define_op("broadcast", 1, _broadcast, {"shape": Attr("ints")}, traits={PURE, "broadcast", "movement", "selects"},
          doc="numpy-style broadcast (right-aligned; size-1 dims stretch)")


def _axes(name, rank, axes):
    out = []
    for ax in axes:
        if not -rank <= ax < max(rank, 1):
            raise ShapeError(f"{name}: axis {ax} out of range for rank {rank}")
        out.append(ax % rank if rank else 0)  # (a 0-d operand's only "axis" is 0: it reduces nothing)
    if len(set(out)) != len(out):
        raise ShapeError(f"{name}: repeated axis in {axes}")
    return sorted(out)


def _reduce(name, result_dtype=None):
    def infer(ts, a):
        t = ts[0]
        axes = set(_axes(name, t.rank, a["axes"]) if "axes" in a else _axes(name, t.rank, [a["axis"]]))
        axes &= set(range(t.rank))
        if a["keepdims"]:
            shape = tuple(1 if i in axes else s for i, s in enumerate(t.shape))
        else:
            shape = tuple(s for i, s in enumerate(t.shape) if i not in axes)
        if name in ("max", "argmax") and any(t.shape[i] == 0 for i in axes):
            raise ShapeError(f"{name}: reduction over an empty axis")
        return [T(shape, result_dtype or t.dtype)]
    return infer


define_op("sum", 1, _reduce("sum"), {"axes": Attr("ints"), "keepdims": Attr("bool", False)},
          traits={PURE, "reduction", "bool_as_int"}, doc="sum over axes")
define_op("max", 1, _reduce("max"), {"axes": Attr("ints"), "keepdims": Attr("bool", False)},
          traits={PURE, "reduction"}, doc="maximum over axes")
define_op("argmax", 1, _reduce("argmax", dt.int64), {"axis": Attr("int"), "keepdims": Attr("bool", False)},
          traits={PURE, "reduction"}, doc="index of the first maximum along one axis, i64")


def _cumsum(ts, a):
    t = ts[0]
    if not (t.dtype.is_float or t.dtype.is_int):
        raise ShapeError(f"cumsum: needs a floating-point or integer operand, got {t.dtype}; "
                         "cast an i1 operand to an integer type first")
    _axes("cumsum", t.rank, [a["axis"]])
    return [T(t.shape, t.dtype)]


define_op("cumsum", 1, _cumsum, {"axis": Attr("int"), "reverse": Attr("bool", False)}, traits={PURE, "scan"},
          doc="inclusive running sum along one axis (jax.lax.cumsum); reverse sums from the end")


def _reshape(ts, a):
    t, shape = ts[0], tuple(a["shape"])
    if math.prod(shape) != t.numel or any(s < 0 for s in shape):
        raise ShapeError(f"reshape: cannot reshape {t.shape} ({t.numel} elements) to {shape}")
    return [T(shape, t.dtype)]


define_op("reshape", 1, _reshape, {"shape": Attr("ints")}, traits={PURE, "view", "movement", "selects"})


def _transpose(ts, a):
    t, perm = ts[0], list(a["perm"])
    if sorted(perm) != list(range(t.rank)):
        raise ShapeError(f"transpose: perm {perm} is not a permutation of {t.rank} dims")
    return [T(tuple(t.shape[p] for p in perm), t.dtype)]


define_op("transpose", 1, _transpose, {"perm": Attr("ints")}, traits={PURE, "view", "movement", "selects"})


def _slice(ts, a):
    t = ts[0]
    start, limit = a["start"], a["limit"]
    step = a["step"] or [1] * t.rank
    if not (len(start) == len(limit) == len(step) == t.rank):
        raise ShapeError(f"slice: start/limit/step need {t.rank} entries each")
    shape = []
    for d, (s, l, st) in enumerate(zip(start, limit, step)):
        if st < 1 or not (0 <= s <= l <= t.shape[d]):
            raise ShapeError(f"slice: dim {d}: [{s}:{l}:{st}] invalid for size {t.shape[d]}")
        shape.append(-(-(l - s) // st))
    return [T(tuple(shape), t.dtype)]


define_op("slice", 1, _slice, {"start": Attr("ints"), "limit": Attr("ints"), "step": Attr("ints", [])},
          traits={PURE, "movement", "selects"}, doc="strided static slice; `step` empty means all ones")


def _concat(ts, a):
    same_dtype("concat", ts)
    r = ts[0].rank
    if r == 0:
        raise ShapeError("concat: operands must have rank >= 1, got 0-d tensors")
    ax = _axes("concat", r, [a["axis"]])[0]
    for t in ts:
        if t.rank != r or any(t.shape[i] != ts[0].shape[i] for i in range(r) if i != ax):
            raise ShapeError(f"concat: shapes {[x.shape for x in ts]} differ off axis {ax}")
    shape = list(ts[0].shape)
    shape[ax] = sum(t.shape[ax] for t in ts)
    return [T(tuple(shape), ts[0].dtype)]


define_op("concat", (1, None), _concat, {"axis": Attr("int")}, traits={PURE, "movement"})


def _pad(ts, a):
    t, lo, hi = ts[0], a["low"], a["high"]
    if len(lo) != t.rank or len(hi) != t.rank or min(lo + hi, default=0) < 0:
        raise ShapeError(f"pad: low/high need {t.rank} non-negative entries each")
    return [T(tuple(s + l + h for s, l, h in zip(t.shape, lo, hi)), t.dtype)]


define_op("pad", 1, _pad, {"low": Attr("ints"), "high": Attr("ints"), "value": Attr("float", 0.0)},
          traits={PURE, "movement"}, doc="constant padding")


def _matmul(ts, a):
    x, y = ts
    same_dtype("matmul", ts)
    if x.rank < 2 or y.rank != x.rank:
        raise ShapeError(f"matmul: operands need equal rank >= 2 (batch dims explicit), got {x.shape} and {y.shape}")
    if x.shape[:-2] != y.shape[:-2]:
        raise ShapeError(f"matmul: batch dims differ: {x.shape} and {y.shape}")
    if x.shape[-1] != y.shape[-2]:
        raise ShapeError(f"matmul: contraction dims differ: {x.shape} @ {y.shape}")
    return [T(x.shape[:-1] + (y.shape[-1],), x.dtype)]


define_op("matmul", 2, _matmul, traits={PURE, "contraction"}, doc="batched (..., M, K) @ (..., K, N)")

_CONV = {"stride": Attr("ints", [1, 1]), "padding": Attr("ints", [0, 0]),
         "dilation": Attr("ints", [1, 1]), "groups": Attr("int", 1)}


def _conv_out(n, c, h, w, o, kh, kw, a):
    (sh, sw), (ph, pw), (dh, dw) = a["stride"], a["padding"], a["dilation"]
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ShapeError(f"conv2d: kernel {kh}x{kw} does not fit input {h}x{w} with padding {a['padding']}")
    return (n, o, oh, ow)


def _conv_check(x, w, a):
    for k in ("stride", "padding", "dilation"):
        if len(a[k]) != 2:
            raise ShapeError(f"conv2d: {k} needs 2 entries, got {a[k]}")
    if min(a["stride"]) < 1 or min(a["dilation"]) < 1 or min(a["padding"]) < 0:
        raise ShapeError(f"conv2d: stride {a['stride']} and dilation {a['dilation']} must be >= 1 and "
                         f"padding {a['padding']} >= 0")
    if a["groups"] < 1:
        raise ShapeError(f"conv2d: groups must be >= 1, got {a['groups']}")
    if x.rank != 4 or w.rank != 4:
        raise ShapeError(f"conv2d: input and weight must be 4-d (NCHW, OIHW), got {x.shape} and {w.shape}")
    g = a["groups"]
    if x.shape[1] != w.shape[1] * g or w.shape[0] % g:
        raise ShapeError(f"conv2d: input {x.shape} has {x.shape[1]} channels; weight {w.shape} with groups={g} "
                         f"expects {w.shape[1] * g}")


def _conv2d(ts, a):
    x, w = ts
    same_dtype("conv2d", ts)
    _conv_check(x, w, a)
    n, c, h, wd = x.shape
    return [T(_conv_out(n, c, h, wd, w.shape[0], w.shape[2], w.shape[3], a), x.dtype)]


def _conv2d_grad_input(ts, a):
    dy, w = ts
    x = T(_dims("conv2d_grad_input", "input_shape", a["input_shape"]), dy.dtype)
    _conv_check(x, w, a)
    if _conv_out(*x.shape, w.shape[0], w.shape[2], w.shape[3], a) != dy.shape:
        raise ShapeError(f"conv2d_grad_input: dy {dy.shape} does not match input_shape {x.shape}")
    return [x]


def _conv2d_grad_weight(ts, a):
    x, dy = ts
    w = T(_dims("conv2d_grad_weight", "weight_shape", a["weight_shape"]), x.dtype)
    _conv_check(x, w, a)
    if _conv_out(*x.shape, w.shape[0], w.shape[2], w.shape[3], a) != dy.shape:
        raise ShapeError(f"conv2d_grad_weight: dy {dy.shape} does not match x {x.shape} and weight {w.shape}")
    return [w]


define_op("conv2d", 2, _conv2d, _CONV, traits={PURE, "contraction", "nchw"}, doc="NCHW x OIHW cross-correlation")
define_op("conv2d_grad_input", 2, _conv2d_grad_input, {"input_shape": Attr("ints"), **_CONV},
          traits={PURE, "contraction", "nchw"}, doc="gradient of conv2d w.r.t. its input: (dy, weight) -> dx")
define_op("conv2d_grad_weight", 2, _conv2d_grad_weight, {"weight_shape": Attr("ints"), **_CONV},
          traits={PURE, "contraction"}, doc="gradient of conv2d w.r.t. its weight: (x, dy) -> dw")

_POOL = {"kernel": Attr("ints"), "stride": Attr("ints"), "padding": Attr("ints", [0, 0])}


def _pool_out(name, shape, a):
    if len(shape) != 4:
        raise ShapeError(f"{name}: input must be 4-d NCHW, got {shape}")
    for k in ("kernel", "stride", "padding"):
        if len(a[k]) != 2:
            raise ShapeError(f"{name}: {k} needs 2 entries, got {a[k]}")
    if min(a["kernel"]) < 1 or min(a["stride"]) < 1 or min(a["padding"]) < 0:
        raise ShapeError(f"{name}: kernel {a['kernel']} and stride {a['stride']} must be >= 1 and "
                         f"padding {a['padding']} >= 0")
    (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
    if ph > kh // 2 or pw > kw // 2:
        raise ShapeError(f"{name}: padding {a['padding']} must be at most half the kernel {a['kernel']}")
    n, c, h, w = shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ShapeError(f"{name}: kernel {kh}x{kw} does not fit input {h}x{w}")
    return (n, c, oh, ow)


def _pool(name):
    return lambda ts, a: [T(_pool_out(name, ts[0].shape, a), ts[0].dtype)]


def _max_pool_grad(ts, a):
    x, dy = ts
    if _pool_out("max_pool2d_grad", x.shape, a) != dy.shape:
        raise ShapeError(f"max_pool2d_grad: dy {dy.shape} does not match x {x.shape}")
    return [T(x.shape, x.dtype)]


def _avg_pool_grad(ts, a):
    dy = ts[0]
    shape = _dims("avg_pool2d_grad", "input_shape", a["input_shape"])
    if _pool_out("avg_pool2d_grad", shape, a) != dy.shape:
        raise ShapeError(f"avg_pool2d_grad: dy {dy.shape} does not match input_shape {shape}")
    return [T(shape, dy.dtype)]


_AVG = {**_POOL, "count_include_pad": Attr("bool", True)}
define_op("max_pool2d", 1, _pool("max_pool2d"), _POOL, traits={PURE, "pool", "nchw"},
          doc="max pooling (padding counts as -inf)")
define_op("max_pool2d_grad", 2, _max_pool_grad, _POOL, traits={PURE, "pool", "nchw"},
          doc="(x, dy) -> dx; each window's gradient goes to its first maximum")
define_op("avg_pool2d", 1, _pool("avg_pool2d"), _AVG, traits={PURE, "pool", "nchw", "bool_as_int"})
define_op("avg_pool2d_grad", 1, _avg_pool_grad, {"input_shape": Attr("ints"), **_AVG},
          traits={PURE, "pool", "nchw", "bool_as_int"},
          doc="dy -> dx")


def _take(ts, a):
    x, idx = ts
    if idx.dtype not in (dt.int32, dt.int64):
        raise ShapeError(f"take: indices must be i32 or i64, got {idx.dtype}")
    if x.rank == 0:
        raise ShapeError("take: the operand must have rank >= 1, got a 0-d tensor")
    ax = _axes("take", x.rank, [a["axis"]])[0]
    return [T(x.shape[:ax] + idx.shape + x.shape[ax + 1:], x.dtype)]


define_op("take", 2, _take, {"axis": Attr("int", 0)}, traits={PURE, "gather"},
          doc="numpy.take: gather slices of x along axis at integer indices (embedding lookup)")


def _scatter_rows(name: str):
    def infer(ts, a):
        v, idx = ts
        if idx.dtype not in (dt.int32, dt.int64) or idx.rank != 1:
            raise ShapeError(f"{name}: indices must be a 1-d i32 or i64 tensor, got {idx}")
        if not v.dtype.is_float:
            raise ShapeError(f"{name}: values must be floating point, got {v.dtype}")
        if v.rank == 0 or v.shape[0] != idx.shape[0]:
            raise ShapeError(f"{name}: values {v.shape} need one row per index ({idx.shape[0]} indices)")
        if a["size"] < 0:
            raise ShapeError(f"{name}: size must be non-negative, got {a['size']}")
        return [T((a["size"],) + v.shape[1:], v.dtype)]
    return infer


_index_add = _scatter_rows("index_add")


# The adjoint of `take` along axis 0: an embedding's gradient in M*D adds, where the one-hot matmul
# it replaces took 2*K*M*D flops and an (M, K) one-hot (GPT-2: 630 GFLOP and 1.6 GB per step).
define_op("index_add", 2, _index_add, {"size": Attr("int")}, traits={PURE, "scatter"},
          doc="(values (M, *rest), idx (M,)) -> zeros (size, *rest) with each row values[m] added into row "
              "idx[m] (torch.index_add on zeros; duplicate indices sum); an index outside [0, size) raises")
# The maximum of the rows aimed at each row: scatter_reduce's amax (a graph attention's per-node softmax
# shift, max aggregation) in M*D comparisons where the (index == position) mask took M*K*D. No vjp
# rule: `ops.scattering` builds torch's tie-splitting gradient around it from take and index_add.
define_op("index_max", 2, _scatter_rows("index_max"), {"size": Attr("int")}, traits={PURE, "scatter"},
          doc="(values (M, *rest), idx (M,)) -> (size, *rest): row k the elementwise maximum of the rows values[m] "
              "with idx[m] == k, -inf where no index names k; an index outside [0, size) raises")


def _one_hot(ts, a):
    if ts[0].dtype not in (dt.int32, dt.int64):
        raise ShapeError(f"one_hot: indices must be i32 or i64, got {ts[0].dtype}")
    if a["num_classes"] < 1:
        raise ShapeError("one_hot: num_classes must be positive")
    return [T(ts[0].shape + (a["num_classes"],), a["dtype"])]


define_op("one_hot", 1, _one_hot, {"num_classes": Attr("int"), "dtype": Attr("dtype", dt.float32)},
          traits={PURE, "gather"}, doc="indices -> one-hot vectors along a new last axis")


def _random(ts, a):
    if ts[0].shape != () or ts[0].dtype not in (dt.int32, dt.int64):
        raise ShapeError(f"random: seed must be a 0-d integer tensor, got {ts[0]}")
    if a["distribution"] not in ("uniform", "normal"):
        raise ShapeError(f"random: distribution must be 'uniform' or 'normal', got {a['distribution']!r}")
    if not a["dtype"].is_float:
        raise ShapeError("random: dtype must be floating-point")
    return [T(_dims("random", "shape", a["shape"]), a["dtype"])]


define_op("random", 1, _random, {"shape": Attr("ints"), "dtype": Attr("dtype", dt.float32),
                                 "distribution": Attr("str", "uniform")},
          traits={PURE, "random"},
          doc="counter-based random numbers from an explicit seed: the same seed gives the same numbers "
              "on every backend (see avalon.ir.reference.random_bits)")


def _fusion(ts, a):
    return None  # results are whatever the region yields; the verifier checks it


define_op("fusion", (0, None), _fusion, {"name": Attr("str")}, traits={PURE, "region"}, symbol="name",
          doc="a fused group: one region holding the tensor-level ops it replaced, run as one kernel")


# A user-defined gradient (torch.autograd.Function, jax.custom_vjp): region 0 computes the results
# from the operands (the user's outputs, then what backward saved), region 1 maps (saved, one
# cotangent per output) to the cotangents of the operands listed in `grads`, an optional region 2
# (the user's `jvp`) maps (saved, one tangent per `grads` operand) to the outputs' tangents. It lives between a
# trace and autodiff only: every traced graph has it inlined (region 0) unless `av.grad` is about
# to differentiate it, and autodiff inlines region 1 as its VJP (avalon/autograd.py).
define_op("custom_vjp", (0, None), _fusion, {"name": Attr("str"), "outputs": Attr("int"), "grads": Attr("ints")},
          traits={PURE, "region"}, symbol="name",
          doc="a function with a user-defined gradient: region 0 the forward (outputs, then saved values), "
              "region 1 the backward (saved values and output cotangents -> the `grads` operands' cotangents)")


# -- added for ported PyTorch code (arange/tril masks, positional encodings) ------------------------

for _n in ("sin", "cos"):
    define_op(_n, 1, _floating(_n), traits={EW, PURE}, doc=f"elementwise {_n} (radians)")


def _iota(ts, a):
    shape = tuple(a["shape"])
    if any(s < 0 for s in shape):
        raise ShapeError(f"iota: negative size in shape {shape}")
    _axes("iota", len(shape), [a["axis"]])
    if a["dtype"] == dt.bool_:
        raise ShapeError("iota: dtype must be numeric, got i1")
    return [T(shape, a["dtype"])]


define_op("iota", 0, _iota, {"shape": Attr("ints"), "axis": Attr("int", 0), "dtype": Attr("dtype", dt.int64)},
          traits={PURE, "movement"},
          doc="each element's index along `axis` (XLA's iota): arange, position ids and tril/triu masks "
              "stay index formulas instead of captured arrays")


# -- communication (avalon.distributed) -------------------------------------------------------------

REDUCTIONS = ("mean", "sum")


def _all_reduce(ts, a):
    t = ts[0]
    if a["reduction"] not in REDUCTIONS:
        raise ShapeError(f"all_reduce: reduction must be one of {', '.join(REDUCTIONS)}, got {a['reduction']!r}")
    if t.dtype == dt.bool_ or (a["reduction"] == "mean" and not t.dtype.is_float):
        raise ShapeError(f"all_reduce: {a['reduction']} needs a "
                         f"{'floating-point' if a['reduction'] == 'mean' else 'numeric'} operand, got {t.dtype}")
    if not a["group"]:
        raise ShapeError("all_reduce: group must name a process group ('world')")
    return [T(t.shape, t.dtype)]


# No traits on purpose: not `pure` (a collective every process must issue in the same order, so CSE
# may not merge it, DCE may not drop it and canonicalize may not fold it at compile time) and
# nothing fusable (it is communication between kernels, never part of one).
define_op("all_reduce", 1, _all_reduce, {"reduction": Attr("str", "mean"), "group": Attr("str", "world")},
          doc="the elementwise mean or sum of the operand over every process of a group "
              "(torch.distributed.all_reduce); the identity on one process")


def _all_gather(ts, a):
    t = ts[0]
    if t.rank == 0:
        raise ShapeError("all_gather: needs an operand of rank >= 1 (it concatenates along axis 0); "
                         "reshape a 0-d operand to (1,) first")
    if not isinstance(a["world_size"], int) or a["world_size"] < 1:
        raise ShapeError(f"all_gather: world_size must be a positive number of processes, got {a['world_size']!r}")
    if not a["group"]:
        raise ShapeError("all_gather: group must name a process group ('world')")
    return [T((a["world_size"] * t.shape[0], *t.shape[1:]), t.dtype)]


# Not `pure` either, for all_reduce's reasons. `world_size` is the group's size when the op was traced
# (the result's shape depends on it): 1, the default, makes the op the identity.
define_op("all_gather", 1, _all_gather, {"world_size": Attr("int", 1), "group": Attr("str", "world")},
          doc="every process's operand concatenated along axis 0 in rank order "
              "(torch.distributed.all_gather_into_tensor): result dim 0 = world_size * operand dim 0; "
              "the identity on one process")


# -- sorting (avalon.ops.sort / argsort / topk) -------------------------------------------------------

def _sorting(name: str):
    def infer(ts, a):
        t = ts[0]
        if t.rank == 0:
            raise ShapeError(f"{name}: needs an operand of rank >= 1, got a 0-d tensor")
        _axes(name, t.rank, [a["axis"]])
        return [T(t.shape, dt.int64 if name == "argsort" else t.dtype)]
    return infer


# Two ops, not one with two results: every rule table computes one result per op, and the values
# need a gradient rule of their own (the inverse permutation, O(n log n)) where a `take` of the
# operand at the indices would differentiate through a one-hot matmul, O(n^2). See avalon/ops/sorting.py.
define_op("sort", 1, _sorting("sort"), {"axis": Attr("int", -1), "descending": Attr("bool", False)},
          traits={PURE, "sort"},
          doc="the operand sorted along `axis` (torch.sort's values): stable, nan sorts as the largest value "
              "(last ascending, first descending); -0.0 and 0.0 are equal")
define_op("argsort", 1, _sorting("argsort"), {"axis": Attr("int", -1), "descending": Attr("bool", False)},
          traits={PURE, "sort"},
          doc="the i64 positions that sort the operand along `axis` (torch.sort's indices, stable=True): "
              "equal elements keep their order in both directions; nan sorts as the largest value")


# -- factorizations (avalon.linalg: svd, eigh, qr, pinv and what is built on them) --------------------

def _matrices(name: str, t: T, square: bool = False) -> tuple[int, int]:
    """(rows, cols) of a batch of float32/float64 matrices (LAPACK's types: torch has no f16 kernels either)."""
    if t.rank < 2:
        raise ShapeError(f"{name}: needs batches of matrices (rank >= 2), got {t.shape}")
    if t.dtype not in (dt.float32, dt.float64):
        raise ShapeError(f"{name}: needs a float32 or float64 operand, got {t.dtype}; cast it first "
                         "(LAPACK has no 16-bit factorizations)")
    m, n = t.shape[-2:]
    if square and m != n:
        raise ShapeError(f"{name}: needs square matrices, got {m} by {n}")
    if m == 0 or n == 0:
        raise ShapeError(f"{name}: the matrices are empty ({m} by {n})")
    return m, n


def svd_layout(m: int, n: int, full: bool) -> tuple[int, int, int]:
    """(columns of U, columns of V, width of the packed result) of `svd` on m x n matrices."""
    k = min(m, n)
    return (m, n, max(m, n)) if full else (k, k, k)


def _svd(ts, a):
    t = ts[0]
    m, n = _matrices("svd", t)
    _, _, w = svd_layout(m, n, a["full_matrices"])
    return [T(t.shape[:-2] + (m + 1 + n, w), t.dtype)]


def _eigh(ts, a):
    t = ts[0]
    _, n = _matrices("eigh", t, square=True)
    return [T(t.shape[:-2] + (n + 1, n), t.dtype)]


def qr_layout(m: int, n: int, complete: bool) -> tuple[int, int]:
    """(columns of Q = rows of R, width of the packed result) of `qr` on m x n matrices."""
    c = m if complete else min(m, n)
    return c, max(c, n)


def _qr(ts, a):
    t = ts[0]
    m, n = _matrices("qr", t)
    c, w = qr_layout(m, n, a["complete"])
    return [T(t.shape[:-2] + (m + c, w), t.dtype)]


def _pinv(ts, a):
    t = ts[0]
    m, n = _matrices("pinv", t, square=a["hermitian"])
    if a["rtol"] < 0 or a["atol"] < 0:
        raise ShapeError(f"pinv: tolerances must be non-negative, got atol={a['atol']}, rtol={a['rtol']}")
    return [T(t.shape[:-2] + (n, m), t.dtype)]


# One result per op, as every rule table wants, so a factorization's factors are packed into one
# tensor (LAPACK-style packed storage) that the frontend slices: the factors come from one LAPACK
# call and their gradient rule sees all of them. Backends run numpy.linalg (the Triton backend as a
# host step between launches); MLIR and ONNX have no such op and say so.
define_op("svd", 1, _svd, {"full_matrices": Attr("bool", False)}, traits={PURE, "factorization"},
          doc="the singular value decomposition A = U diag(S) V^T of each (m, n) matrix (LAPACK gesdd), packed "
              "as rows [U (m rows); S (1 row); V (n rows)], k = min(m, n) columns (max(m, n) with full_matrices: "
              "U is m x m, V is n x n, S and the rest padded with zeros); S descending")
define_op("eigh", 1, _eigh, {"upper": Attr("bool", False)}, traits={PURE, "factorization"},
          doc="eigenvalues (ascending, row 0) and eigenvectors (columns of rows 1..n) of each symmetric (n, n) "
              "matrix, reading its lower triangle (the upper one with `upper`); LAPACK syevd")
define_op("qr", 1, _qr, {"complete": Attr("bool", False)}, traits={PURE, "factorization"},
          doc="A = Q R of each (m, n) matrix (Householder, LAPACK geqrf), packed as rows [Q (m rows); R (c rows)] "
              "with c = min(m, n) (m with `complete`) and zeros padding the narrower factor")
def _bitcast(ts, a):
    t, d = ts[0], a["dtype"]
    if a["source"] != t.dtype:
        raise ShapeError(f"bitcast: source = {a['source']} does not match the operand's {t.dtype}")
    if d.itemsize == t.dtype.itemsize:
        return [T(t.shape, d)]
    if t.rank == 0:
        raise ShapeError(f"bitcast: a 0-d {t.dtype} operand cannot become {d} (different element sizes)")
    last = t.shape[-1] * t.dtype.itemsize
    if last % d.itemsize:
        raise ShapeError(f"bitcast: the last dim's {last} bytes are not a whole number of {d} elements")
    return [T(t.shape[:-1] + (last // d.itemsize,), d)]


define_op("bitcast", 1, _bitcast, {"dtype": Attr("dtype"), "source": Attr("dtype")}, traits={PURE},
          doc="reinterpret the operand's bytes (row-major, little-endian) as `dtype` (torch's Tensor.view(dtype)); "
              "a different element size rescales the last dim; `source` is the operand's dtype (the reference "
              "sees f16 widened and bf16 held as f32, so it says which bits to read); no derivative")


def _eig(ts, a):
    t = ts[0]
    _, n = _matrices("eig", t, square=True)
    return [T(t.shape[:-2] + (2 * n + 2, n), t.dtype)]


define_op("eig", 1, _eig, traits={PURE, "factorization"},
          doc="eigenvalues w and right eigenvectors V (unit-norm columns) of each general real (n, n) matrix "
              "(LAPACK geev), complex, packed as rows [Re w; Im w; Re V (n rows); Im V (n rows)]; torch's derivative")
def _ldl_factor(ts, a):
    t = ts[0]
    _, n = _matrices("ldl_factor", t, square=True)
    return [T(t.shape[:-2] + (n + 2, n), t.dtype)]


def _ldl_solve(ts, a):
    ld, piv, rhs = ts
    _, n = _matrices("ldl_solve", ld, square=True)
    if piv.dtype is not dt.int32 or tuple(piv.shape) != tuple(ld.shape[:-1]):
        raise ShapeError(f"ldl_solve: needs int32 pivots of shape {ld.shape[:-1]}, got {piv.dtype} {piv.shape}")
    if rhs.dtype is not ld.dtype or rhs.rank != ld.rank or tuple(rhs.shape[:-2]) != tuple(ld.shape[:-2]) \
            or rhs.shape[-2] != n:
        raise ShapeError(f"ldl_solve: needs right-hand sides of {ld.dtype} shaped {ld.shape[:-2]} + ({n}, k), got "
                         f"{rhs.dtype} {rhs.shape}")
    return [T(rhs.shape, rhs.dtype)]


define_op("ldl_factor", 1, _ldl_factor, traits={PURE, "factorization"},
          doc="the Bunch-Kaufman LDL^T factorization of each real symmetric (n, n) matrix (LAPACK sytrf, lower "
              "triangle read), packed as rows [LD (n rows: L below the diagonal, the 1x1/2x2 blocks of D on and "
              "just below it, zeros above); pivots (1-based, negative for 2x2 blocks, as floats); info in column 0]; "
              "no derivative (torch has none)")
define_op("ldl_solve", 3, _ldl_solve, traits={PURE, "factorization"},
          doc="X with A X = B from ldl_factor's LD and int32 pivots (LAPACK sytrs); the batch dims of LD, the pivots "
              "and B equal; no derivative (torch has none)")
define_op("pinv", 1, _pinv, {"atol": Attr("float", 0.0), "rtol": Attr("float", 0.0), "hermitian": Attr("bool", False)},
          traits={PURE, "factorization"},
          doc="the Moore-Penrose pseudo-inverse (n, m) of each (m, n) matrix through its SVD (eigh with "
              "`hermitian`), singular values at most max(atol, rtol * largest) treated as zero")
