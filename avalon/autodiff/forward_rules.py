"""Jacobian-vector products, one rule per differentiable primitive (JAX's `primitive_jvps` table,
keyed by op name like every other rule table).

A rule is `rule(b, op, tangents) -> [tangent or None per result]`: `b` is a Builder positioned right
after the forward op, `op` is that op (its operands and results are live values the rule may read),
and `tangents[i]` is the tangent of operand `i`, of exactly its type, or None where the operand has
none (it does not depend on the inputs being differentiated: a zero tangent, never built). At least
one tangent is not None. The rule returns one tangent per result, of exactly its type, or None.

Where the derivative is undefined at a point, the rules follow the VJP rules' torch conventions
(`rules.py`), so that every rule here is the transpose of its VJP rule (`tests/test_forward_ad.py`
checks `<J t, u> = <t, J^T u>` op by op): `relu'(0) = 0`; `abs'(0) = 0`; `maximum`/`minimum` give
half of each operand's tangent on ties; `max` averages the tangents of all maxima of a slice;
`max_pool2d` takes each window's first maximum's; `pow`'s masks (d/dx = 0 where y == 0, d/dy = 0
where x == 0 and y >= 0). Ops linear in an operand (movement, sums, pooling, gathers, scatters)
apply themselves to its tangent; bilinear ones (matmul, the convolutions and their gradients) take
the product rule.

A user who defines an op with `avalon.ir.define_op` adds `JVP["my_op"] = rule` (or lists it in
`NON_DIFFERENTIABLE`, shared with the VJP table). JVP is registered with the op registry as the
table "jvp".
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import SimpleNamespace

from avalon.ir import Builder, Op, Value
from avalon.ir.registry import register_table

from .rules import NON_DIFFERENTIABLE, VJP, full_like, take_along_axis

JvpFn = Callable[[Builder, Op, list["Value | None"]], Sequence["Value | None"]]
"""A JVP rule: `fn(b, op, tangents) -> [tangent or None per result]`."""

JVP: dict[str, JvpFn] = register_table("jvp", {}, exempt=NON_DIFFERENTIABLE, exempt_traits=("region",))
"""op name -> JVP rule. The exemptions are the VJP table's (no derivative flows through those ops:
their results' tangents are zero); region ops are inlined by the transform."""


def jvp(*names: str) -> Callable[[JvpFn], JvpFn]:
    def deco(fn: JvpFn) -> JvpFn:
        for n in names:
            JVP[n] = fn
        return fn
    return deco


def _zero(b: Builder, like: Value) -> Value:
    return full_like(b, 0.0, like)


def _add_all(b: Builder, terms: list[Value | None]) -> Value | None:
    """The sum of the terms that are not None (None when all are)."""
    out = None
    for t in terms:
        if t is not None:
            out = t if out is None else b("add", out, t)
    return out


def _scaled(b: Builder, t: Value | None, slope: Value) -> Value | None:
    return None if t is None else b("mul", t, slope)


# -- linear ops: the op itself, applied to the tangent -------------------------------------------

def _linear_in(*positions: int, zero_attrs: dict | None = None) -> JvpFn:
    """An op linear in the operands at `positions` (together) and constant in the others (indices,
    a max-pool's selecting input): its tangent is the op with each of those operands replaced by
    its tangent (zeros where None), the others kept."""
    def rule(b, op, ts):
        if all(ts[i] is None for i in positions):
            return [None] * len(op.results)
        args = list(op.operands)
        for i in positions:
            args[i] = ts[i] if ts[i] is not None else _zero(b, op.operands[i])
        return b.op(op.name, *args, **{**op.attrs, **(zero_attrs or {})}).results
    return rule


for _name in ("neg", "broadcast", "sum", "cumsum", "reshape", "transpose", "slice", "avg_pool2d",
              "avg_pool2d_grad", "all_reduce", "all_gather"):
    JVP[_name] = _linear_in(0)
JVP["take"] = _linear_in(0)  # (x[idx]: the same lookup of the tangent)
JVP["index_add"] = _linear_in(0)  # (the same scatter-add of the values' tangents)
JVP["max_pool2d_grad"] = _linear_in(1)  # (x only picks where each window's gradient goes)
JVP["pad"] = _linear_in(0, zero_attrs={"value": 0.0})  # (the padding is constant: its tangent is 0)


@jvp("add")
def _add(b, op, ts):
    return [_add_all(b, ts)]


@jvp("sub")
def _sub(b, op, ts):
    tx, ty = ts
    if ty is None:
        return [tx]
    return [b("neg", ty) if tx is None else b("sub", tx, ty)]


@jvp("concat")
def _concat(b, op, ts):
    return _linear_in(*range(len(op.operands)))(b, op, ts)


@jvp("cast")
def _cast(b, op, ts):
    """Float to float: the tangent cast alike; to an integer type there is none."""
    if not op.result.dtype.is_float:
        return [None]
    return [b("cast", ts[0], dtype=op.result.dtype)]


@jvp("check")
def _check(b, op, ts):
    """An identity on its value: the tangent passes the same check (see the VJP rule: a tangent-only
    graph may not need the checked primal)."""
    return [None if ts[0] is None else b("check", ts[0], op.operands[1], **op.attrs)]


@jvp("where")
def _where(b, op, ts):
    c, x, y = op.operands
    if ts[1] is None and ts[2] is None:
        return [None]
    tx = ts[1] if ts[1] is not None else _zero(b, x)
    ty = ts[2] if ts[2] is not None else _zero(b, y)
    return [b("where", c, tx, ty)]


# -- bilinear ops: the product rule ---------------------------------------------------------------

@jvp("mul", "matmul", "conv2d", "conv2d_grad_input", "conv2d_grad_weight")
def _bilinear(b, op, ts):
    """d(x . y) = dx . y + x . dy for any product `.` (the op itself, with its attributes)."""
    x, y = op.operands
    tx, ty = ts
    return [_add_all(b, [None if tx is None else b(op.name, tx, y, **op.attrs),
                         None if ty is None else b(op.name, x, ty, **op.attrs)])]


@jvp("div")
def _div(b, op, ts):
    """d(x/y) = (dx - (x/y) dy) / y."""
    y = op.operands[1]
    tx, ty = ts
    if ty is None:
        num = tx
    else:
        r_ty = b("mul", op.result, ty)
        num = b("neg", r_ty) if tx is None else b("sub", tx, r_ty)
    return [b("div", num, y)]


@jvp("pow")
def _pow(b, op, ts):
    """torch's masks, as in the VJP rule: d/dx = 0 where y == 0, d/dy = 0 where x == 0 and y >= 0."""
    x, y = op.operands
    tx, ty = ts
    zero = _zero(b, x)
    terms: list[Value | None] = [None, None]
    if tx is not None:
        dx = b("mul", y, b("pow", x, b("sub", y, full_like(b, 1.0, y))))
        terms[0] = b("where", b("eq", y, zero), zero, b("mul", tx, dx))
    if ty is not None:
        dy = b("mul", op.result, b("log", x))
        terms[1] = b("where", b("logical_and", b("eq", x, zero), b("ge", y, zero)), zero, b("mul", ty, dy))
    return [_add_all(b, terms)]


def _minmax(loses: str) -> JvpFn:
    """The transpose of torch's maximum/minimum backward: on a tie each operand contributes half
    its tangent; otherwise the winner's passes (a nan operand, neither winning nor tying, passes
    both, as the VJP rule does). `loses` compares an operand to the other: "lt" for maximum."""
    def rule(b, op, ts):
        x, y = op.operands
        tie = b("eq", x, y)
        terms = []
        for t, (a, other) in zip(ts, ((x, y), (y, x))):
            if t is None:
                continue
            zero = _zero(b, t)
            half = b("mul", t, full_like(b, 0.5, t))
            terms.append(b("where", tie, half, b("where", b(loses, a, other), zero, t)))
        return [_add_all(b, terms)]
    return rule


JVP["maximum"] = _minmax("lt")
JVP["minimum"] = _minmax("gt")


# -- elementwise functions: the tangent times the slope ------------------------------------------

@jvp("abs")
def _abs(b, op, ts):
    return [_scaled(b, ts[0], b("sign", op.operands[0]))]


@jvp("relu")
def _relu(b, op, ts):
    """Slope 0 at 0 and for nan, like torch's threshold_backward."""
    x, t = op.operands[0], ts[0]
    return [b("where", b("gt", x, _zero(b, x)), t, _zero(b, t))]


@jvp("exp")
def _exp(b, op, ts):
    return [_scaled(b, ts[0], op.result)]


@jvp("log")
def _log(b, op, ts):
    return [b("div", ts[0], op.operands[0])]


@jvp("sin")
def _sin(b, op, ts):
    return [_scaled(b, ts[0], b("cos", op.operands[0]))]


@jvp("cos")
def _cos(b, op, ts):
    return [b("neg", b("mul", ts[0], b("sin", op.operands[0])))]


@jvp("tanh")
def _tanh(b, op, ts):
    y = op.result
    return [_scaled(b, ts[0], b("sub", full_like(b, 1.0, y), b("mul", y, y)))]


@jvp("sigmoid")
def _sigmoid(b, op, ts):
    y = op.result
    return [_scaled(b, ts[0], b("mul", y, b("sub", full_like(b, 1.0, y), y)))]


@jvp("sqrt")
def _sqrt(b, op, ts):
    y = op.result
    return [b("div", ts[0], b("mul", y, full_like(b, 2.0, y)))]


@jvp("rsqrt")
def _rsqrt(b, op, ts):
    """d x^-1/2 = -1/2 x^-3/2 = -1/2 y^3."""
    y = op.result
    return [_scaled(b, ts[0], b("mul", full_like(b, -0.5, y), b("mul", b("mul", y, y), y)))]


@jvp("erf")
def _erf(b, op, ts):
    x = op.operands[0]
    slope = b("mul", b("exp", b("neg", b("mul", x, x))), full_like(b, 2.0 / math.sqrt(math.pi), x))
    return [_scaled(b, ts[0], slope)]


# -- selections: the tangent of what was selected -----------------------------------------------

@jvp("max")
def _max(b, op, ts):
    """Like torch.amax: the mean of the tangents of all maxima of each reduced slice."""
    x, t = op.operands[0], ts[0]
    rank = x.type.rank
    axes = sorted(a % rank for a in op.attrs["axes"]) if rank else []
    keep = [1 if i in axes else s for i, s in enumerate(x.shape)]
    m = b("reshape", op.result, shape=keep) if tuple(op.result.shape) != tuple(keep) else op.result
    m = m if tuple(m.shape) == tuple(x.shape) else b("broadcast", m, shape=list(x.shape))
    mask = b("cast", b("eq", x, m), dtype=x.dtype)
    total = b("sum", b("mul", t, mask), axes=axes, keepdims=op.attrs["keepdims"])
    count = b("sum", mask, axes=axes, keepdims=op.attrs["keepdims"])
    return [b("div", total, count)]


@jvp("sort")
def _sort(b, op, ts):
    """Sorting permutes: value j came from position perm[j] (argsort with the same attributes), so
    its tangent is the operand's tangent there."""
    x = op.operands[0]
    perm = b("argsort", x, axis=op.attrs["axis"], descending=op.attrs["descending"])
    return [take_along_axis(b, ts[0], perm, op.attrs["axis"] % x.type.rank)]


@jvp("max_pool2d")
def _max_pool2d(b, op, ts):
    """Each window's first maximum's tangent: exactly what the VJP rule of `max_pool2d_grad` builds
    for its `dy` operand (the adjoint of "send each window's cotangent to its first maximum" reads
    a value of x's shape at each window's first maximum), so that rule is reused on a stand-in
    for `max_pool2d_grad(x, <a value of this op's result type>)`: it reads the operands and attrs."""
    stand_in = SimpleNamespace(operands=[op.operands[0], op.result], attrs=op.attrs)
    return [VJP["max_pool2d_grad"](b, stand_in, ts[0])[1]]


@jvp("index_max")
def _index_max(b, op, ts):
    """Like torch's scatter_reduce amax (and the VJP rule): each row's tangent is the mean of the
    tangents of the value rows that tie for its maximum."""
    vals, idx = op.operands
    size = op.attrs["size"]
    tie = b("cast", b("eq", vals, b("take", op.result, idx, axis=0)), dtype=vals.dtype)
    count = b("index_add", tie, idx, size=size)
    total = b("index_add", b("mul", ts[0], tie), idx, size=size)
    return [b("div", total, b("maximum", count, full_like(b, 1.0, count)))]  # (a row no value reaches: 0)
