"""Scalar bodies of the elementwise ops (arith and math inside a `linalg.generic`).

`SCALAR[name](e, attrs, args, out) -> V` computes one result element from one element per operand.
They follow the reference conventions (`avalon.ir.reference.core`): f16/bf16 compute in f32 and
round once; i1 operands of `bool_as_int` ops act as 0/1 (add is or, mul is and, sub is xor);
float comparisons are ordered except `ne` (nan != x); integer division truncates toward zero and
gives 0 for a zero divisor and MIN for MIN / -1 (as the reference does, instead of a trap).

uint8 is the signless i8 here (upstream arith has no unsigned types): its division, remainder,
comparisons, max/min and conversions are the unsigned variants (`divui`, `cmpi ult`, `maxui`, `extui`,
`uitofp`); add, sub and mul are the same bits either way. Floats go to the 8- and 16-bit integers
through i64 (`fptosi` then `trunci`), wrapping as the reference and torch do.
"""
from __future__ import annotations

from collections.abc import Callable

from avalon.ir import DType
from avalon.ir import dtypes as dt

from .emitter import LinalgEmitter, V

ScalarFn = Callable[[LinalgEmitter, dict, list[V], DType], V]
SCALAR: dict[str, ScalarFn] = {}
LOW = (dt.float16, dt.bfloat16)


def _rule(*names: str) -> Callable[[ScalarFn], ScalarFn]:
    def deco(fn: ScalarFn) -> ScalarFn:
        for n in names:
            SCALAR[n] = fn
        return fn
    return deco


def widen(e: LinalgEmitter, x: V) -> V:
    return e.convert("arith.extf", x, dt.float32) if x.d in LOW else x


def narrow(e: LinalgEmitter, x: V, d: DType) -> V:
    """An f32 result back to a low-precision `d` (round to nearest even)."""
    if d == dt.bfloat16 and x.d == dt.float32:
        return to_bf16(e, x)
    return e.convert("arith.truncf", x, d) if d in LOW and x.d == dt.float32 else x


def to_bf16(e: LinalgEmitter, x: V) -> V:
    """f32 -> bf16 rounded to nearest even on the bits first, as the reference's `round_bf16` (nan
    stays a quiet nan of its sign), so the `arith.truncf` after it is exact: IREE's CPU backend
    computes bf16 in f32 and folds `extf(truncf(x))` in one body into x, dropping the rounding."""
    i32 = dt.int32
    bits = e.convert("arith.bitcast", x, i32)
    lsb = e.arith("arith.andi", e.arith("arith.shrui", bits, e.const(16, i32)), e.const(1, i32))
    high = e.const(-65536, i32)  # 0xFFFF0000
    rounded = e.arith("arith.andi", e.arith("arith.addi", e.arith("arith.addi", bits, e.const(0x7FFF, i32)), lsb), high)
    nan = e.arith("arith.andi", e.arith("arith.ori", bits, e.const(0x00400000, i32)), high)
    r = e.select(e.cmp("cmpf", "uno", x, x), nan, rounded)
    return e.convert("arith.truncf", e.convert("arith.bitcast", r, dt.float32), dt.bfloat16)


def _float_unary(fn: Callable[[LinalgEmitter, V], V]) -> ScalarFn:
    return lambda e, a, args, out: narrow(e, fn(e, widen(e, args[0])), out)


_MATH = {"exp": "math.exp", "log": "math.log", "tanh": "math.tanh", "sqrt": "math.sqrt", "erf": "math.erf",
         "sin": "math.sin", "cos": "math.cos"}
for _n, _m in _MATH.items():
    SCALAR[_n] = _float_unary(lambda e, x, m=_m: e.arith(m, x))


def _erf64(e: LinalgEmitter, x: V) -> V:
    """f64 erf without `math.erf`, which IREE cannot compile for f64 (it expands only the f32 one):
    erf(x) = 2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (1 3 5 ... (2n+1)), a series of positive terms
    (no cancellation), 120 of them reaching 1e-15 relative up to |x| = 6, beyond which erf is +-1 in
    f64; nan stays nan."""
    ax = e.arith("arith.minimumf", e.arith("math.absf", x), e.const(6.0, x.d))
    x2 = e.arith("arith.mulf", ax, ax)
    two_x2 = e.arith("arith.addf", x2, x2)
    t = s = ax
    for n in range(1, 120):
        t = e.arith("arith.mulf", e.arith("arith.mulf", t, two_x2), e.const(1.0 / (2 * n + 1), x.d))
        s = e.arith("arith.addf", s, t)
    r = e.arith("arith.mulf", e.arith("math.exp", e.arith("arith.negf", x2)), s)
    r = e.arith("arith.minimumf", e.arith("arith.mulf", r, e.const(2.0 / 3.141592653589793 ** 0.5, x.d)),
                e.const(1.0, x.d))
    return e.arith("math.copysign", r, x)


SCALAR["erf"] = _float_unary(lambda e, x: _erf64(e, x) if x.d == dt.float64 else e.arith("math.erf", x))
SCALAR["rsqrt"] = _float_unary(lambda e, x: e.arith("arith.divf", e.const(1.0, x.d), e.arith("math.sqrt", x)))


@_rule("sigmoid")
def _sigmoid(e: LinalgEmitter, attrs: dict, args: list[V], out: DType) -> V:
    """exp(min(x, 0)) / (1 + exp(-|x|)): never overflows (the reference's formula)."""
    x = widen(e, args[0])
    zero, one = e.const(0.0, x.d), e.const(1.0, x.d)
    num = e.arith("math.exp", e.arith("arith.minimumf", x, zero))
    den = e.arith("arith.addf", one, e.arith("math.exp", e.arith("arith.negf", e.arith("math.absf", x))))
    return narrow(e, e.arith("arith.divf", num, den), out)


def _int_ops(d: DType, fop: str, iop: str) -> str:
    return fop if d.is_float else iop


_UNSIGNED = {"arith.maxsi": "arith.maxui", "arith.minsi": "arith.minui", "arith.divsi": "arith.divui",
             "arith.remsi": "arith.remui", "arith.extsi": "arith.extui", "arith.sitofp": "arith.uitofp",
             "arith.fptosi": "arith.fptoui", "arith.shrsi": "arith.shrui", "slt": "ult", "sle": "ule", "sgt": "ugt",
             "sge": "uge"}


def unsigned(opname: str, d: DType) -> str:
    """An integer op or `cmpi` predicate in its unsigned form when `d` is uint8 (`arith.maxsi` ->
    `arith.maxui`, `slt` -> `ult`, `arith.extsi` -> `arith.extui`, ...), else as given."""
    return _UNSIGNED.get(opname, opname) if d == dt.uint8 else opname


def _unary(name: str) -> ScalarFn:
    def fn(e: LinalgEmitter, attrs: dict, args: list[V], out: DType) -> V:
        x = widen(e, args[0])
        if x.d == dt.bool_:
            return x  # -b, |b|, relu(b), sign(b) as 0/1 integers are b again
        zero = e.const(0, x.d)
        if name == "neg":
            r = e.arith("arith.negf", x) if x.d.is_float else e.arith("arith.subi", zero, x)
        elif x.d == dt.uint8 and name != "sign":
            r = x  # |x| and relu(x) of unsigned values are x
        elif name == "abs":
            r = e.arith("math.absf" if x.d.is_float else "math.absi", x)
        elif name == "relu":
            r = e.arith(_int_ops(x.d, "arith.maximumf", "arith.maxsi"), x, zero)
        else:
            kind, gt, lt = ("cmpf", "ogt", "olt") if x.d.is_float else ("cmpi", unsigned("sgt", x.d),
                                                                          unsigned("slt", x.d))
            one, minus = e.const(1, x.d), e.const(-1, x.d)
            r = e.select(e.cmp(kind, gt, x, zero), one, e.select(e.cmp(kind, lt, x, zero), minus, zero))
        return narrow(e, r, out)
    return fn


for _n in ("neg", "abs", "relu", "sign"):
    SCALAR[_n] = _unary(_n)

_BINARY = {"add": ("arith.addf", "arith.addi", "arith.ori"), "sub": ("arith.subf", "arith.subi", "arith.xori"),
           "mul": ("arith.mulf", "arith.muli", "arith.andi"),
           "maximum": ("arith.maximumf", "arith.maxsi", "arith.ori"),
           "minimum": ("arith.minimumf", "arith.minsi", "arith.andi")}


def _binary(name: str) -> ScalarFn:
    fop, iop, bop = _BINARY[name]

    def fn(e: LinalgEmitter, attrs: dict, args: list[V], out: DType) -> V:
        x, y = widen(e, args[0]), widen(e, args[1])
        opname = bop if x.d == dt.bool_ else fop if x.d.is_float else unsigned(iop, x.d)
        return narrow(e, e.arith(opname, x, y), out)
    return fn


for _n in _BINARY:
    SCALAR[_n] = _binary(_n)


@_rule("div")
def _div(e: LinalgEmitter, attrs: dict, args: list[V], out: DType) -> V:
    x, y = widen(e, args[0]), widen(e, args[1])
    if x.d.is_float:
        return narrow(e, e.arith("arith.divf", x, y), out)
    if x.d == dt.bool_:
        return e.arith("arith.andi", x, y)  # 1/1 = 1, 0/1 = 0, x/0 = 0
    # both traps of the hardware divide (SIGFPE on x86) get divisor 1: y = 0 (the result is then 0)
    # and MIN / -1 (the result is MIN, the wrapped quotient, as in the reference)
    zero, one = e.const(0, x.d), e.const(1, x.d)
    bad = e.cmp("cmpi", "eq", y, zero)
    if x.d.is_unsigned:
        return e.select(bad, zero, e.arith("arith.divui", x, e.select(bad, one, y)))
    lowest = e.const(-(1 << (x.d.itemsize * 8 - 1)), x.d)
    wraps = e.arith("arith.andi", e.cmp("cmpi", "eq", x, lowest), e.cmp("cmpi", "eq", y, e.const(-1, x.d)))
    safe = e.select(e.arith("arith.ori", bad, wraps), one, y)
    return e.select(bad, zero, e.arith("arith.divsi", x, safe))


@_rule("pow")
def _pow(e: LinalgEmitter, attrs: dict, args: list[V], out: DType) -> V:
    x, y = widen(e, args[0]), widen(e, args[1])
    if x.d.is_float:
        return narrow(e, _fpow(e, x, y), out)
    if x.d == dt.bool_:
        return e.arith("arith.ori", x, e.arith("arith.xori", y, e.const(True, dt.bool_)))  # 0**0 = 1
    # integer powers by squaring on |y| bits; a negative exponent truncates: 1, +-1 or 0
    zero, one = e.const(0, x.d), e.const(1, x.d)
    negative = e.cmp("cmpi", unsigned("slt", x.d), y, zero)  # (never, for uint8)
    r = _ipow(e, x, e.select(negative, zero, y))
    minus = e.const(-1, x.d)
    odd = e.cmp("cmpi", "ne", e.arith("arith.andi", y, one), zero)
    small = e.select(e.cmp("cmpi", "eq", x, one), one,
                     e.select(e.cmp("cmpi", "eq", x, minus), e.select(odd, minus, one), zero))
    return e.select(negative, small, r)


def _fpow(e: LinalgEmitter, x: V, y: V) -> V:
    """C `pow` (numpy's, the reference's) with `math.powf` only on |x|: IREE expands powf as
    exp(y * log x), which is nan for any x < 0 and for 0 ** 0. The sign comes from an odd integral
    y; a finite x < 0 with a non-integral y is nan; y = 0 and x = 1 give 1 (even with a nan)."""
    zero, one, half = e.const(0.0, x.d), e.const(1.0, x.d), e.const(0.5, x.d)
    ax = e.arith("math.absf", x)
    mag = e.select(e.cmp("cmpf", "oeq", ax, one), one, e.arith("math.powf", ax, y))  # (-1) ** inf = 1
    integral = e.cmp("cmpf", "oeq", e.arith("math.floor", y), y)  # true for +-inf, false for nan
    h = e.arith("arith.mulf", y, half)
    odd = e.arith("arith.andi", integral, e.cmp("cmpf", "une", e.arith("math.floor", h), h))
    r = e.select(odd, e.arith("math.copysign", mag, x), mag)  # x = -0 keeps its sign too
    finite_neg = e.arith("arith.andi", e.cmp("cmpf", "olt", x, zero),
                         e.cmp("cmpf", "one", x, e.const(float("-inf"), x.d)))
    bad = e.arith("arith.andi", finite_neg, e.arith("arith.xori", integral, e.const(True, dt.bool_)))
    r = e.select(bad, e.const(float("nan"), x.d), r)
    unit = e.arith("arith.ori", e.cmp("cmpf", "oeq", y, zero), e.cmp("cmpf", "oeq", x, one))
    return e.select(unit, one, r)


def _ipow(e: LinalgEmitter, x: V, y: V) -> V:
    """x ** y for y >= 0 by squaring over every bit of y, wrapping like the reference
    (math.ipowi would be shorter, but IREE's llvm-cpu backend cannot legalize it)."""
    one = e.const(1, x.d)
    r, base = one, x
    for k in range(x.d.bits - (0 if x.d.is_unsigned else 1)):
        bit = e.cmp("cmpi", "ne", e.arith("arith.andi", e.arith("arith.shrui", y, e.const(k, x.d)), one),
                    e.const(0, x.d))
        r = e.select(bit, e.arith("arith.muli", r, base), r)
        base = e.arith("arith.muli", base, base)
    return r


_CMP = {"eq": ("oeq", "eq", "eq"), "ne": ("une", "ne", "ne"), "lt": ("olt", "slt", "ult"),
        "le": ("ole", "sle", "ule"), "gt": ("ogt", "sgt", "ugt"), "ge": ("oge", "sge", "uge")}


def _compare(name: str) -> ScalarFn:
    fp, ip, bp = _CMP[name]

    def fn(e: LinalgEmitter, attrs: dict, args: list[V], out: DType) -> V:
        x, y = widen(e, args[0]), widen(e, args[1])
        if x.d.is_float:
            return e.cmp("cmpf", fp, x, y)
        return e.cmp("cmpi", bp if x.d.is_unsigned else ip, x, y)  # i1 compares unsigned: true is 1
    return fn


for _n in _CMP:
    SCALAR[_n] = _compare(_n)
SCALAR["logical_and"] = lambda e, a, args, out: e.arith("arith.andi", *args)
SCALAR["logical_or"] = lambda e, a, args, out: e.arith("arith.ori", *args)
SCALAR["logical_not"] = lambda e, a, args, out: e.arith("arith.xori", args[0], e.const(True, dt.bool_))
SCALAR["stop_gradient"] = lambda e, a, args, out: args[0]
SCALAR["where"] = lambda e, a, args, out: e.select(*args)


@_rule("cast")
def _cast_rule(e: LinalgEmitter, attrs: dict, args: list[V], out: DType) -> V:
    return cast(e, args[0], out)


def cast(e: LinalgEmitter, x: V, to: DType) -> V:
    """Convert like the reference (numpy astype): float -> int truncates toward zero, anything ->
    i1 is `!= 0` (nan is true), i1 -> number is 0/1, to bf16/f16 rounds to nearest even."""
    src = x.d
    if src == to:
        return x
    if to == dt.bool_:
        if src.is_float:
            return e.cmp("cmpf", "une", x, e.const(0.0, src))
        return e.cmp("cmpi", "ne", x, e.const(0, src))
    if src == dt.bool_:
        return e.convert("arith.uitofp" if to.is_float else "arith.extui", x, to)
    if src.is_float and to.is_float:
        if src in LOW and to in LOW:
            x = widen(e, x)
            src = x.d
        if to.itemsize > src.itemsize:
            return e.convert("arith.extf", x, to)
        if to == dt.bfloat16:  # (f64 through f32, as the reference rounds it)
            return to_bf16(e, x if src == dt.float32 else e.convert("arith.truncf", x, dt.float32))
        return e.convert("arith.truncf", x, to)
    if src.is_float:
        if to in dt.SMALL_INTS:  # through i64, wrapping as the reference (torch's CPU kernels)
            return e.convert("arith.trunci", e.convert("arith.fptosi", x, dt.int64), to)
        return e.convert("arith.fptosi", x, to)
    if to == dt.bfloat16:  # (through f32, as the reference rounds it)
        return to_bf16(e, e.convert(unsigned("arith.sitofp", src), x, dt.float32))
    if to.is_float:
        return e.convert(unsigned("arith.sitofp", src), x, to)
    if to.itemsize == src.itemsize:
        return V(x.name, to)  # uint8 <-> int8: the same i8 bits
    return e.convert(unsigned("arith.extsi", src) if to.itemsize > src.itemsize else "arith.trunci", x, to)

