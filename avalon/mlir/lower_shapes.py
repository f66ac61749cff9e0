"""Linalg lowerings of reductions (sum, max, argmax), the scan (cumsum) and the shape ops."""
from __future__ import annotations

import numpy as np

from avalon.ir import Op, TensorType
from avalon.ir import dtypes as dt

from .emitter import LinalgEmitter, V, amap, identity
from .linalg import rule
from .scalar import unsigned


def lowest(d) -> float | int | bool:
    """The identity of max: -inf, the smallest integer, or false."""
    if d.is_float:
        return float("-inf")
    if d == dt.bool_:
        return False
    return int(np.iinfo(d.np).min)


def _axes(op: Op, rank: int) -> list[int]:
    axes = op.attrs["axes"] if "axes" in op.attrs else [op.attrs["axis"]]
    return sorted({a % rank for a in axes}) if rank else []


def _reduce(e: LinalgEmitter, x: V, axes: list[int], inits: list, body, out_dtypes: list) -> list[V]:
    """A `linalg.generic` reducing `x` over `axes` into accumulators filled with `inits`."""
    r = x.t.rank
    kept = [d for d in range(r) if d not in axes]
    shape = tuple(x.t.shape[d] for d in kept)
    outs = [(e.full(TensorType(shape, d), v), amap(r, [f"d{k}" for k in kept])) for v, d in zip(inits, out_dtypes)]
    its = ["reduction" if d in axes else "parallel" for d in range(r)]
    return e.generic([(x, identity(r))], outs, its, body)


@rule("sum", "max")
def _sum_max(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    x, out = args[0], types[0]
    axes = _axes(op, x.t.rank)
    if not axes:
        return [e.reshape(x, out.shape)]
    d = x.d
    if op.name == "sum":
        init, combine = (False, "arith.ori") if d == dt.bool_ else (0, "arith.addf" if d.is_float else "arith.addi")
    else:
        init = lowest(d)
        combine = "arith.ori" if d == dt.bool_ else "arith.maximumf" if d.is_float else unsigned("arith.maxsi", d)
    def body(b: LinalgEmitter, a: list[V]) -> list[V]:
        return [b.arith(combine, a[1], a[0])]
    if op.name == "sum" and d != dt.bool_ and len(axes) > 1:
        # IREE fuses a broadcasting mul into the sum and takes it for a contraction; over several
        # reduction dims that fails to compile ("'vector.contract' op invalid accumulator/result
        # vector shape", e.g. (a[3,4] * b[4]).sum()). The innermost axis alone first leaves one
        # reduction dim for the fused contraction; the rest reduce a materialized tensor.
        x = _reduce(e, x, axes[-1:], [init], body, [d])[0]
        axes = axes[:-1]
    y = _reduce(e, x, axes, [init], body, [d])[0]
    return [e.reshape(y, out.shape)]


@rule("argmax")
def _argmax(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    """The first maximum (a strict > keeps the earlier index; the first nan wins over numbers)."""
    x, out = args[0], types[0]
    if x.t.rank == 0:
        return [e.full(out, 0)]
    ax = op.attrs["axis"] % x.t.rank
    d = x.d

    def body(b: LinalgEmitter, a: list[V]) -> list[V]:
        v, best, idx = a
        if d.is_float:
            take = b.arith("arith.ori", b.cmp("cmpf", "ogt", v, best),
                           b.arith("arith.andi", b.cmp("cmpf", "uno", v, v), b.cmp("cmpf", "ord", best, best)))
        else:
            take = b.cmp("cmpi", "ugt" if d.is_unsigned else "sgt", v, best)
        i = b.convert("arith.index_cast", b.index(ax), dt.int64)
        return [b.select(take, v, best), b.select(take, i, idx)]
    y = _reduce(e, x, [ax], [lowest(d), 0], body, [d, dt.int64])[1]
    return [e.reshape(y, out.shape)]


@rule("cumsum")
def _cumsum(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    """out[..., i, ...] = sum over j <= i (j >= i when reversed) of x[..., j, ...]: a masked
    reduction over a second copy of the axis. O(n^2) in the axis length, since upstream linalg has
    no scan op (IREE's iree_linalg_ext.scan is not upstream)."""
    x = args[0]
    r = x.t.rank
    if r == 0:
        return [x]
    ax = op.attrs["axis"] % r
    src = [f"d{r}" if k == ax else f"d{k}" for k in range(r)]
    add = "arith.addf" if x.d.is_float else "arith.addi"

    def body(b: LinalgEmitter, a: list[V]) -> list[V]:
        i, j = b.index(ax), b.index(r)
        mask = b.cmp("cmpi", "uge" if op.attrs["reverse"] else "ule", j, i)
        return [b.arith(add, a[1], b.select(mask, a[0], b.const(0, x.d)))]
    out = e.full(types[0], 0)
    return e.generic([(x, amap(r + 1, src))], [(out, amap(r + 1, [f"d{k}" for k in range(r)]))],
                     ["parallel"] * r + ["reduction"], body)


@rule("reshape")
def _reshape(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    return [e.reshape(args[0], types[0].shape)]


@rule("transpose")
def _transpose(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    return [e.transpose(args[0], op.attrs["perm"])]


@rule("slice")
def _slice(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    x = args[0]
    step = op.attrs["step"] or [1] * x.t.rank
    return [e.slice(x, op.attrs["start"], types[0].shape, step)]


@rule("concat")
def _concat(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    out = e.empty(types[0])
    ax = op.attrs["axis"] % types[0].rank
    at = 0
    for x in args:
        off = [at if k == ax else 0 for k in range(x.t.rank)]
        out = e.insert(x, out, off, [1] * x.t.rank)
        at += x.t.shape[ax]
    return [out]


@rule("pad")
def _pad(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    x = args[0]
    with np.errstate(all="ignore"):
        fill = np.asarray(op.attrs["value"]).astype(x.d.np).item()
    return [e.pad(x, op.attrs["low"], op.attrs["high"], fill)]

