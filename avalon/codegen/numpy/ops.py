"""Per-op emitters of the numpy code generator, and how top-level ops and fused groups are placed.

An emitter writes one op's result into `out` (an array of the result type the generator chose:
a planned buffer, a scratch slot, a fresh array or, in place, an operand that dies there). It
declares which ops it `accepts` (dtypes, attributes); every other op falls back to its reference
rule. Elementwise emitters are exact (the same numpy ufunc the reference rule calls);
contractions reorder float sums (see `kernels`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from avalon.ir import Op, Value
from avalon.ir import dtypes as dt
from avalon.ir.reference.gather import UNIFORM_BITS
from avalon.ir.types import TensorType

from . import kernels
from .generator import Generator, Ref

FLOATS = (dt.float32, dt.float64)
INTS = dt.INTS


@dataclass(frozen=True)
class OpEmitter:
    emit: Callable[[Generator, Op, list[Ref], str], None]
    accepts: Callable[[Op], bool]
    inplace: bool = True  # out may be an operand's storage (one pass that reads each element before writing it)


EMITTERS: dict[str, OpEmitter] = {}


def _dtypes(op: Op) -> set:
    return {v.type.dtype for v in (*op.operands, *op.results)}


def floats(op: Op) -> bool:
    return _dtypes(op) <= set(FLOATS) and len(op.results) == 1


def numeric(op: Op) -> bool:
    return _dtypes(op) <= set(FLOATS + INTS) and len(op.results) == 1


def _np(t: TensorType) -> str:
    return f"np.{t.dtype.np.name}"


def register(names: dict[str, str] | tuple[str, ...], accepts: Callable[[Op], bool], inplace: bool = True):
    def deco(fn):
        for n in names:
            EMITTERS[n] = OpEmitter(fn, accepts, inplace)
        return fn
    return deco


# -- elementwise ------------------------------------------------------------------------------------

_UNARY = {"exp": "np.exp", "log": "np.log", "tanh": "np.tanh", "sqrt": "np.sqrt"}
_UNARY_INT = {"neg": "np.negative", "abs": "np.abs"}
_BINARY = {"div": "np.true_divide", "pow": "K.float_power"}  # pow: the reference's layout-proof np.power
_BINARY_INT = {"add": "np.add", "sub": "np.subtract", "mul": "np.multiply", "maximum": "np.maximum",
               "minimum": "np.minimum"}
_COMPARE = {"eq": "np.equal", "ne": "np.not_equal", "lt": "np.less", "le": "np.less_equal", "gt": "np.greater",
            "ge": "np.greater_equal"}
_LOGICAL = {"logical_and": "np.logical_and", "logical_or": "np.logical_or", "logical_not": "np.logical_not"}


def _ufunc(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    fn = {**_UNARY, **_UNARY_INT, **_BINARY, **_BINARY_INT, **_COMPARE, **_LOGICAL}[op.name]
    gen.line(f"{fn}({', '.join(a.expr for a in args)}, out={out})")


register(_UNARY, floats)(_ufunc)
register(_BINARY, floats)(_ufunc)
register(_UNARY_INT, numeric)(_ufunc)
register(_BINARY_INT, numeric)(_ufunc)
register(_COMPARE, lambda op: op.operands[0].type.dtype not in (dt.float16, dt.bfloat16) or True)(_ufunc)
register(_LOGICAL, lambda op: True)(_ufunc)


@register(("relu",), numeric)
def _relu(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    zero = gen.const(np.zeros((), op.results[0].type.dtype.np), "zero")
    gen.line(f"np.maximum({args[0].expr}, {zero}, out={out})")


@register(("rsqrt",), floats)
def _rsqrt(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    gen.line(f"np.sqrt({args[0].expr}, out={out})")
    gen.line(f"np.true_divide(1, {out}, out={out})")


@register(("sigmoid",), floats, inplace=False)
def _sigmoid(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    """The reference's exp(min(x, 0)) / (1 + exp(-|x|)) with one exp instead of two: with
    z = exp(-|x|), the numerator exp(min(x, 0)) is z where x < 0 (the same exp of the same bits) and
    exactly 1 elsewhere (x >= 0, -0 included), so the quotient is the reference's bit for bit. The
    numerator is max(z, [x >= 0]) (z <= 1; a NaN stays NaN); -|x| is x with its sign bit set (one
    pass). A masked copyto would be the obvious select, but it is ten times slower than a pass."""
    t = op.results[0].type
    x = gen.array(args[0])
    z, _ = gen.scratch(t.shape, t.dtype.np)
    step, _ = gen.scratch(t.shape, t.dtype.np)
    bits = 8 * t.dtype.itemsize
    sign = gen.const(np.array(1 << (bits - 1), f"uint{bits}")[()], "sign")
    gen.line(f"np.bitwise_or({x}.view(np.uint{bits}), {sign}, out={z}.view(np.uint{bits})); np.exp({z}, out={z})")
    gen.line(f"np.add(1, {z}, out={out}); np.greater_equal({x}, 0, out={step}); np.maximum({z}, {step}, out={z})")
    gen.line(f"np.true_divide({z}, {out}, out={out})")


ALIASING = ("reshape", "transpose", "broadcast", "stop_gradient", "check")
"""Ops whose result may be its operand's storage in generated code (views, lazy broadcasts, identities)."""


@register(("stop_gradient", "broadcast"), lambda op: True)
def _copy(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    gen.line(f"np.copyto({out}, {args[0].expr})")


def _source_line(op: Op) -> str:
    """The op's source line as a Python literal, for errors raised by generated code."""
    return repr(str(op.loc) if op.loc else "")


@register(("check",), lambda op: True)
def _check(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    """The condition checked (`K.check` raises the reference's ValueCheckError), then the value copied
    (into its top-level result; inside a region `emit_op` aliases the value, as a stop_gradient's)."""
    gen.line(f"K.check({gen.array(args[1])}, {op.attrs['message']!r}, {op.attrs['error']!r}, {_source_line(op)}); "
             f"np.copyto({out}, {args[0].expr})")


@register(("cast",), lambda op: op.results[0].type.dtype != dt.bfloat16 and op.operands[0].type.dtype != dt.float16
          and op.results[0].type.dtype != dt.float16
          and not (op.operands[0].type.dtype.is_float and op.results[0].type.dtype in dt.SMALL_INTS))
def _cast(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    """numpy's astype conversion (float -> int truncates, x -> bool is x != 0), through copyto. Floats
    to 8/16-bit integers go through i64 in the reference (torch's wrap-around): its rule runs them."""
    gen.line(f"np.copyto({out}, {args[0].expr}, casting='unsafe')")


@register(("where",), lambda op: op.results[0].type.dtype in (*FLOATS, *INTS), inplace=False)
def _where(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    """A select that copies bit patterns (exactly the reference's), as unsigned integer arithmetic
    that wraps: y + (x - y) * c is x's bits where c holds and y's elsewhere. Three plain passes whatever
    the mask looks like; a masked copyto is one pass but branches per element, about ten times
    slower on an unpredictable mask. Against a +0 splat it is one pass (the value's bits times c),
    or two (y - y * c)."""
    c, x, y = args
    u = f"np.uint{8 * op.results[0].type.dtype.itemsize}"
    o = f"{out}.view({u})"
    if x.kind != "scalar" and y.kind == "scalar" and _bits_zero(gen.consts.get(y.expr)):
        gen.line(f"np.multiply({x.expr}.view({u}), {c.expr}, out={o})")
        return
    if y.kind != "scalar" and x.kind == "scalar" and _bits_zero(gen.consts.get(x.expr)):
        gen.line(f"np.multiply({y.expr}.view({u}), {c.expr}, out={o}); np.subtract({y.expr}.view({u}), {o}, out={o})")
        return
    xu, yu = f"{x.expr}.view({u})", f"{y.expr}.view({u})"
    gen.line(f"np.subtract({xu}, {yu}, out={o}); np.multiply({o}, {c.expr}, out={o}); np.add({o}, {yu}, out={o})")


def _bits_zero(v: object) -> bool:
    if v is None:
        return False
    a = np.asarray(v)
    return a.size == 1 and not a.tobytes().strip(b"\0")


# -- reductions, contractions, pooling ------------------------------------------------------------

def _axes(op: Op) -> tuple[int, ...]:
    rank = op.operands[0].type.rank
    return tuple(sorted(a % rank for a in op.attrs["axes"]))


MAX_MIN_ELEMENTS = 4096
"""A last-axis max over at least this many elements is a compiled loop on backend='cpu' (a call costs
a few microseconds; numpy's reduction ~1 ns an element on short rows)."""


@register(("sum", "max"), lambda op: floats(op) and op.operands[0].type.rank > 0)
def _reduce(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    x = op.operands[0].type
    if (gen.native_runs and op.name == "max" and _axes(op) == (x.rank - 1,) and x.layout is None
            and math.prod(x.shape) >= MAX_MIN_ELEMENTS):  # backend='cpu': a softmax's row max compiled
        from .native import address, max_last_call
        fn = max_last_call(gen, x.dtype, math.prod(x.shape[:-1]), x.shape[-1])
        if fn is not None:
            src = gen.array(args[0])
            gen.line(f"{fn}({address(gen, src) if src in gen.views else f'N.ptr({src})'}, {address(gen, out)})")
            return
    fn = "np.sum" if op.name == "sum" else "np.max"
    gen.line(f"{fn}({gen.array(args[0])}, axis={_axes(op)!r}, keepdims={bool(op.attrs['keepdims'])}, out={out})")


def blas_line(gen: Generator, mnk: int, line: str) -> None:
    """`line`, a call whose GEMMs each take `mnk` multiply-adds, on the caller's BLAS threads when
    they are large (`kernels.wide`), else on the one thread generated code runs BLAS on."""
    if mnk >= kernels.PARALLEL_MIN_MNK:
        line = f"K.wide({mnk}); {line}; K.narrow()"
    gen.line(line)


@register(("matmul",), floats, inplace=False)
def _matmul(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    a, b = op.operands[0].type.shape, op.operands[1].type.shape
    if a[-1] == 1 and len(a) > 2:  # batched outer products (per-example weight gradients under vmap):
        # numpy's matmul takes a slow non-BLAS loop for K = 1, the broadcast product is the same numbers
        gen.line(f"np.multiply({gen.array(args[0])}, {gen.array(args[1])}, out={out})")
        return
    mnk = (a[-2] if len(a) > 1 else 1) * a[-1] * (b[-1] if len(b) > 1 else 1)
    blas_line(gen, mnk, f"np.matmul({gen.array(args[0])}, {gen.array(args[1])}, out={out})")


def _plain_conv(op: Op) -> bool:
    return floats(op) and op.attrs["groups"] == 1


def _geom(op: Op) -> tuple[int, ...]:
    a = op.attrs
    return (*a["stride"], *a["padding"], *a["dilation"])


def _im2col(gen: Generator, op: Op, c: int, kh: int, kw: int, oh: int, ow: int, hp: int, wp: int) -> str:
    """backend='cpu': ", runK", the compiled batch-first patch copy to pass on; else ""."""
    if not gen.native_runs:
        return ""
    from .native import im2col_bf_call
    fn = im2col_bf_call(gen, op.results[0].type.dtype, c, kh, kw, oh, ow, hp, wp, _geom(op))
    return f", {fn}" if fn else ""


def _rows(gen: Generator, op: Op, n: int, c: int, o: int, oh: int, ow: int) -> bool:
    """backend='cpu': row patches (`kernels.conv2d_rows`) for this convolution."""
    kh, kw = (op.operands[1] if op.name != "conv2d_grad_weight" else op.results[0]).type.shape[2:]
    return (gen.native_runs and op.results[0].type.dtype in FLOATS and 0 < n * oh * ow < 1 << 31
            and kernels.rows_layout(c, o, kh, kw))  # positions are passed to C as 32-bit


@register(("conv2d",), _plain_conv, inplace=False)
def _conv2d(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    x, w = (gen.array(a) for a in args)
    n, c, h, wd = op.operands[0].shape
    o, _, kh, kw = op.operands[1].shape
    _, _, oh, ow = op.results[0].shape
    g = _geom(op)
    f = op.results[0].type.dtype.np
    hp, wp = h + 2 * g[2], wd + 2 * g[3]
    z = np.dtype(f).itemsize
    if _rows(gen, op, n, c, o, oh, ow):
        from .native import from_nhwc_call, im2col_rows_call, to_nhwc_call
        t, kkc, rows = op.results[0].type.dtype, c * kh * kw, n * oh * ow
        xp, _ = gen.scratch((n, hp, wp, c), f)
        wr, _ = gen.scratch((o, kkc), f)
        cols, _ = gen.scratch((kernels.rows_chunk(rows, kkc * z), kkc), f)
        y, _ = gen.scratch((rows, o), f)
        fns = (to_nhwc_call(gen, t, n, c, h, wd, g[2], g[3]), im2col_rows_call(gen, t, c, kh, kw, oh, ow, hp, wp, g),
               from_nhwc_call(gen, t, n, o, oh, ow, 0, 0))
        blas_line(gen, o * kkc * rows, f"K.conv2d_rows({x}, {w}, {out}, {xp}, {wr}, {cols}, {y}, {', '.join(fns)})")
        return
    if kernels.batch_first(oh, ow):
        nb = kernels.chunk(n, c * kh * kw * oh * ow * z)
        cols, _ = gen.scratch((nb, c, kh, kw, oh, ow), f)
        xp = gen.scratch((n, c, hp, wp), f)[0] if g[2] or g[3] else "None"
        blas_line(gen, o * c * kh * kw * oh * ow,
                  f"K.conv2d_bf({x}, {w}, {g!r}, {out}, {cols}, {xp}{_im2col(gen, op, c, kh, kw, oh, ow, hp, wp)})")
    else:
        rb = kernels.chunk(oh, c * kh * kw * ow * n * z)
        xt, _ = gen.scratch((c, hp, wp, n), f)
        cols, _ = gen.scratch((c * kh * kw * rb * ow * n,), f)
        y, _ = gen.scratch((o * rb * ow * n,), f)
        blas_line(gen, o * c * kh * kw * rb * ow * n, f"K.conv2d_bl({x}, {w}, {g!r}, {out}, {xt}, {cols}, {y})")


@register(("conv2d_grad_input",), _plain_conv, inplace=False)
def _conv2d_grad_input(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    dy, w = (gen.array(a) for a in args)
    n, o, oh, ow = op.operands[0].shape
    _, c, kh, kw = op.operands[1].shape
    h, wd = op.results[0].shape[2:]
    g = _geom(op)
    f = op.results[0].type.dtype.np
    hp, wp = h + 2 * g[2], wd + 2 * g[3]
    z = np.dtype(f).itemsize
    if _rows(gen, op, n, c, o, oh, ow):
        from .native import col2im_rows_call, from_nhwc_call, to_nhwc_call
        t, kkc, rows = op.results[0].type.dtype, c * kh * kw, n * oh * ow
        dyr, _ = gen.scratch((rows, o), f)
        wr, _ = gen.scratch((o, kkc), f)
        dcols, _ = gen.scratch((kernels.rows_chunk(rows, kkc * z), kkc), f)
        dxp, _ = gen.scratch((n, hp, wp, c), f)
        fns = (to_nhwc_call(gen, t, n, o, oh, ow, 0, 0), col2im_rows_call(gen, t, c, kh, kw, oh, ow, hp, wp, g),
               from_nhwc_call(gen, t, n, c, h, wd, g[2], g[3]))
        blas_line(gen, o * kkc * rows,
                  f"K.conv2d_grad_input_rows({dy}, {w}, {out}, {dyr}, {wr}, {dcols}, {dxp}, {', '.join(fns)})")
        return
    if kernels.batch_first(oh, ow):
        nb = kernels.chunk(n, c * kh * kw * oh * ow * z)
        dcols, _ = gen.scratch((nb, c * kh * kw, oh * ow), f)
        dxp = gen.scratch((n, c, hp, wp), f)[0] if g[2] or g[3] else "None"
        scatter = None
        if gen.native_runs:  # backend='cpu': the taps' adds as one compiled loop
            from .native import col2im_bf_call
            scatter = col2im_bf_call(gen, op.results[0].type.dtype, c, kh, kw, oh, ow, hp, wp, g)
        tail = f", {scatter}" if scatter else ""
        blas_line(gen, o * c * kh * kw * oh * ow,
                  f"K.conv2d_grad_input_bf({dy}, {w}, {g!r}, {out}, {dcols}, {dxp}{tail})")
    else:
        rb = kernels.chunk(oh, c * kh * kw * ow * n * z)
        dyt, _ = gen.scratch((o * rb * ow * n,), f)
        dcols, _ = gen.scratch((c * kh * kw * rb * ow * n,), f)
        dxt, _ = gen.scratch((c, hp, wp, n), f)
        scatter = None
        if gen.native_runs:  # backend='cpu': the taps' adds as one compiled loop
            from .native import col2im_call
            scatter = col2im_call(gen, op.results[0].type.dtype, c, kh, kw, ow, n, hp, wp, g)
        tail = f", {scatter}" if scatter else ""
        blas_line(gen, o * c * kh * kw * rb * ow * n,
                  f"K.conv2d_grad_input_bl({dy}, {w}, {g!r}, {out}, {dyt}, {dcols}, {dxt}{tail})")


@register(("conv2d_grad_weight",), _plain_conv, inplace=False)
def _conv2d_grad_weight(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    x, dy = (gen.array(a) for a in args)
    n, c, h, wd = op.operands[0].shape
    _, o, oh, ow = op.operands[1].shape
    _, _, kh, kw = op.results[0].shape
    g = _geom(op)
    f = op.results[0].type.dtype.np
    hp, wp = h + 2 * g[2], wd + 2 * g[3]
    z = np.dtype(f).itemsize
    if _rows(gen, op, n, c, o, oh, ow):
        from .native import im2col_rows_call, to_nhwc_call
        t, kkc, rows = op.results[0].type.dtype, c * kh * kw, n * oh * ow
        xp, _ = gen.scratch((n, hp, wp, c), f)
        dyr, _ = gen.scratch((rows, o), f)
        cols, _ = gen.scratch((kernels.rows_chunk(rows, kkc * z), kkc), f)
        acc, _ = gen.scratch((o, kkc), f)
        part, _ = gen.scratch((o, kkc), f)
        fns = (to_nhwc_call(gen, t, n, c, h, wd, g[2], g[3]), to_nhwc_call(gen, t, n, o, oh, ow, 0, 0),
               im2col_rows_call(gen, t, c, kh, kw, oh, ow, hp, wp, g))
        blas_line(gen, o * kkc * rows,
                  f"K.conv2d_grad_weight_rows({x}, {dy}, {out}, {xp}, {dyr}, {cols}, {acc}, {part}, {', '.join(fns)})")
        return
    acc, _ = gen.scratch((o, c * kh * kw), f)
    if kernels.batch_first(oh, ow):
        nb = kernels.chunk(n, c * kh * kw * oh * ow * z)
        cols, _ = gen.scratch((nb, c, kh, kw, oh, ow), f)
        xp = gen.scratch((n, c, hp, wp), f)[0] if g[2] or g[3] else "None"
        part, _ = gen.scratch((nb, o, c * kh * kw), f)
        tail = _im2col(gen, op, c, kh, kw, oh, ow, hp, wp)
        blas_line(gen, o * c * kh * kw * oh * ow,
                  f"K.conv2d_grad_weight_bf({x}, {dy}, {g!r}, {out}, {cols}, {xp}, {part}, {acc}{tail})")
    else:
        rb = kernels.chunk(oh, c * kh * kw * ow * n * z)
        xt, _ = gen.scratch((c, hp, wp, n), f)
        cols, _ = gen.scratch((c * kh * kw * rb * ow * n,), f)
        dyt, _ = gen.scratch((o * rb * ow * n,), f)
        blas_line(gen, o * c * kh * kw * rb * ow * n,
                  f"K.conv2d_grad_weight_bl({x}, {dy}, {g!r}, {out}, {xt}, {cols}, {dyt}, {acc})")


def _tiles(op: Op) -> bool:
    """Non-overlapping windows (stride == kernel, no padding) of a float tensor."""
    a = op.attrs
    return floats(op) and list(a["kernel"]) == list(a["stride"]) and not any(a["padding"])


@register(("max_pool2d",), _tiles, inplace=False)
def _max_pool2d(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    if _native_pool(gen, op, args, out):
        return
    kh, kw = op.attrs["kernel"]
    gen.line(f"K.max_pool2d_tiles({gen.array(args[0])}, {kh}, {kw}, {out})")


def _native_pool(gen: Generator, op: Op, args: list[Ref], out: str) -> bool:
    """backend='cpu': the pool as one compiled loop over its windows (`native.pool_call`)."""
    if not gen.native_runs:
        return False
    from .native import pool_call
    line = pool_call(gen, op, args, out)
    if line is not None:
        gen.line(line)
    return line is not None


@register(("max_pool2d_grad",), _tiles, inplace=False)
def _max_pool2d_grad(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    if _native_pool(gen, op, args, out):
        return
    kh, kw = op.attrs["kernel"]
    dt_ = op.operands[1].type
    m, _ = gen.scratch(dt_.shape, dt_.dtype.np)
    taken, _ = gen.scratch(dt_.shape, np.bool_)
    hit, _ = gen.scratch(dt_.shape, np.bool_)
    gen.line(f"K.max_pool2d_grad_tiles({gen.array(args[0])}, {gen.array(args[1])}, {kh}, {kw}, {out}, {m}, "
             f"{taken}, {hit})")


# -- movement and gathers (reference rules that allocate or run np.pad) -------------------------------

def _index(lo: list[int], hi: list[int], step: list[int] | None = None) -> str:
    """A literal numpy index `[lo0:hi0:st0, ...]`."""
    step = step or [1] * len(lo)
    return "[" + ", ".join(f"{a}:{b}" + (f":{c}" if c != 1 else "") for a, b, c in zip(lo, hi, step)) + "]"


@register(("slice",), lambda op: len(op.results) == 1, inplace=False)
def _slice(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    """A copy of the strided view (the reference rule returns the view, which the fallback copied
    into a fresh array)."""
    a = op.attrs
    gen.line(f"np.copyto({out}, {gen.array(args[0])}{_index(a['start'], a['limit'], a['step'])})")


@register(("pad",), lambda op: len(op.results) == 1 and op.operands[0].type.dtype.np == op.results[0].type.dtype.np,
          inplace=False)
def _pad(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    """Only the borders filled (one slab per padded side) and the operand copied inside: np.pad
    allocates, fills everything and copies (a GPT step's q/k/v split gradient: 0.6 ms each)."""
    t = op.results[0].type
    lo, hi, shape = list(op.attrs["low"]), list(op.attrs["high"]), list(t.shape)
    with np.errstate(all="ignore"):
        fill = gen.const(np.asarray(op.attrs["value"]).astype(t.dtype.np)[()], "fill")
    full = [0] * len(shape)
    for d in range(len(shape)):
        if lo[d]:
            gen.line(f"{out}{_index(full, shape[:d] + [lo[d]] + shape[d + 1:])}.fill({fill})")
        if hi[d]:
            gen.line(f"{out}{_index(full[:d] + [shape[d] - hi[d]] + full[d + 1:], shape)}.fill({fill})")
    gen.line(f"np.copyto({out}{_index(lo, [n - h for n, h in zip(shape, hi)])}, {args[0].expr})")


@register(("one_hot",), lambda op: op.operands[0].type.dtype in INTS and len(op.results) == 1, inplace=False)
def _one_hot(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    gen.line(f"K.one_hot({gen.array(args[0])}, {out})")


@register(("index_add",), lambda op: op.operands[0].type.dtype in FLOATS and op.operands[1].type.dtype in INTS,
          inplace=False)
def _index_add(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    """Zeros, then np.add.at (the reference's loop, without its fresh array); not in place: `out`
    is zeroed before the values are read. backend='cpu': the same adds in the same order as one
    compiled loop (`native.index_add_call`; np.add.at took 0.6 ms for a GPT's 512x128 embedding
    gradient, the loop ~0.03)."""
    fn = None
    if gen.native_runs:
        from .native import index_add_call
        fn = index_add_call(gen, op)
    tail = f", {fn}" if fn else ""
    gen.line(f"K.index_add({gen.array(args[0])}, {gen.array(args[1])}, {out}{tail})")


# -- random numbers ---------------------------------------------------------------------------------

_RANDOM_DTYPES = (dt.float32, dt.float64, dt.float16, dt.bfloat16)


@register(("random",), lambda op: op.results[0].type.dtype in _RANDOM_DTYPES)
def _random(gen: Generator, op: Op, args: list[Ref], out: str) -> None:
    """The reference's counter-based numbers bit for bit (`kernels.random_uniform`/`random_normal`):
    the counters are a shared global, the keys come from the runtime seed per call (read before
    `out` is written), the hash runs in place on op-scoped 32-bit scratch."""
    t = op.results[0].type
    n = math.prod(t.shape)
    seed = args[0].expr  # a 0-d array or a numpy scalar: the kernel takes int() of it
    if gen.native_runs:  # backend='cpu': one compiled loop instead of ~30 numpy calls (f32/f64)
        from .native_random import call
        line = call(gen, op, seed, out)
        if line is not None:
            gen.line(line)
            return
    words = n if op.attrs["distribution"] == "uniform" else 2 * n
    ctr = gen.const(kernels.counters(words), "ctr")
    h, _ = gen.scratch((words,), np.int32)  # words as uint32 (the kernel's view; the IR has no uint32)
    tmp, _ = gen.scratch((words,), np.int32)
    if op.attrs["distribution"] == "uniform":
        gen.line(f"K.random_uniform({seed}, {ctr}, {UNIFORM_BITS[t.dtype.name]}, {out}, {h}, {tmp})")
    else:
        b, _ = gen.scratch((n,), np.float64)
        gen.line(f"K.random_normal({seed}, {ctr}, {out}, {h}, {tmp}, {b}, {t.dtype == dt.bfloat16})")


# -- placing ops ------------------------------------------------------------------------------------

IOTA_MAX_ELEMENTS = 1 << 20
"""An iota of at most this many elements is a global array made at generation time (a GPT step
recomputed ten position/causal-mask iotas through the reference rule, ~0.4 ms); larger ones are
computed per call rather than held."""


def _outlives(gen: Generator, src: Value, r: Value) -> bool:
    """Does `src`'s storage stay valid while top-level `r` is read? Planned storage is reused after
    the plan's lifetime of its value, which knows nothing of a lazy broadcast reading it later."""
    plan = gen.plan
    while plan is not None and src not in plan.lifetimes and src.op is not None and src.op.name == "stop_gradient":
        src = src.op.operands[0]  # an identity sharing its operand's storage (`emit_op`): that storage's lifetime
    if plan is None or (src not in plan.lifetimes and src.op is not None and src.op.name in ("reshape", "transpose")):
        return plan is None
    if src not in plan.lifetimes:
        return True  # an input, a constant, an output: never reused
    return r in plan.lifetimes and plan.lifetimes[src][1] >= plan.lifetimes[r][1]


def _lazy(gen: Generator, op: Op, top: bool) -> Ref | None:
    """Splat constants as scalars, broadcasts of arrays or scalars as un-materialized operands."""
    r = op.results[0]
    if op.name == "iota" and math.prod(r.type.shape) <= IOTA_MAX_ELEMENTS and r.type.dtype in (*FLOATS, *INTS):
        from avalon.ir import evaluate  # no operands: the same array every call, made once (a global)
        value = evaluate("iota", op.attrs, [], r.type)
        value.flags.writeable = False
        return Ref(gen.const(value, "k"), r.type)
    if op.name == "constant":
        from avalon.ir import evaluate
        if np.size(op.attrs["value"]) == 1:  # a splat of any shape: a scalar numpy broadcasts (no pass over it)
            one = evaluate("constant", {**op.attrs, "shape": []}, [], TensorType((), r.type.dtype))
            return Ref(gen.const(one.reshape(-1)[0], "k"), r.type, "scalar")
        value = evaluate("constant", op.attrs, [], r.type)
        if value.size == 1:
            return Ref(gen.const(value.reshape(-1)[0], "k"), r.type, "scalar")
        return Ref(gen.const(value, "k"), r.type)  # dense: a global array, never written
    if op.name == "broadcast":
        src = gen.env[op.operands[0]]
        if src.kind == "scalar":
            return Ref(src.expr, r.type, "scalar")
        if top and not _outlives(gen, op.operands[0], r):
            return None
        ref = Ref(src.expr, r.type, "bcast", slot=src.slot, source=src.source or src.type)  # reads the
        # source's storage while it lives
        gen.hold(ref)
        return ref
    return None


def _view(gen: Generator, op: Op) -> Ref | None:
    """reshape / transpose of a real array as a numpy view (sharing the operand's storage)."""
    src = gen.env[op.operands[0]]
    r = op.results[0]
    if src.kind == "scalar":
        return Ref(src.expr, r.type, "scalar")
    if src.lazy:
        return None
    name = gen.fresh_name()
    if op.name == "reshape":
        gen.line(f"{name} = {src.expr}.reshape({tuple(r.type.shape)!r})")
    else:
        gen.line(f"{name} = {src.expr}.transpose({tuple(op.attrs['perm'])!r})")
    if op.name == "transpose" or src.expr in gen.strided:
        gen.strided.add(name)  # C loops index what they write row-major (`native._function`)
    ref = Ref(name, r.type, slot=src.slot)
    gen.hold(ref)
    return ref


def _fallback(gen: Generator, op: Op, out: str | None) -> Ref:
    """The op's reference rule through `evaluate`; copied into `out` when one is given."""
    r = op.results[0]
    gen.stats["fallback"] += 1
    if len(op.results) != 1:
        msg = f"op '{op.name}' has {len(op.results)} results; reference rules give one"
        gen.line(f"raise NotImplementedError({msg!r})")
        return Ref("None", r.type)
    attrs, rtype = gen.const(dict(op.attrs), "attrs"), gen.const(r.type, "t")
    args = ", ".join(gen.owned_array(gen.env[v]) for v in op.operands)
    call = f"_ev({op.name!r}, {attrs}, [{args}], {rtype})"
    if out is not None:
        gen.line(f"np.copyto({out}, {call})")
        return Ref(out, r.type)
    if gen.run_start is not None:
        # a native run is open (backend="cpu"): its lines may become one C call that computes this op
        # (sin, cos) and stores the value, so the array must exist before the run, not be this line's
        name = gen.new_array(r.type)
        gen.line(f"np.copyto({name}, {call})")
        return Ref(name, r.type, fresh=True)
    name = gen.fresh_name()
    # rules of view ops (and a same-dtype cast) may hand back their operand: copy to own the result
    copy = op.name in ("reshape", "transpose", "slice", "cast")
    gen.line(f"{name} = {call}" + (".copy()" if copy else ""))
    return Ref(name, r.type, fresh=True)


def emit_op(gen: Generator, op: Op, top: bool = False, dest: Callable[[Value, OpEmitter | None], Ref] | None = None
            ) -> None:
    """Emit one op (not a fused group). `dest(result, emitter)` picks its storage (inside groups);
    a top-level result goes to its planned buffer, else a fresh array."""
    r = op.results[0] if op.results else None
    lazy = _lazy(gen, op, top) if r is not None else None
    if lazy is not None:
        gen.env[r] = lazy
        return
    # an identity: the operand's storage (a top-level check copies: the memory plan does not know its result
    # shares its operand's storage, which a later op may reuse while the result, an output, is still read)
    if op.name == "stop_gradient" and not (top and gen.is_planned(r)) or op.name == "check" and not top:
        if op.name == "check":
            gen.line(f"K.check({gen.array(gen.env[op.operands[1]])}, {op.attrs['message']!r}, {op.attrs['error']!r}, "
                     f"{_source_line(op)})")
        src = gen.env[op.operands[0]]
        gen.env[r] = ref = Ref(src.expr, r.type, src.kind, slot=src.slot, source=src.source)
        gen.hold(ref)
        return
    if op.name in ("reshape", "transpose") and (not top or gen.target.is_view(op) and not gen.is_planned(r)):
        ref = _view(gen, op)
        if ref is not None:
            gen.env[r] = ref
            return
    em = EMITTERS.get(op.name)
    if em is not None and not em.accepts(op):
        em = None
    if r is None:
        return
    final: Ref | None = None  # where the result goes when `out` is a stand-in
    if dest is None:
        donated = gen.donated_store(r) if top else None
        planned = donated.expr if donated else gen.planned(r)
        if em is None:
            ref = _fallback(gen, op, planned)
            gen.env[r] = donated or ref
            return
        out = donated or (Ref(planned, r.type) if planned else Ref(gen.new_array(r.type), r.type, fresh=True))
        if planned and not em.inplace and gen.plan is not None and r in gen.plan.inplace:
            final, out = out, Ref(gen.scratch(r.type.shape, r.type.dtype.np)[0], r.type)
    else:
        if em is None:
            ref = _fallback(gen, op, None)
            target = dest(r, None)
            if target is not None:
                gen.line(f"np.copyto({target.expr}, {ref.expr})")
                ref = target
            gen.env[r] = ref
            return
        out = dest(r, em)
    gen.stats["fast"] += 1
    args = [gen.env[v] for v in op.operands]
    if op.name in ("reshape", "transpose"):
        src = gen.array(args[0])
        expr = f"{src}.reshape({tuple(r.type.shape)!r})" if op.name == "reshape" else \
            f"{src}.transpose({tuple(op.attrs['perm'])!r})"
        gen.line(f"np.copyto({out.expr}, {expr})")
    else:
        em.emit(gen, op, args, out.expr)
    if final is not None:
        gen.line(f"np.copyto({final.expr}, {out.expr})")
        out = final
    gen.env[r] = out


for _n in ("reshape", "transpose"):
    EMITTERS[_n] = OpEmitter(lambda gen, op, args, out: None, lambda op: True)
