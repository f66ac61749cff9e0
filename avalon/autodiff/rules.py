"""Vector-Jacobian products, one rule per differentiable primitive (JAX's `primitive_transposes`
table, keyed by op name like every other rule table).

A rule is `rule(b, op, g) -> [cotangent or None per operand]`: `b` is a Builder positioned where the
backward ops go, `op` is the forward op (its operands and result are live values the rule may read),
and `g` is the cotangent of `op`'s single result, of exactly its type. The rule returns one cotangent
per operand, each of exactly that operand's type, or None where the operand gets none (an integer
index, a condition, an operand the op is constant in). The transform (`transform.py`) only asks
for ops on a path from an input being differentiated to the loss, accumulates with `add`, and
drops the cotangents nobody needs with a dead-code sweep, so rules may compute every cotangent.

Where the derivative is undefined at a point, the rules follow torch (tests check them against
torch.autograd): `relu'(0) = 0`; `abs'(0) = sign(0) = 0`; `maximum`/`minimum` split the gradient
0.5/0.5 on ties; `max` (torch.amax) divides it evenly among all maxima of a slice; `max_pool2d`
gives each window's gradient to its first maximum (the reference rule of `max_pool2d_grad`);
`pow` gives d/dx = 0 where y == 0 and d/dy = 0 where x == 0 and y >= 0.

A user who defines an op with `avalon.ir.define_op` adds `VJP["my_op"] = rule` (or
`NON_DIFFERENTIABLE.add("my_op")`); `avalon ops --missing`, `tests/test_registry.py` and
`tests/test_autodiff_rules.py` report an op that has neither. VJP is registered with the op
registry as the table "vjp", NON_DIFFERENTIABLE as its exemption.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from avalon.ir import Builder, Op, Value
from avalon.ir.registry import ops_with, register_table

VjpFn = Callable[[Builder, Op, Value], Sequence["Value | None"]]
"""A VJP rule: `fn(b, op, g) -> [cotangent or None per operand]`."""

NON_DIFFERENTIABLE: set[str] = {
    # results are booleans or integers, or carry no information about their float operands' values
    "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not", "argmax", "one_hot", "argsort",
    # piecewise constant (torch gives zero gradient), constants and random numbers
    "sign", "constant", "random", "iota",
    # an identity that exists to block gradients (jax.lax.stop_gradient, torch's detach)
    "stop_gradient",
    # a reinterpretation of bits (torch's view(dtype) is not differentiable either)
    "bitcast",
}
"""Ops through which no gradient flows: their cotangent contribution is zero by definition."""

NOT_IMPLEMENTED: dict[str, str] = {
    "ldl_factor": "linalg.ldl_factor / ldl_factor_ex: derivative for aten::linalg_ldl_factor_ex is not implemented "
                  "(in torch either)",
    "ldl_solve": "linalg.ldl_solve: derivative for aten::linalg_ldl_solve is not implemented (in torch either)",
}
"""Ops with a derivative Avalon does not compute: exempt from the rule tables like NON_DIFFERENTIABLE (they
are listed there too), but differentiating through one raises GradError with this message instead of
giving a zero gradient."""
NON_DIFFERENTIABLE |= set(NOT_IMPLEMENTED)

INLINED = ops_with("region")
"""Region ops (a live set): the transform differentiates the ops inside their region instead."""

VJP: dict[str, VjpFn] = register_table("vjp", {}, exempt=NON_DIFFERENTIABLE, exempt_traits=("region",))


def vjp(*names: str) -> Callable[[VjpFn], VjpFn]:
    def deco(fn: VjpFn) -> VjpFn:
        for n in names:
            VJP[n] = fn
        return fn
    return deco


# -- small builders ----------------------------------------------------------------------------

def full_like(b: Builder, value: float, like: Value) -> Value:
    """A splat constant with `like`'s shape and dtype."""
    return b.constant(value, like.shape, like.dtype)


def _reshape(b: Builder, x: Value, shape: Sequence[int]) -> Value:
    return x if tuple(x.shape) == tuple(shape) else b("reshape", x, shape=list(shape))


def _norm_axes(axes: Sequence[int], rank: int) -> list[int]:
    return sorted(a % rank for a in axes) if rank else []


def _keepdims_shape(shape: Sequence[int], axes: Sequence[int]) -> list[int]:
    return [1 if i in axes else s for i, s in enumerate(shape)]


def _expand_reduced(b: Builder, g: Value, x: Value, axes: list[int]) -> Value:
    """A reduction's cotangent back at the reduced operand's shape (reshape to keepdims, broadcast)."""
    gk = _reshape(b, g, _keepdims_shape(x.shape, axes))
    return gk if gk.shape == x.shape else b("broadcast", gk, shape=list(x.shape))


def _transpose_last2(b: Builder, x: Value) -> Value:
    perm = list(range(x.type.rank))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return b("transpose", x, perm=perm)


# -- elementwise -------------------------------------------------------------------------------

@vjp("add")
def _add(b, op, g):
    return [g, g]


@vjp("sub")
def _sub(b, op, g):
    return [g, b("neg", g)]


@vjp("mul")
def _mul(b, op, g):
    x, y = op.operands
    return [b("mul", g, y), b("mul", g, x)]


@vjp("div")
def _div(b, op, g):
    """d(x/y)/dy = -x/y^2 = -(1/y) * (x/y): reuse g/y and the forward result."""
    y = op.operands[1]
    gx = b("div", g, y)
    return [gx, b("neg", b("mul", gx, op.result))]


@vjp("pow")
def _pow(b, op, g):
    """torch's masks: d/dx is 0 where y == 0 (so 0**0 has slope 0), d/dy is 0 where x == 0 and
    y >= 0 (instead of 0 * log 0 = nan)."""
    x, y = op.operands
    zero = full_like(b, 0.0, x)
    dx = b("mul", y, b("pow", x, b("sub", y, full_like(b, 1.0, y))))
    gx = b("where", b("eq", y, zero), zero, b("mul", g, dx))
    dy = b("mul", op.result, b("log", x))
    gy = b("where", b("logical_and", b("eq", x, zero), b("ge", y, zero)), zero, b("mul", g, dy))
    return [gx, gy]


def _minmax(first_wins: str, second_wins: str) -> VjpFn:
    """torch's maximum/minimum backward: ties split the gradient in half; otherwise the winner takes
    it (a nan operand, neither winning nor tying, passes the gradient to both, as in torch)."""
    def rule(b, op, g):
        x, y = op.operands
        zero = full_like(b, 0.0, g)
        half = b("mul", g, full_like(b, 0.5, g))
        tie = b("eq", x, y)
        gx = b("where", tie, half, b("where", b(second_wins, x, y), zero, g))
        gy = b("where", tie, half, b("where", b(first_wins, x, y), zero, g))
        return [gx, gy]
    return rule


VJP["maximum"] = _minmax("gt", "lt")
VJP["minimum"] = _minmax("lt", "gt")


@vjp("neg")
def _neg(b, op, g):
    return [b("neg", g)]


@vjp("abs")
def _abs(b, op, g):
    return [b("mul", g, b("sign", op.operands[0]))]


@vjp("relu")
def _relu(b, op, g):
    """Slope 0 at 0 and for nan, like torch's threshold_backward."""
    x = op.operands[0]
    return [b("where", b("gt", x, full_like(b, 0.0, x)), g, full_like(b, 0.0, g))]


@vjp("exp")
def _exp(b, op, g):
    return [b("mul", g, op.result)]


@vjp("log")
def _log(b, op, g):
    return [b("div", g, op.operands[0])]


@vjp("sin")
def _sin(b, op, g):
    return [b("mul", g, b("cos", op.operands[0]))]


@vjp("cos")
def _cos(b, op, g):
    return [b("neg", b("mul", g, b("sin", op.operands[0])))]


@vjp("tanh")
def _tanh(b, op, g):
    y = op.result
    return [b("mul", g, b("sub", full_like(b, 1.0, y), b("mul", y, y)))]


@vjp("sigmoid")
def _sigmoid(b, op, g):
    y = op.result
    return [b("mul", g, b("mul", y, b("sub", full_like(b, 1.0, y), y)))]


@vjp("sqrt")
def _sqrt(b, op, g):
    y = op.result
    return [b("div", g, b("mul", y, full_like(b, 2.0, y)))]


@vjp("rsqrt")
def _rsqrt(b, op, g):
    """d x^-1/2 = -1/2 x^-3/2 = -1/2 y^3."""
    y = op.result
    return [b("mul", b("mul", g, full_like(b, -0.5, y)), b("mul", b("mul", y, y), y))]


@vjp("erf")
def _erf(b, op, g):
    x = op.operands[0]
    slope = b("exp", b("neg", b("mul", x, x)))
    return [b("mul", g, b("mul", slope, full_like(b, 2.0 / math.sqrt(math.pi), x)))]


@vjp("where")
def _where(b, op, g):
    c = op.operands[0]
    zero = full_like(b, 0.0, g)
    return [None, b("where", c, g, zero), b("where", c, zero, g)]


@vjp("check")
def _check(b, op, g):
    """An identity on its value, whose cotangent passes the same check: a gradient-only graph often
    needs nothing of the checked forward value (the sum of a Cholesky factor), and DCE would drop
    the forward check, computing the gradient of a function torch refuses to evaluate."""
    return [b("check", g, op.operands[1], **op.attrs), None]


@vjp("cast")
def _cast(b, op, g):
    """Float to float passes the gradient through, cast back; from or to an integer type there is
    no gradient (integers are not differentiable)."""
    src = op.operands[0]
    if not (src.dtype.is_float and op.result.dtype.is_float):
        return [None]
    return [b("cast", g, dtype=src.dtype)]


# -- broadcast, reductions, shape ops ----------------------------------------------------------

@vjp("broadcast")
def _broadcast(b, op, g):
    """Sum over the axes the broadcast created or stretched, then reshape to the source shape."""
    src, dst = op.operands[0].shape, op.result.shape
    lead = len(dst) - len(src)
    axes = list(range(lead)) + [lead + i for i, s in enumerate(src) if s == 1 and dst[lead + i] != 1]
    out = b("sum", g, axes=axes) if axes else g
    return [_reshape(b, out, src)]


@vjp("sum")
def _sum(b, op, g):
    x = op.operands[0]
    return [_expand_reduced(b, g, x, _norm_axes(op.attrs["axes"], x.type.rank))]


@vjp("max")
def _max(b, op, g):
    """Like torch.amax: the gradient is divided evenly among all maxima of each reduced slice."""
    x = op.operands[0]
    axes = _norm_axes(op.attrs["axes"], x.type.rank)
    m = _expand_reduced(b, op.result, x, axes)
    mask = b("cast", b("eq", x, m), dtype=x.dtype)
    count = b("sum", mask, axes=axes, keepdims=True)
    share = b("div", _reshape(b, g, count.shape), count)
    share = share if share.shape == x.shape else b("broadcast", share, shape=list(x.shape))
    return [b("mul", share, mask)]


@vjp("cumsum")
def _cumsum(b, op, g):
    """Each input element feeds every later partial sum, so its cotangent is the sum of g over
    those: a cumsum of g in the opposite direction (jax.lax.cumsum's transpose)."""
    return [b("cumsum", g, axis=op.attrs["axis"], reverse=not op.attrs["reverse"])]


@vjp("sort")
def _sort(b, op, g):
    """Sorting permutes: value j came from position perm[j], so position i gets g at inv[i], where
    inv = argsort(perm) is the inverse permutation (perm is i64; as i32 it sorts as a packed key).
    Two sorts and a gather, O(n log n), deterministic on every backend (a scatter-add of g at perm,
    `index_add`, is atomics on Triton). (The forward's argsort, when the program also took the
    indices, is CSE'd.)"""
    x = op.operands[0]
    rank = x.type.rank
    ax = op.attrs["axis"] % rank
    perm = b("argsort", x, axis=op.attrs["axis"], descending=op.attrs["descending"])
    inv = b("argsort", b("cast", perm, dtype="i32"), axis=op.attrs["axis"])
    return [take_along_axis(b, g, inv, ax)]


def take_along_axis(b: Builder, x: Value, idx: Value, ax: int) -> Value:
    """numpy.take_along_axis(x, idx, ax) for an i64 `idx` of x's shape: one `take` of the flattened
    `x` at flat offsets idx * stride(ax) + the other dims' iotas times their strides."""
    shape = list(x.shape)
    strides = [math.prod(shape[k + 1:]) for k in range(len(shape))]

    def scaled(v: Value, s: int) -> Value:
        return v if s == 1 else b("mul", v, b.constant(s, shape, "i64"))

    flat = scaled(idx, strides[ax])
    for k, n in enumerate(shape):
        if k != ax and n > 1:
            flat = b("add", flat, scaled(b("iota", shape=shape, axis=k, dtype="i64"), strides[k]))
    return b("take", _reshape(b, x, [math.prod(shape)]), flat, axis=0)


@vjp("reshape")
def _reshape_rule(b, op, g):
    return [_reshape(b, g, op.operands[0].shape)]


@vjp("transpose")
def _transpose(b, op, g):
    perm = op.attrs["perm"]
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return [b("transpose", g, perm=inv)]


@vjp("slice")
def _slice(b, op, g):
    """Scatter back into zeros: a strided dim is first spread out (one new axis padded to the step,
    then merged), then every dim is padded back to the operand's extent."""
    x = op.operands[0]
    start, limit = op.attrs["start"], op.attrs["limit"]
    step = op.attrs["step"] or [1] * x.type.rank
    cur = g
    for d, st in enumerate(step):
        if st == 1:
            continue
        shape = list(cur.shape)
        m = shape[d]
        cur = _reshape(b, cur, shape[: d + 1] + [1] + shape[d + 1:])
        high = [0] * (len(shape) + 1)
        high[d + 1] = st - 1
        cur = b("pad", cur, low=[0] * len(high), high=high)
        cur = _reshape(b, cur, shape[:d] + [m * st] + shape[d + 1:])
        n = limit[d] - start[d]
        if m * st != n:
            lim = list(cur.shape)
            lim[d] = n
            cur = b("slice", cur, start=[0] * len(lim), limit=lim)
    high = [s - lim for s, lim in zip(x.shape, limit)]
    if any(start) or any(high):
        cur = b("pad", cur, low=list(start), high=high)
    return [cur]


@vjp("concat")
def _concat(b, op, g):
    ax = op.attrs["axis"] % g.type.rank
    outs, off = [], 0
    for v in op.operands:
        start = [0] * g.type.rank
        limit = list(g.shape)
        start[ax], limit[ax] = off, off + v.shape[ax]
        off += v.shape[ax]
        outs.append(g if v.shape == g.shape else b("slice", g, start=start, limit=limit))
    return outs


@vjp("pad")
def _pad(b, op, g):
    x = op.operands[0]
    low = op.attrs["low"]
    if not any(low) and not any(op.attrs["high"]):
        return [g]
    return [b("slice", g, start=list(low), limit=[lo + s for lo, s in zip(low, x.shape)])]


# -- contractions, pooling, gather -------------------------------------------------------------

@vjp("matmul")
def _matmul(b, op, g):
    x, y = op.operands
    return [b("matmul", g, _transpose_last2(b, y)), b("matmul", _transpose_last2(b, x), g)]


def _conv_attrs(op: Op) -> dict:
    return {k: op.attrs[k] for k in ("stride", "padding", "dilation", "groups")}


@vjp("conv2d")
def _conv2d(b, op, g):
    x, w = op.operands
    a = _conv_attrs(op)
    return [b("conv2d_grad_input", g, w, input_shape=list(x.shape), **a),
            b("conv2d_grad_weight", x, g, weight_shape=list(w.shape), **a)]


@vjp("conv2d_grad_input")
def _conv2d_grad_input(b, op, g):
    """dx = conv2d_grad_input(dy, w) is bilinear; its partners are conv2d itself (for dy) and
    conv2d_grad_weight with g playing the input (for w)."""
    dy, w = op.operands
    a = _conv_attrs(op)
    return [b("conv2d", g, w, **a), b("conv2d_grad_weight", g, dy, weight_shape=list(w.shape), **a)]


@vjp("conv2d_grad_weight")
def _conv2d_grad_weight(b, op, g):
    """dw = conv2d_grad_weight(x, dy) is bilinear; g plays the weight."""
    x, dy = op.operands
    a = _conv_attrs(op)
    return [b("conv2d_grad_input", dy, g, input_shape=list(x.shape), **a), b("conv2d", x, g, **a)]


def _pool_attrs(op: Op) -> dict:
    return {k: op.attrs[k] for k in ("kernel", "stride", "padding")}


@vjp("max_pool2d")
def _max_pool2d(b, op, g):
    return [b("max_pool2d_grad", op.operands[0], g, **_pool_attrs(op))]


@vjp("max_pool2d_grad")
def _max_pool2d_grad(b, op, g):
    """dx = max_pool2d_grad(x, dy) is linear in dy (x only picks where each window's gradient
    goes, so its own gradient is zero). The adjoint reads g at each window's first maximum:
    one strided slice per kernel tap, kept where that tap is the window's first maximum.
    Two edge cases differ from the forward rule: a window whose maximum is nan passes nothing back,
    and in a window whose real entries are all -inf a padding tap can count as the maximum."""
    x, dy = op.operands
    a = _pool_attrs(op)
    (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
    n, c, _, _ = x.shape
    oh, ow = dy.shape[2:]
    pads = {"low": [0, 0, ph, pw], "high": [0, 0, ph, pw]}
    xp = b("pad", x, value=-math.inf, **pads) if ph or pw else x
    gp = b("pad", g, **pads) if ph or pw else g
    m = b("max_pool2d", x, **a)
    zero = full_like(b, 0.0, dy)
    step = [] if (sh, sw) == (1, 1) else [1, 1, sh, sw]
    taken = out = None
    for i in range(kh):
        for j in range(kw):
            win = {"start": [0, 0, i, j], "limit": [n, c, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1], "step": step}
            hit = b("eq", b("slice", xp, **win), m)
            first = hit if taken is None else b("logical_and", hit, b("logical_not", taken))
            taken = hit if taken is None else b("logical_or", taken, hit)
            term = b("where", first, b("slice", gp, **win), zero)
            out = term if out is None else b("add", out, term)
    return [None, out]


@vjp("avg_pool2d")
def _avg_pool2d(b, op, g):
    x = op.operands[0]
    return [b("avg_pool2d_grad", g, input_shape=list(x.shape), count_include_pad=op.attrs["count_include_pad"],
              **_pool_attrs(op))]


@vjp("avg_pool2d_grad")
def _avg_pool2d_grad(b, op, g):
    """avg_pool2d_grad is linear and its adjoint is avg_pool2d with the same windows and divisors."""
    return [b("avg_pool2d", g, count_include_pad=op.attrs["count_include_pad"], **_pool_attrs(op))]


@vjp("take")
def _take(b, op, g):
    """A scatter-add: dx[k] = sum over lookups m with idx[m] == k of g[m], one `index_add` of the
    cotangent arranged as (lookups, rest): M*D adds, where a one-hot matmul took 2*K*M*D flops and
    an (M, K) one-hot."""
    x, idx = op.operands
    ax = op.attrs["axis"] % x.type.rank
    pre, post = list(x.shape[:ax]), list(x.shape[ax + 1:])
    k, m = x.shape[ax], math.prod(idx.shape)
    p, q = math.prod(pre), math.prod(post)
    g3 = _reshape(b, g, [p, m, q])
    gm = _reshape(b, g3 if p == 1 else b("transpose", g3, perm=[1, 0, 2]), [m, p * q])
    dx = b("index_add", gm, _reshape(b, idx, [m]), size=k)  # (K, P*Q)
    if p != 1:
        dx = b("transpose", _reshape(b, dx, [k, p, q]), perm=[1, 0, 2])
    return [_reshape(b, dx, pre + [k] + post), None]


@vjp("index_add")
def _index_add(b, op, g):
    """Linear in the values, whose adjoint is the gather of the cotangent's rows at the indices."""
    return [b("take", g, op.operands[1], axis=0), None]


@vjp("index_max")
def _index_max(b, op, g):
    """Like torch's scatter_reduce amax: each row's gradient is divided evenly among the value rows
    that tie for its maximum: tie = (values == out[idx]), count = index_add(tie), g[idx] / count[idx]
    where tied. M*D work (take, index_add), no (M, size) mask."""
    vals, idx = op.operands
    at = b("take", op.result, idx, axis=0)  # each value row's target maximum
    tie = b("cast", b("eq", vals, at), dtype=vals.dtype)
    count = b("index_add", tie, idx, size=op.attrs["size"])
    share = b("div", g, b("maximum", count, full_like(b, 1.0, count)))  # (a row no tie reaches: a nan max)
    return [b("mul", b("take", share, idx, axis=0), tie), None]


@vjp("all_reduce")
def _all_reduce(b, op, g):
    """Every process's result depends on every process's operand (d mean/dx_r = 1/n, d sum/dx_r = 1),
    so the total loss's cotangent for x on one process gathers all processes' cotangents the same
    way: an all_reduce of g with the same reduction and group (the identity on one process)."""
    return [b("all_reduce", g, reduction=op.attrs["reduction"], group=op.attrs["group"])]


@vjp("all_gather")
def _all_gather(b, op, g):
    """Process r's operand is rows [r*n, (r+1)*n) of every process's result, so its cotangent is the
    sum over processes of that slice of their cotangents: an all_reduce (sum) of g, then this rank's
    slice (torch.distributed.nn's all_gather backward, a reduce-scatter). The rank is read from the
    process group now: the gradient graph is this process's. One process: g itself."""
    n = op.attrs["world_size"]
    if n == 1:
        return [g]
    from avalon.ir.reference.collective import collective
    hook = collective()
    if hook is None or hook.world_size(op.attrs["group"]) != n:
        raise RuntimeError(f"the gradient of an all_gather traced over {n} processes needs that process group "
                           "(avalon.distributed.init())")
    r, rows = hook.rank(op.attrs["group"]), op.operands[0].shape[0]
    total = b("all_reduce", g, reduction="sum", group=op.attrs["group"])
    shape = list(g.type.shape)
    return [b("slice", total, start=[r * rows] + [0] * (len(shape) - 1), limit=[(r + 1) * rows] + shape[1:],
              step=[1] * len(shape))]
