"""`LOWERING`: how each IR primitive becomes Triton code, one `Lowering` per op (keyed like `REFERENCE`).

A lowering's `emit(em, op, idx, guard)` returns the kernel code for element `idx` of the op's result,
asking `em.value` for its operands (see `emitter.py`). Lowerings fall into kinds:

* ``elementwise``: a `tl` expression over the operands at the same index (`describe()` shows it);
* ``index``: shape ops that only rewrite the index their operand is read at (no data moves);
* ``window``: pooling, a static loop over the kernel window at each output element (`windows.py`);
* ``reduction`` / ``contraction``: computed by the reduction and contraction kernels themselves,
  which register the result; asked for anywhere else they raise `Unsupported`;
* ``scan``: `cumsum`, a kernel of its own (`scan.py`): the entry builds it (`builds_kernel`);
* ``sort``: `sort` and `argsort`, a kernel of their own too (`sort.py`);
* ``scatter``: `index_add`, `index_max`, a chain of its own (`scatter.py`: zero, atomic adds, [cast]);
* ``group``: a `fusion` op, lowered as one kernel for its whole region.

Categories of ops are asked of their traits (`bool_as_int`, `selects`), never of name lists.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from avalon.ir import dtypes as dt
from avalon.ir.core import Op
from avalon.ir.registry import OPS, register_table

from . import types as ty
from . import windows
from .blocks import BlockPolicy
from .emitter import Emitter, Unsupported, Val
from .group import Group
from .indexing import Affine, Index, broadcast_index, linearize, reshape_index, row_major, transpose_index
from .kernel import Kernel
from .scan import build_scan
from .scatter import build_scatter
from .sort import build_sort


@dataclass(frozen=True)
class Lowering:
    """How one op becomes Triton code: `kind` says which kernel computes it, `text` what it emits."""

    kind: str
    text: str = ""
    builds_kernel: ClassVar[bool] = False  # True: `build_kernel` makes the op's whole kernel

    def describe(self) -> str:
        return f"{self.kind}: {self.text}" if self.text else self.kind

    def emit(self, em: Emitter, op: Op, idx: Index, guard: Val | None) -> Val:
        raise Unsupported(f"'{op.name}' is computed by a {self.kind} kernel, not inside this group")

    def build_kernel(self, group: Group, policy: BlockPolicy) -> Kernel:
        raise Unsupported(f"a {self.kind} lowering does not build its own kernel")


LOWERING: dict[str, Lowering] = register_table(
    "lowering", {}, exempt=("custom_vjp",))  # (inlined into its forward before any backend sees a graph)


def _has_trait(name: str, trait: str) -> bool:
    d = OPS.get(name)
    return d is not None and trait in d.traits


@dataclass(frozen=True)
class ElementwiseLowering(Lowering):
    """`text` formats the float case ({0}, {1}, ... are operands, {T} the result's compute type);
    `int_text` the integer case when it differs; `helper` names a function from `helpers.py`."""

    int_text: str | None = None
    helper: str | None = None
    int_helper: str | None = None

    def emit(self, em: Emitter, op: Op, idx: Index, guard: Val | None) -> Val:
        res = op.results[0].dtype
        special = _special(em, op, idx, guard)
        if special is not None:
            return special
        args = [em.value(v, idx, guard) for v in op.operands]
        as_int = _has_trait(op.name, "bool_as_int") and any(a.dtype == dt.bool_ for a in args)
        if as_int:
            args = [em.emit(f"{a.expr}.to(tl.int32)", dt.int32, vals=(a,)) if a.dtype == dt.bool_ else a
                    for a in args]
        floating = args[0].dtype.is_float if args else res.is_float
        text = self.text if floating or self.int_text is None else self.int_text
        helper = self.helper if floating or self.int_text is None else self.int_helper
        if helper:
            em.helpers.add(helper)
        t = ty.tl_compute(dt.int32 if as_int else res)
        expr = text.format(*[a.expr for a in args], T=t, BITS=64 if args and args[0].dtype == dt.int64 else 32)
        out = em.emit(expr, dt.int32 if as_int else res, vals=args, prefix=op.name[:4])
        if as_int and res == dt.bool_:
            out = em.emit(f"{out.expr} != 0", dt.bool_, vals=(out,))
        return out


def _special(em: Emitter, op: Op, idx: Index, guard: Val | None) -> Val | None:
    """pow by a constant exponent: exact products instead of exp2(y * log2(x))."""
    if op.name != "pow" or not op.results[0].dtype.is_float:
        return None
    y = splat_value(op.operands[1])
    forms = {1.0: "{0}", 2.0: "{0} * {0}", 3.0: "{0} * {0} * {0}", -1.0: "1.0 / {0}", -2.0: "1.0 / ({0} * {0})"}
    if y not in forms:
        return None
    x = em.value(op.operands[0], idx, guard)
    return em.emit(forms[y].format(x.expr), x.dtype, vals=(x,), prefix="pow")


def splat_value(v) -> float | None:
    """The scalar a value is filled with, when it is a splat constant seen through ops that only
    select elements of their operand (the `selects` trait: broadcast, reshape, transpose, slice)."""
    while v.op is not None and _has_trait(v.op.name, "selects"):
        v = v.op.operands[0]
    op = v.op
    if op is None or op.name != "constant":
        return None
    val = np.asarray(op.attrs["value"])
    return float(val.reshape(-1)[0]) if val.size == 1 else None


_FLOAT_MAX = "tl.maximum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)"
_FLOAT_MIN = "tl.minimum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)"

LOWERING.update({
    "exp": ElementwiseLowering("elementwise", "tl.exp({0})"),
    "log": ElementwiseLowering("elementwise", "tl.log({0})"),
    "tanh": ElementwiseLowering("elementwise", "_avalon_tanh({0})", helper="_avalon_tanh"),
    "sigmoid": ElementwiseLowering("elementwise", "tl.sigmoid({0})"),
    "sqrt": ElementwiseLowering("elementwise", "tl.sqrt({0})"),
    "rsqrt": ElementwiseLowering("elementwise", "tl.rsqrt({0})"),
    "erf": ElementwiseLowering("elementwise", "tl.erf({0})"),
    "neg": ElementwiseLowering("elementwise", "-{0}"),
    "abs": ElementwiseLowering("elementwise", "tl.abs({0})"),
    "relu": ElementwiseLowering("elementwise", "tl.where({0} < 0, 0, {0})"),
    "sign": ElementwiseLowering("elementwise", "({0} > 0).to({T}) - ({0} < 0).to({T})"),
    "add": ElementwiseLowering("elementwise", "{0} + {1}"),
    "sub": ElementwiseLowering("elementwise", "{0} - {1}"),
    "mul": ElementwiseLowering("elementwise", "{0} * {1}"),
    "div": ElementwiseLowering("elementwise", "{0} / {1}", int_text="{0} // {1}"),
    "pow": ElementwiseLowering("elementwise", "_avalon_pow({0}, {1})", int_text="_avalon_ipow({0}, {1}, {BITS})",
                       helper="_avalon_pow", int_helper="_avalon_ipow"),
    "maximum": ElementwiseLowering("elementwise", _FLOAT_MAX, int_text="tl.maximum({0}, {1})"),
    "minimum": ElementwiseLowering("elementwise", _FLOAT_MIN, int_text="tl.minimum({0}, {1})"),
    "eq": ElementwiseLowering("elementwise", "{0} == {1}"),
    "ne": ElementwiseLowering("elementwise", "{0} != {1}"),
    "lt": ElementwiseLowering("elementwise", "{0} < {1}"),
    "le": ElementwiseLowering("elementwise", "{0} <= {1}"),
    "gt": ElementwiseLowering("elementwise", "{0} > {1}"),
    "ge": ElementwiseLowering("elementwise", "{0} >= {1}"),
    "logical_and": ElementwiseLowering("elementwise", "{0} & {1}"),
    "logical_or": ElementwiseLowering("elementwise", "{0} | {1}"),
    "logical_not": ElementwiseLowering("elementwise", "{0} == 0"),
    "where": ElementwiseLowering("elementwise", "tl.where({0}, {1}, {2})"),
    "stop_gradient": ElementwiseLowering("elementwise", "{0}"),
})

LOWERING.update({
    "sin": ElementwiseLowering("elementwise", "tl.sin({0})"),
    "cos": ElementwiseLowering("elementwise", "tl.cos({0})"),
})


@dataclass(frozen=True)
class CastLowering(Lowering):
    def emit(self, em, op, idx, guard):
        return em.convert(em.value(op.operands[0], idx, guard), op.attrs["dtype"])


@dataclass(frozen=True)
class ConstantLowering(Lowering):
    def emit(self, em, op, idx, guard):
        v = np.asarray(op.attrs["value"])
        if v.size != 1:
            raise Unsupported("a dense constant must be a kernel input")
        return em.constant(v.reshape(-1)[0].item(), op.results[0].dtype)


LOWERING["cast"] = CastLowering("elementwise", "x.to(dtype); to i1 is x != 0; to f16/bf16 rounds and widens back")
LOWERING["constant"] = ConstantLowering("elementwise", "tl.full([1], value, dtype); dense arrays become kernel inputs")


# --- index ops: rewrite the index, read the operand there ------------------------------------------

@dataclass(frozen=True)
class IndexLowering(Lowering):
    fn: object = None

    def emit(self, em, op, idx, guard):
        return self.fn(em, op, idx, guard)


def _broadcast(em, op, idx, guard):
    x = op.operands[0]
    return em.value(x, broadcast_index(idx, x.shape, op.results[0].shape), guard)


def _reshape(em, op, idx, guard):
    x = op.operands[0]
    return em.value(x, reshape_index(idx, op.results[0].shape, x.shape), guard)


def _transpose(em, op, idx, guard):
    return em.value(op.operands[0], transpose_index(idx, op.attrs["perm"]), guard)


def _slice(em, op, idx, guard):
    x = op.operands[0]
    step = op.attrs["step"] or [1] * x.type.rank
    return em.value(x, tuple(a.scale(s) + st for a, s, st in zip(idx, step, op.attrs["start"])), guard)


def _pad(em, op, idx, guard):
    x = op.operands[0]
    src = tuple(a - lo for a, lo in zip(idx, op.attrs["low"]))
    inside = None
    for d, (lo, hi) in enumerate(zip(op.attrs["low"], op.attrs["high"])):
        if lo or hi:
            inside = em.both(inside, em.in_range(src[d], x.shape[d]))
    if inside is None:
        return em.value(x, src, guard)
    v = em.value(x, src, em.both(guard, inside))
    fill = em.constant(op.attrs["value"], x.dtype)
    return em.emit(f"tl.where({inside.expr}, {v.expr}, {fill.expr})", x.dtype, vals=(inside, v, fill), prefix="pad")


def _concat(em, op, idx, guard):
    ax = op.attrs["axis"] % op.results[0].type.rank
    pieces, off = [], 0
    for x in op.operands:
        src = idx[:ax] + (idx[ax] - off,) + idx[ax + 1:]
        g = em.in_range(src[ax], x.shape[ax])
        pieces.append((em.value(x, src, em.both(guard, g)), g, off + x.shape[ax]))
        off += x.shape[ax]
    out = pieces[-1][0]
    a = em.affine(idx[ax])
    for v, _, end in reversed(pieces[:-1]):
        out = em.emit(f"tl.where({a} < {end}, {v.expr}, {out.expr})", v.dtype, idx[ax].deps, (v, out), prefix="cat")
    return out


def check_index(em: Emitter, op: Op, iv: Val, bound: int, guard: Val | None) -> Val:
    """Record an index outside [0, bound) in the kernel's `err` buffer and return the lanes that
    hold one.

    Why a flag and not `tl.device_assert`: an assert kills the CUDA context (every later call
    fails, the process must restart) and Triton's interpreter runs it differently (a Python
    AssertionError mid-kernel, naming neither op nor value); on a GPU it is also compiled out
    unless debug mode is on. Instead each checked index owns a pair of int64 slots: lanes with a
    bad index store it into the first and 1 into the second (masked stores, no atomics: any bad
    lane's value will do), and the runtime reads the buffer after the launches and raises
    IndexOutOfRangeError naming the op, the user's line and the value. Live lanes only: the mask
    of the index's iteration variables and the guard (dead lanes hold anything)."""
    key = ("oob", iv.expr, bound, guard.expr if guard is not None else None)
    hit = em.lookup(key)
    if hit is not None:  # (one_hot asks once per class at the same index: one check)
        return hit
    bad = em.emit(f"({iv.expr} < 0) | ({iv.expr} >= {bound})", dt.bool_, vals=(iv,), prefix="oob")
    return em.remember(key, _flag(em, op, bad, iv, int(bound), guard))


def _flag(em: Emitter, op: Op, bad: Val, iv: Val, detail: int | dict, guard: Val | None) -> Val:
    """Store `iv` and 1 into a fresh pair of `err` slots from the live lanes where `bad` holds (see
    `check_index`); `detail` (an index's bound, a check's message) is what the runtime says."""
    m = em.mask(iv.deps, guard)
    if m is not None:
        bad = em.cond(f"{bad.expr} & {m}", iv.deps, (bad,) + ((guard,) if guard is not None else ()))
    slot = len(em.index_checks)
    em.index_checks.append((op.name, str(op.loc) if op.loc else "", detail))
    z = f"{bad.expr}.to(tl.int32) * 0"  # the pointer as a block of the index's shape
    em.line(f"tl.store(err + {2 * slot} + {z}, {iv.expr}.to(tl.int64), mask={bad.expr})", bad.scope)
    em.line(f"tl.store(err + {2 * slot + 1} + {z}, {bad.expr}.to(tl.int64), mask={bad.expr})", bad.scope)
    return bad


def _check(em, op, idx, guard):
    """`check`: the value, and a flag in `err` where the condition fails (the runtime raises the
    reference's ValueCheckError with the op's message), as `check_index` flags an index."""
    ok = em.value(op.operands[1], idx, guard)
    bad = em.emit(f"{ok.expr} == 0", dt.bool_, vals=(ok,), prefix="bad")
    _flag(em, op, bad, bad, {"error": op.attrs["error"], "message": op.attrs["message"]}, guard)
    return em.value(op.operands[0], idx, guard)


def _take(em, op, idx, guard):
    x, ind = op.operands
    ax = op.attrs["axis"] % x.type.rank
    k = ind.type.rank
    iv = em.value(ind, idx[ax:ax + k], guard)
    bad = check_index(em, op, iv, x.shape[ax], guard)
    iv = em.emit(f"tl.where({bad.expr}, 0, {iv.expr})", iv.dtype, vals=(bad, iv), prefix="ix")  # never read outside
    pos = Affine.of(em.opaque_var(iv, x.shape[ax]))
    return em.value(x, idx[:ax] + (pos,) + idx[ax + k:], guard)


def _one_hot(em, op, idx, guard):
    iv = em.value(op.operands[0], idx[:-1], guard)
    check_index(em, op, iv, op.attrs["num_classes"], guard)
    res = op.results[0].dtype
    c = em.affine(idx[-1])
    return em.emit(f"({iv.expr} == {c}).to({ty.tl_compute(res)})", res, idx[-1].deps, (iv,), prefix="hot")


def _converted(em, a, tl_type: str) -> str:
    """An index expression as a tensor of `tl_type`. With no terms (a size-1 axis, a one-element
    result) the affine index is a Python constant, which has no `.to()`."""
    if not a.terms:
        return f"tl.full([1], {a.const}, {tl_type})"
    return f"({em.affine(a)}).to({tl_type})"


def _random(em, op, idx, guard):
    seed = em.value(op.operands[0], (), None)
    em.helpers.update({"_avalon_seed_key1", "_avalon_seed_key2", "_avalon_random_bits"})
    k1 = em.emit(f"_avalon_seed_key1({seed.expr})", dt.int64, vals=(seed,), prefix="key")
    k2 = em.emit(f"_avalon_seed_key2({seed.expr})", dt.int64, vals=(seed,), prefix="key")
    res = op.results[0].dtype
    shape = op.results[0].shape
    flat = linearize(idx, row_major(shape), shape)
    ctr = em.emit(_converted(em, flat, "tl.uint32"), dt.int32, flat.deps, prefix="ctr")
    ft = "tl.float64" if res == dt.float64 else "tl.float32"
    if op.attrs["distribution"] == "uniform":
        from avalon.ir.reference import UNIFORM_BITS
        b = UNIFORM_BITS[res.name]
        bits = em.emit(f"_avalon_random_bits({ctr.expr}, {k1.expr}, {k2.expr})", dt.int32, vals=(ctr, k1, k2))
        return em.emit(f"(({bits.expr} >> {32 - b}).to({ft})) * {2.0 ** -b!r}", res, vals=(bits,), prefix="rnd")
    c2 = em.emit(f"{ctr.expr} * 2", dt.int32, vals=(ctr,))
    b1 = em.emit(f"_avalon_random_bits({c2.expr}, {k1.expr}, {k2.expr})", dt.int32, vals=(c2, k1, k2))
    b2 = em.emit(f"_avalon_random_bits({c2.expr} + 1, {k1.expr}, {k2.expr})", dt.int32, vals=(c2, k1, k2))
    u1 = em.emit(f"1.0 - (({b1.expr} >> 8).to({ft})) * {2.0 ** -24!r}", res, vals=(b1,))
    u2 = em.emit(f"(({b2.expr} >> 8).to({ft})) * {2.0 ** -24!r}", res, vals=(b2,))
    return em.emit(f"tl.sqrt(-2.0 * tl.log({u1.expr})) * tl.cos({2 * np.pi!r} * {u2.expr})", res,
                   vals=(u1, u2), prefix="rnd")


LOWERING.update({
    "broadcast": IndexLowering("index", "read the operand with size-1 dims at 0 (stride 0)", _broadcast),
    "reshape": IndexLowering("index", "read the operand at the same row-major position", _reshape),
    "transpose": IndexLowering("index", "read the operand with permuted dims (strided)", _transpose),
    "slice": IndexLowering("index", "read the operand at start + i * step", _slice),
    "pad": IndexLowering("index", "tl.where(inside, operand at i - low (masked load), value)", _pad),
    "concat": IndexLowering("index", "nested tl.where over the pieces, each a masked load", _concat),
    "check": IndexLowering("elementwise", "the value; lanes whose condition fails are flagged in err", _check),
    "take": IndexLowering("index", "load the index (out of range: flagged in err, read at 0), then the operand at it",
                          _take),
    "one_hot": IndexLowering("index", "(index == class).to(dtype); an index out of range is flagged in err",
                             _one_hot),
    "random": IndexLowering("index", "counter-based hash of the flat index (bit-exact with random_bits)", _random),
})

LOWERING.update({
    "sum": Lowering("reduction", "tl.sum of tl.where(mask, x, 0) per row (persistent or looped)"),
    "max": Lowering("reduction", "tl.max of tl.where(mask, x, -inf) per row; nan propagates"),
    "argmax": Lowering("reduction", "first index of the row maximum (first nan wins)"),
    "matmul": Lowering("contraction", "tiled tl.dot over (M, N) tiles, batch on grid axis 1"),
    "conv2d": Lowering("contraction", "implicit GEMM: rows (n, oh, ow), cols o, K (c, kh, kw)"),
    "conv2d_grad_input": Lowering("contraction", "implicit GEMM: rows (n, h, w), cols c, K (o, kh, kw)"),
    "conv2d_grad_weight": Lowering("contraction", "implicit GEMM: rows o, cols (c, kh, kw), K (n, oh, ow)"),
    "fusion": Lowering("group", "one kernel for the whole region (pointwise, reduction or contraction)"),
})

LOWERING.update({
    "max_pool2d": IndexLowering("window", "static loops over the window: tl.maximum, padding is -inf",
                                windows.max_pool),
    "avg_pool2d": IndexLowering("window", "static loops over the window: sum / divisor", windows.avg_pool),
    "max_pool2d_grad": IndexLowering("window", "gather: dy of each containing window whose first max is here",
                                 windows.max_pool_grad),
    "avg_pool2d_grad": IndexLowering("window", "gather: dy / divisor of each containing window", windows.avg_pool_grad),
})


@dataclass(frozen=True)
class OwnKernel(Lowering):
    """An op computed by a kernel (or kernel chain) of its own, which `builder` makes from its
    one-op group (see build.build_kernel): scans, sorts, scatters."""

    builder: Callable[[Group, BlockPolicy], Kernel] | None = None
    builds_kernel: ClassVar[bool] = True

    def build_kernel(self, group: Group, policy: BlockPolicy) -> Kernel:
        assert self.builder is not None
        return self.builder(group, policy)


def _iota(em, op, idx, guard):
    """The index along `axis` is the loop/offset expression itself: no load at all."""
    res = op.results[0].dtype
    a = idx[op.attrs["axis"] % op.results[0].type.rank]
    return em.emit(_converted(em, a, ty.tl_compute(res)), res, a.deps, prefix="iota")


LOWERING["iota"] = IndexLowering("index", "the result index along the axis, converted to the dtype", _iota)

LOWERING["cumsum"] = OwnKernel("scan", "tl.cumsum along the axis per block of rows; chunks carry a running sum",
                               build_scan)


LOWERING["sort"] = OwnKernel("sort", "tl.sort of packed (value image, position) int64 keys per block of rows; "
                             "the operand loaded at the sorted positions", build_sort)
LOWERING["argsort"] = OwnKernel("sort", "tl.sort of packed (value image, position) int64 keys per block of rows; "
                                "the positions stored (f64/i64: an unrolled bitonic network on pairs)", build_sort)


LOWERING["index_add"] = OwnKernel("scatter", "zero the result, then tl.atomic_add the value rows at their "
                                  "indices (f16/bf16: into an f32 workspace, then cast)", build_scatter)
LOWERING["index_max"] = OwnKernel("scatter", "fill the result with -inf, then tl.atomic_max the value rows at their "
                                  "indices (f16/bf16: into an f32 workspace, then cast)", build_scatter)


@dataclass(frozen=True)
class HostLowering(Lowering):
    """An op that is no kernel (communication, a LAPACK factorization): the build runs
    `host_step(op)` between launches, on the storage of the op's operands then results (`collective.py`)."""

    runs_on_host: ClassVar[bool] = True

    def host_step(self, op: Op):
        from .collective import all_gather_step, all_reduce_step, reference_step
        return {"all_reduce": all_reduce_step, "all_gather": all_gather_step}.get(op.name, reference_step)(op)


LOWERING["all_reduce"] = HostLowering("host", "torch.distributed.all_reduce on the result's storage, between launches")
LOWERING["all_gather"] = HostLowering("host", "torch.distributed all_gather of the operand's storage into the "
                                      "result's, between launches")
for _name in ("svd", "eigh", "qr", "pinv", "eig", "bitcast", "ldl_factor", "ldl_solve"):
    # small matrices (a model's rotations, whitening, spectral norms), where a device solver's launch and
    # sync cost what the copy does; the copy to the host and back waits for the kernels before it
    LOWERING[_name] = HostLowering("host", "numpy.linalg on the host between launches (the operand copied to "
                                   "the host and the factors back)")
