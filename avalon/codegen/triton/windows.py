"""Pooling and its gradients as per-output-element loops over the (static) kernel window.

Each output element walks its window with `tl.static_range` loops (unrolled; windows are small),
reading the operand through `Emitter.value` so a producer in the same group (relu before max-pool)
fuses in. Gradients *gather*: each input element visits the windows that contain it and adds their
share, so no atomics are needed and results are deterministic. Semantics follow the numpy
reference: max-pool padding never wins and never receives gradient, the first maximum of a window
(row-major, nan counts as the maximum) gets the window's gradient.
"""
from __future__ import annotations

from avalon.ir import dtypes as dt
from avalon.ir.core import Op

from . import types as ty
from .emitter import Emitter, Val
from .indexing import Affine, Index, IndexVar


def _loop(em: Emitter, bound: int, prefix: str) -> IndexVar:
    name = em.fresh(prefix)
    em.open(f"for {name} in tl.static_range({bound}):")
    em.var_scope[name] = em.scope
    em.scalars.add(name)
    return IndexVar.base(name, bound)


def _close(em: Emitter, n: int) -> None:
    for _ in range(n):
        em.close()


def _acc(em: Emitter, init: str, d: dt.DType, prefix: str = "acc") -> Val:
    """A loop-carried accumulator in the current scope (updated in place by later lines)."""
    name = em.fresh(prefix)
    em.line(f"{name} = tl.full([1], {init}, {ty.tl_compute(d)})")
    return Val(name, d, em.scope)


def _result(em: Emitter, acc: Val, idx: Index, guard: Val | None) -> Val:
    deps = frozenset().union(*(a.deps for a in idx)) | (guard.deps if guard else frozenset())
    return Val(acc.expr, acc.dtype, em.scope, deps)


def _geometry(op: Op):
    (kh, kw), (sh, sw), (ph, pw) = op.attrs["kernel"], op.attrs["stride"], op.attrs["padding"]
    return kh, kw, sh, sw, ph, pw


def max_pool(em: Emitter, op: Op, idx: Index, guard: Val | None) -> Val:
    x = op.operands[0]
    kh, kw, sh, sw, ph, pw = _geometry(op)
    n, c, oh, ow = idx
    acc = _acc(em, ty.lowest(x.dtype), x.dtype)
    i, j = Affine.of(_loop(em, kh, "kh")), Affine.of(_loop(em, kw, "kw"))
    h, w = oh.scale(sh) + i - ph, ow.scale(sw) + j - pw
    inside = em.both(em.in_range(h, x.shape[2]), em.in_range(w, x.shape[3]))
    v = em.value(x, (n, c, h, w), em.both(guard, inside))
    if inside is not None:
        v = em.emit(f"tl.where({inside.expr}, {v.expr}, {ty.lowest(x.dtype)})", x.dtype, vals=(inside, v))
    nan = ", propagate_nan=tl.PropagateNan.ALL" if x.dtype.is_float else ""
    em.line(f"{acc.expr} = tl.maximum({acc.expr}, {v.expr}{nan})")
    _close(em, 2)
    return _result(em, acc, idx, guard)


def _avg_dtype(d: dt.DType) -> dt.DType:
    return d if d.is_float else dt.float64


def avg_pool(em: Emitter, op: Op, idx: Index, guard: Val | None) -> Val:
    x = op.operands[0]
    kh, kw, sh, sw, ph, pw = _geometry(op)
    n, c, oh, ow = idx
    ad = _avg_dtype(x.dtype)
    acc = _acc(em, "0", ad)
    count = None if op.attrs["count_include_pad"] or not (ph or pw) else _acc(em, "0", dt.float32)
    i, j = Affine.of(_loop(em, kh, "kh")), Affine.of(_loop(em, kw, "kw"))
    h, w = oh.scale(sh) + i - ph, ow.scale(sw) + j - pw
    inside = em.both(em.in_range(h, x.shape[2]), em.in_range(w, x.shape[3]))
    v = em.value(x, (n, c, h, w), em.both(guard, inside))
    v_expr = f"{v.expr}.to({ty.tl_compute(ad)})"
    if inside is not None:
        v_expr = f"tl.where({inside.expr}, {v_expr}, 0)"
    em.line(f"{acc.expr} = {acc.expr} + {v_expr}")
    if count is not None:
        em.line(f"{count.expr} = {count.expr} + {inside.expr if inside else '1'}.to(tl.float32)")
    _close(em, 2)
    div = count.expr if count is not None else str(kh * kw)
    out = em.emit(f"{acc.expr} / {div}", ad, vals=(_result(em, acc, idx, guard),))
    return em.convert(out, x.dtype) if x.dtype != ad else out


def _containing(em: Emitter, pos: Affine, pad: int, stride: int, k_var: Affine, out_size: int):
    """Window index whose tap `k_var` lands on input position `pos`, and the guard that it exists."""
    num = pos + pad - k_var
    if stride == 1:
        return num, em.in_range(num, out_size)
    s = em.affine(num)
    q = num.floordiv_mod(stride, None)
    ok = em.cond(f"({s} >= 0) & (({s}) % {stride} == 0) & (({s}) // {stride} < {out_size})", num.deps)
    return q, ok


def _window_argmax(em: Emitter, x, n: Affine, c: Affine, oh: Affine, ow: Affine, geo, guard: Val | None) -> Val:
    """The row-major tap index of the first maximum of window (oh, ow); padding never wins."""
    kh, kw, sh, sw, ph, pw = geo
    bv = _acc(em, ty.lowest(x.dtype), x.dtype, "bestv")
    bk = _acc(em, "-1", dt.int32, "bestk")
    best_v, best_k = bv.expr, bk.expr
    i, j = Affine.of(_loop(em, kh, "ih")), Affine.of(_loop(em, kw, "iw"))
    h, w = oh.scale(sh) + i - ph, ow.scale(sw) + j - pw
    inside = em.both(guard, em.both(em.in_range(h, x.shape[2]), em.in_range(w, x.shape[3])))
    v = em.value(x, (n, c, h, w), inside)
    better = f"({best_k} < 0) | ({v.expr} > {best_v})"
    if x.dtype.is_float:
        better += f" | (({v.expr} != {v.expr}) & ({best_v} == {best_v}))"
    upd = em.cond(f"({better})" + (f" & {inside.expr}" if inside is not None else ""),
                  vals=(v, bv, bk) + ((inside,) if inside else ()))
    em.line(f"{best_v} = tl.where({upd.expr}, {v.expr}, {best_v})")
    em.line(f"{best_k} = tl.where({upd.expr}, {em.affine(i.scale(kw) + j)}, {best_k})")
    _close(em, 2)
    return Val(best_k, dt.int32, em.scope, upd.deps)


def max_pool_grad(em: Emitter, op: Op, idx: Index, guard: Val | None) -> Val:
    x, dy = op.operands
    geo = _geometry(op)
    kh, kw, sh, sw, ph, pw = geo
    n, c, h, w = idx
    gd = _avg_dtype(dy.dtype)
    acc = _acc(em, "0", gd)
    if kh <= sh and kw <= sw:  # windows do not overlap: at most one contains (h, w)
        oh, ow = (h + ph).floordiv_mod(sh, None), (w + pw).floordiv_mod(sw, None)
        ti, tj = (h + ph).floordiv_mod(1, sh), (w + pw).floordiv_mod(1, sw)
        contain = em.cond(f"({em.affine(ti)} < {kh}) & ({em.affine(tj)} < {kw}) & ({em.affine(oh)} < {dy.shape[2]})"
                          f" & ({em.affine(ow)} < {dy.shape[3]})", oh.deps | ow.deps | ti.deps | tj.deps)
        tap, loops = ti.scale(kw) + tj, 0
    else:
        ti, tj = Affine.of(_loop(em, kh, "th")), Affine.of(_loop(em, kw, "tw"))
        oh, gh = _containing(em, h, ph, sh, ti, dy.shape[2])
        ow, gw = _containing(em, w, pw, sw, tj, dy.shape[3])
        contain = em.both(gh, gw)
        tap, loops = ti.scale(kw) + tj, 2
    contain = em.both(guard, contain)
    best = _window_argmax(em, x, n, c, oh, ow, geo, contain)
    hit = em.cond(f"({best.expr} == {em.affine(tap)})" + (f" & {contain.expr}" if contain is not None else ""),
                  tap.deps, (best,) + ((contain,) if contain else ()))
    g = em.value(dy, (n, c, oh, ow), hit)
    em.line(f"{acc.expr} = {acc.expr} + tl.where({hit.expr}, {g.expr}.to({ty.tl_compute(gd)}), 0)")
    _close(em, loops)
    return em.convert(_result(em, acc, idx, guard), dy.dtype)


def avg_pool_grad(em: Emitter, op: Op, idx: Index, guard: Val | None) -> Val:
    dy = op.operands[0]
    kh, kw, sh, sw, ph, pw = _geometry(op)
    _, _, H, W = op.attrs["input_shape"]
    n, c, h, w = idx
    gd = _avg_dtype(dy.dtype)
    acc = _acc(em, "0", gd)
    ti, tj = Affine.of(_loop(em, kh, "th")), Affine.of(_loop(em, kw, "tw"))
    oh, gh = _containing(em, h, ph, sh, ti, dy.shape[2])
    ow, gw = _containing(em, w, pw, sw, tj, dy.shape[3])
    contain = em.both(guard, em.both(gh, gw))
    g = em.value(dy, (n, c, oh, ow), contain)
    if op.attrs["count_include_pad"] or not (ph or pw):
        share = f"{g.expr}.to({ty.tl_compute(gd)}) / {kh * kw}"
    else:
        h0, w0 = em.affine(oh.scale(sh) - ph), em.affine(ow.scale(sw) - pw)
        cnt = (f"((tl.minimum({h0} + {kh}, {H}) - tl.maximum({h0}, 0)) * "
               f"(tl.minimum({w0} + {kw}, {W}) - tl.maximum({w0}, 0)))")
        share = f"{g.expr}.to({ty.tl_compute(gd)}) / {cnt}.to({ty.tl_compute(gd)})"
    em.line(f"{acc.expr} = {acc.expr} + " + (f"tl.where({contain.expr}, {share}, 0)" if contain is not None else share))
    _close(em, 2)
    return em.convert(_result(em, acc, idx, guard), dy.dtype)
