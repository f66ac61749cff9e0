"""Linalg lowerings of gathers (take, one_hot) and of counter-based random numbers.

`random` computes the reference's formula (`avalon.ir.reference.random_bits`) in the generic
body with i32 arithmetic (wrapping multiplies, logical shifts), so uniform numbers are bit-exact.
Normal numbers use the same Box-Muller from the same bits, but evaluated in f32 where the
reference uses f64: IREE's llvm-cpu target links no libm, and f64 `math.cos` has no inline
expansion there ("undefined symbol: cos"), while the f32 math ops are expanded to polynomials. They
agree with the reference to about 1e-6 relative (f64 results carry f32 precision).
"""
from __future__ import annotations

import math

from avalon.ir import Op, TensorType
from avalon.ir import dtypes as dt
from avalon.ir.reference import UNIFORM_BITS

from .emitter import INDEX, LinalgEmitter, V, amap, identity, ty
from .linalg import rule
from .scalar import cast


def check_bounds(e: LinalgEmitter, idx: V, bound: int, op: Op) -> None:
    """The index tensor's smallest and largest value (one fused min/max reduction), where the kernels
    clamp (tensor.extract past the end is undefined behaviour; a wrong row read in silence is worse
    than an error): `lower_function` returns them to a runtime that raises the reference's
    IndexOutOfRangeError naming the op, its line and the value (the IREE backend), or asserts them
    (`cf.assert`, exported MLIR). None where `e.checks` is None (a rule lowering a form of its own)."""
    if e.checks is None or idx.t.numel == 0:
        return
    flat = e.reshape(idx, (idx.t.numel,))
    scalar_t = TensorType((), dt.int64)
    lo, hi = e.full(scalar_t, -(1 << 63) + 1), e.full(scalar_t, (1 << 63) - 1)

    def body(b: LinalgEmitter, a: list[V]) -> list[V]:
        k = cast(b, a[0], dt.int64) if a[0].d != dt.int64 else a[0]
        return [b.arith("arith.minsi", k, a[1]), b.arith("arith.maxsi", k, a[2])]
    mn, mx = e.generic([(flat, identity(1))], [(hi, amap(1, [])), (lo, amap(1, []))], ["reduction"], body)
    e.checks.append((mn, mx, op, int(bound)))


@rule("check")
def _check(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    """The value itself, and the condition's smallest element as an index range (`check_bounds`: 0
    where any element failed), which the IREE runtime turns into the reference's ValueCheckError
    and exported MLIR asserts with its message."""
    check_bounds(e, args[1], 1, op)
    return [args[0]]


@rule("take")
def _take(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    """Indices are clamped into range (the reference raises on one out of range; a compiled
    kernel must not read out of bounds), and checked where the caller asks (`check_bounds`)."""
    x, idx = args
    check_bounds(e, idx, x.t.shape[op.attrs["axis"] % x.t.rank], op)
    out = types[0]
    ax = op.attrs["axis"] % x.t.rank
    ri = idx.t.rank

    def body(b: LinalgEmitter, a: list[V]) -> list[V]:
        k = V(b.op(f"arith.index_cast {a[0].name} : {a[0].d.name} to index", dt.int64).name, INDEX)
        k = b.arith("arith.maxsi", k, b.index_const(0))
        k = b.arith("arith.minsi", k, b.index_const(x.t.shape[ax] - 1))
        coords = [b.index(d) for d in range(ax)] + [k] + [b.index(ax + ri + d) for d in range(x.t.rank - ax - 1)]
        return [b.op(f"tensor.extract {x.name}[{', '.join(c.name for c in coords)}] : {ty(x.t)}", x.d)]
    return [e.map([idx], out, lambda b, a: body(b, a)[0], maps=[amap(out.rank, [f"d{ax + d}" for d in range(ri)])])]


@rule("one_hot")
def _one_hot(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    idx = args[0]
    out = types[0]
    r = idx.t.rank
    check_bounds(e, idx, op.attrs["num_classes"], op)

    def body(b: LinalgEmitter, a: list[V]) -> V:
        k = V(b.op(f"arith.index_cast {a[0].name} : {a[0].d.name} to index", dt.int64).name, INDEX)
        return cast(b, b.cmp("cmpi", "eq", k, b.index(r)), out.dtype)
    return [e.map([idx], out, body, maps=[amap(out.rank, [f"d{d}" for d in range(r)])])]


@rule("iota")
def _iota(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    """Each element's index along `axis`: `linalg.index` cast to the result dtype."""
    out = types[0]

    def body(b: LinalgEmitter, a: list[V]) -> V:
        k = b.op(f"arith.index_cast {b.index(op.attrs['axis']).name} : index to i64", dt.int64)
        return cast(b, k, out.dtype)
    return [e.map([], out, body)]


def _i32(v: int) -> int:
    return v - (1 << 32) if v >= 1 << 31 else v


def fmix32(b: LinalgEmitter, h: V) -> V:
    """MurmurHash3's finalizer on i32 (see avalon.ir.reference.fmix32)."""
    for shift, mul in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
        h = b.arith("arith.xori", h, b.arith("arith.shrui", h, b.const(shift, dt.int32)))
        h = b.arith("arith.muli", h, b.const(_i32(mul), dt.int32))
    return b.arith("arith.xori", h, b.arith("arith.shrui", h, b.const(16, dt.int32)))


def _uniform(b: LinalgEmitter, bits: V, nbits: int) -> V:
    """(bits >> (32 - nbits)) * 2**-nbits as f64: exact."""
    top = b.arith("arith.shrui", bits, b.const(32 - nbits, dt.int32))
    f = b.convert("arith.uitofp", top, dt.float64)
    return b.arith("arith.mulf", f, b.const(2.0 ** -nbits, dt.float64))


@rule("random")
def _random(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    seed = args[0]
    out = types[0]
    s = e.op(f"tensor.extract {seed.name}[] : {ty(seed.t)}", seed.d)
    if s.d != dt.int64:
        s = e.convert("arith.extsi", s, dt.int64)
    lo = e.convert("arith.trunci", s, dt.int32)
    hi = e.convert("arith.trunci", e.arith("arith.shrui", s, e.const(32, dt.int64)), dt.int32)
    s32 = e.arith("arith.xori", lo, hi)
    k1 = fmix32(e, s32)
    k2 = fmix32(e, e.arith("arith.xori", s32, e.const(_i32(0x9E3779B9), dt.int32)))
    r = out.rank
    strides = [math.prod(out.shape[d + 1:]) for d in range(r)]
    normal = op.attrs["distribution"] == "normal"

    def bits(b: LinalgEmitter, i: V) -> V:
        return fmix32(b, b.arith("arith.xori", fmix32(b, b.arith("arith.addi", i, k1)), k2))

    def body(b: LinalgEmitter, a: list[V]) -> list[V]:
        flat = b.index_const(0)
        for d in range(r):
            flat = b.arith("arith.addi", flat, b.arith("arith.muli", b.index(d), b.index_const(strides[d])))
        i = b.op(f"arith.index_cast {flat.name} : index to i32", dt.int32)
        if not normal:
            u = _uniform(b, bits(b, i), UNIFORM_BITS[out.dtype.name])
        else:
            c0 = b.arith("arith.muli", i, b.const(2, dt.int32))
            c1 = b.arith("arith.addi", c0, b.const(1, dt.int32))
            f = dt.float32  # 24-bit uniforms are exact in f32; see the module docstring
            u1 = b.arith("arith.subf", b.const(1.0, f), b.convert("arith.truncf", _uniform(b, bits(b, c0), 24), f))
            u2 = b.convert("arith.truncf", _uniform(b, bits(b, c1), 24), f)
            rad = b.arith("math.sqrt", b.arith("arith.mulf", b.const(-2.0, f), b.arith("math.log", u1)))
            ang = b.arith("math.cos", b.arith("arith.mulf", b.const(2.0 * math.pi, f), u2))
            u = b.arith("arith.mulf", rad, ang)
        return [cast(b, u, out.dtype)]
    return e.generic([], [(e.empty(out), identity(r))], ["parallel"] * r, body)


@rule("all_reduce")
def _all_reduce(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    """The identity: a linalg module runs in one process, where the collective is the identity (the
    reference's rule with no process group). Over a group of several processes there is no
    upstream collective op to lower to, so that is refused rather than silently dropped."""
    from avalon.ir.reference.collective import collective
    hook = collective()
    if hook is not None and hook.world_size(op.attrs["group"]) > 1:
        raise NotImplementedError(f"all_reduce over {hook.world_size(op.attrs['group'])} processes has no linalg "
                                  "lowering (the module runs in one process); export the single-process step")
    return [args[0]]


@rule("all_gather")
def _all_gather(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    """The identity on one process (world_size 1: the result's type is the operand's), as `all_reduce`;
    an all_gather traced over several processes is refused."""
    if op.attrs["world_size"] > 1:
        raise NotImplementedError(f"all_gather over {op.attrs['world_size']} processes has no linalg lowering (the "
                                  "module runs in one process); export the single-process step")
    return [args[0]]
