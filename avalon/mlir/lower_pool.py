"""Linalg lowerings of pooling (linalg.pooling_nchw_max / _sum on padded inputs) and its gradients.

avg_pool2d_grad is a transposed sum pool: dy / divisor spread out by the stride, padded, summed
over a window at stride 1. max_pool2d_grad first finds each window's first maximum (a reduction
keeping a value and a tap index, padding never chosen), then each input element gathers, per tap
of the windows that can read it, dy where that tap was the winner (tensor.extract in the body).
"""
from __future__ import annotations

import numpy as np

from avalon.ir import Op, TensorType
from avalon.ir import dtypes as dt

from .emitter import LinalgEmitter, V, amap, identity, ty
from .linalg import rule
from .lower_contraction import spread
from .lower_shapes import lowest
from .scalar import unsigned


def _pool(e: LinalgEmitter, kind: str, x: V, kernel, strides, out: TensorType, init) -> V:
    win = e.empty(TensorType(tuple(kernel), x.d))
    f = e.full(out, init)
    attrs = (f"{{dilations = dense<1> : tensor<2xi64>, strides = dense<[{strides[0]}, {strides[1]}]> : "
             f"tensor<2xi64>}}")
    return e.op(f"linalg.pooling_nchw_{kind} {attrs} ins({x.name}, {win.name} : {ty(x.t)}, {ty(win.t)}) "
                f"outs({f.name} : {ty(out)}) -> {ty(out)}", out)


@rule("max_pool2d")
def _max_pool2d(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    from .linalg import convert
    x = args[0]
    out = types[0]
    if x.d in (dt.uint8, dt.bool_):
        # linalg.pooling_nchw_max compares signed (arith.maxsi: uint8 200 < 100, i1 true < false) and
        # upstream has no unsigned NCHW variant: pool the values zero-extended to i32, then narrow back
        x, out = convert(e, x, dt.int32), out.with_dtype(dt.int32)
    ph, pw = op.attrs["padding"]
    xp = e.pad(x, [0, 0, ph, pw], [0, 0, ph, pw], lowest(x.d))
    y = _pool(e, "max", xp, op.attrs["kernel"], op.attrs["stride"], out, lowest(x.d))
    return [convert(e, y, types[0].dtype)]


def divisor(attrs: dict, hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Per output position, what avg_pool2d divides by (as the reference computes it)."""
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    if attrs["count_include_pad"]:
        return np.full(out_hw, float(kh * kw))
    rows = [min(p * sh - ph + kh, hw[0]) - max(p * sh - ph, 0) for p in range(out_hw[0])]
    cols = [min(q * sw - pw + kw, hw[1]) - max(q * sw - pw, 0) for q in range(out_hw[1])]
    return np.outer(rows, cols).astype(np.float64)


def _divide(e: LinalgEmitter, x: V, div: np.ndarray) -> V:
    """x (N, C, OH, OW) / div (OH, OW), in x's float type."""
    dv = e.constant(div.astype(x.d.np), TensorType(div.shape, x.d))
    return e.map([x, dv], x.t, lambda b, a: b.arith("arith.divf", a[0], a[1]),
                 maps=[identity(4), amap(4, ["d2", "d3"])])


@rule("avg_pool2d")
def _avg_pool2d(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    """Integers average in f64 and truncate toward zero, like the reference."""
    from .linalg import convert
    x = args[0]
    out = types[0]
    acc = x.d if x.d.is_float else dt.float64
    xf = convert(e, x, acc)
    ph, pw = op.attrs["padding"]
    xp = e.pad(xf, [0, 0, ph, pw], [0, 0, ph, pw], 0.0)
    s = _pool(e, "sum", xp, op.attrs["kernel"], op.attrs["stride"], out.with_dtype(acc), 0.0)
    y = _divide(e, s, divisor(op.attrs, x.t.shape[2:], out.shape[2:]))
    return [convert(e, y, out.dtype)]


@rule("avg_pool2d_grad")
def _avg_pool2d_grad(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    from .linalg import convert
    dy = args[0]
    out = types[0]
    acc = dy.d if dy.d.is_float else dt.float64
    n, c, h, w = op.attrs["input_shape"]
    (kh, kw), (sh, sw), (ph, pw) = op.attrs["kernel"], op.attrs["stride"], op.attrs["padding"]
    oh, ow = dy.t.shape[2:]
    share = _divide(e, convert(e, dy, acc), divisor(op.attrs, (h, w), (oh, ow)))
    low = (kh - 1 - ph, kw - 1 - pw)
    extra = (h + 2 * ph - kh - (oh - 1) * sh, w + 2 * pw - kw - (ow - 1) * sw)
    d = e.pad(spread(e, share, (sh, sw)), [0, 0, *low], [0, 0, low[0] + extra[0], low[1] + extra[1]], 0.0)
    y = _pool(e, "sum", d, (kh, kw), (1, 1), out.with_dtype(acc), 0.0)
    return [convert(e, y, out.dtype)]


def _in_range(b: LinalgEmitter, v: V, lo: V, hi: V) -> V:
    return b.arith("arith.andi", b.cmp("cmpi", "sge", v, lo), b.cmp("cmpi", "slt", v, hi))


@rule("max_pool2d_grad")
def _max_pool2d_grad(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    x, dy = args
    (kh, kw), (sh, sw), (ph, pw) = op.attrs["kernel"], op.attrs["stride"], op.attrs["padding"]
    n, c, h, w = x.t.shape
    oh, ow = dy.t.shape[2:]
    xp = e.pad(x, [0, 0, ph, pw], [0, 0, ph, pw], lowest(x.d))

    def winner(b: LinalgEmitter, a: list[V]) -> list[V]:
        v, _, best, idx = a
        k = {name: b.index_const(val) for name, val in (("sh", sh), ("sw", sw), ("ph", ph), ("pw", pw),
                                                         ("h", h), ("w", w), ("zero", 0))}
        def at(p: int, t: int, s: str, pad: str) -> V:  # window p's tap t as an input row/column
            return b.arith("arith.subi", b.arith("arith.addi", b.arith("arith.muli", b.index(p), k[s]), b.index(t)),
                           k[pad])
        hh, ww = at(2, 4, "sh", "ph"), at(3, 5, "sw", "pw")
        valid = b.arith("arith.andi", _in_range(b, hh, k["zero"], k["h"]), _in_range(b, ww, k["zero"], k["w"]))
        if x.d.is_float:
            better = b.arith("arith.ori", b.cmp("cmpf", "ogt", v, best),
                             b.arith("arith.andi", b.cmp("cmpf", "uno", v, v), b.cmp("cmpf", "ord", best, best)))
        else:
            better = b.cmp("cmpi", unsigned("sgt", x.d), v, best)
        none = b.const(-1, dt.int32)
        take = b.arith("arith.andi", valid, b.arith("arith.ori", b.cmp("cmpi", "eq", idx, none), better))
        tap = b.arith("arith.addi", b.arith("arith.muli", b.index(4), b.index_const(kw)), b.index(5))
        tap = b.convert("arith.index_cast", tap, dt.int32)
        return [b.select(take, v, best), b.select(take, tap, idx)]

    pooled = TensorType((n, c, oh, ow), x.d)
    outs = [(e.full(pooled, lowest(x.d)), amap(6, ["d0", "d1", "d2", "d3"])),
            (e.full(pooled.with_dtype(dt.int32), -1), amap(6, ["d0", "d1", "d2", "d3"]))]
    xmap = amap(6, ["d0", "d1", f"d2 * {sh} + d4", f"d3 * {sw} + d5"])
    taps = e.empty(TensorType((kh, kw), dt.int32))  # only gives the tap loops their extent
    idx = e.generic([(xp, xmap), (taps, amap(6, ["d4", "d5"]))], outs, ["parallel"] * 4 + ["reduction"] * 2, winner)[1]

    def gather(b: LinalgEmitter, a: list[V]) -> list[V]:
        acc = a[1]
        zero = b.index_const(0)
        coords = []
        ok = None
        for dim, tapdim, s, p, o in ((2, 4, sh, ph, oh), (3, 5, sw, pw, ow)):
            t = b.arith("arith.subi", b.arith("arith.addi", b.index(dim), b.index_const(p)), b.index(tapdim))
            tc = b.select(b.cmp("cmpi", "sge", t, zero), t, zero)
            on_grid = b.cmp("cmpi", "eq", b.arith("arith.remsi", tc, b.index_const(s)), zero)
            good = b.arith("arith.andi", b.cmp("cmpi", "sge", t, zero),
                           b.arith("arith.andi", on_grid, b.cmp("cmpi", "slt", tc, b.index_const(s * o))))
            coords.append(b.select(good, b.arith("arith.divsi", tc, b.index_const(s)), zero))
            ok = good if ok is None else b.arith("arith.andi", ok, good)
        at = f"[{b.index(0).name}, {b.index(1).name}, {coords[0].name}, {coords[1].name}]"
        g = b.op(f"tensor.extract {dy.name}{at} : {ty(dy.t)}", dy.d)
        won = b.op(f"tensor.extract {idx.name}{at} : {ty(idx.t)}", dt.int32)
        tap = b.arith("arith.addi", b.arith("arith.muli", b.index(4), b.index_const(kw)), b.index(5))
        hit = b.arith("arith.andi", ok, b.cmp("cmpi", "eq", won, b.convert("arith.index_cast", tap, dt.int32)))
        add = "arith.addf" if dy.d.is_float else "arith.addi"
        return [b.arith(add, acc, b.select(hit, g, b.const(0, dy.d)))]

    dx = e.full(types[0], 0)
    return e.generic([(taps, amap(6, ["d4", "d5"]))], [(dx, amap(6, ["d0", "d1", "d2", "d3"]))],
                     ["parallel"] * 4 + ["reduction"] * 2, gather)

