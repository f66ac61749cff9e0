"""Array operations on Tensors, numpy arrays and Python scalars, with numpy broadcasting and dtype
promotion made explicit: each call inserts the `broadcast`/`cast` ops the IR needs and binds one
primitive. `bind` runs the primitive eagerly on the reference rule, or records it when tracing."""
from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..device import CPU
from ..ir import ShapeError, TensorType, Value
from ..ir import dtypes as dt
from ..ir.builder import make_op
from ..ir.dtypes import DType
from ..ir.reference import evaluate
from ..tensor import Tensor, as_array, default_float_dtype
from ..trace import current_trace, located, user_location
from ..views import Permute, Reshape, link
from .dtype_kernels import DTypeRuntimeError, check_dtype, refuses

Scalar = (int, float, bool, np.integer, np.floating, np.bool_)


# -- binding one primitive --------------------------------------------------------------------

def _type_of(x: Any) -> TensorType:
    if isinstance(x, Tensor):
        return TensorType(x.shape, x.dtype)
    a = np.asarray(x)
    return TensorType(a.shape, dt.dtype(a.dtype))


def _frozen(v: Any) -> Any:
    """`v` as part of a dict key that tells apart what `==` does not: 1 from True from 1.0, 0.0 from
    -0.0 (floats by their bits; NaN equals itself); None when `v` cannot be a key (an array)."""
    t = type(v)
    if t is int or t is bool or t is str or v is None or t is DType:
        return (t, v)
    if t is list or t is tuple:
        if all(type(x) is int for x in v):  # shapes, dims, permutations: the common case, kept cheap
            return (t, tuple(v))
        out = tuple(_frozen(x) for x in v)
        return None if None in out else (t, out)
    if isinstance(v, (float, np.floating)):
        return (t, float(v).hex())
    if isinstance(v, (np.integer, np.bool_)):
        return (t, v.item())
    return None


def _frozen_attrs(attrs: dict[str, Any]) -> tuple | None:
    out = []
    for k, v in attrs.items():
        f = _frozen(v)
        if f is None:
            return None
        out.append((k, f))
    return tuple(out)


_EAGER_TYPES: dict[tuple, tuple[dict[str, Any], TensorType]] = {}
"""(op, operand shapes and dtypes, attrs) -> (normalized attrs, result type): eager calls repeat the
same few signatures, and building an IR op to infer its type cost most of an eager call. Inference
is a pure function of that key; a failure is never stored, so it raises again with the user's line."""


def _signature(opname: str, operands: tuple, attrs: dict[str, Any]) -> tuple[dict[str, Any], TensorType]:
    key_attrs = _frozen_attrs(attrs)
    key = None
    if key_attrs is not None:
        key = (opname, key_attrs, *[(o.shape, o._dtype) if isinstance(o, Tensor) else _type_of(o)
                                    for o in operands])
        hit = _EAGER_TYPES.get(key)
        if hit is not None:
            return hit
    try:
        op = make_op(opname, [Value(_type_of(o)) for o in operands], attrs)
    except (ShapeError, TypeError) as e:
        raise located(e, user_location()) from None
    out = (op.attrs, op.results[0].type)
    if key is not None:
        if len(_EAGER_TYPES) >= 4096:  # a float attribute that changes every call: start over
            _EAGER_TYPES.clear()
        _EAGER_TYPES[key] = out
    return out


def bind(opname: str, *operands: Any, **attrs: Any) -> Tensor:
    """Apply primitive `opname`: recorded in the active trace, or run now on the reference rule."""
    tr = current_trace()
    if tr is not None:
        return tr.emit(opname, list(operands), attrs)[0]
    op_attrs, rt = _signature(opname, operands, attrs)
    dev = None  # the operands' one device, or CPU where they are on several
    for o in operands:
        if isinstance(o, Tensor):
            dev = o._device if dev is None or dev == o._device else CPU
    arrays = [as_array(o) for o in operands]
    try:
        out = evaluate(opname, op_attrs, arrays, rt)
    except (IndexError, ValueError, ArithmeticError) as e:  # a bad value (an index out of range): the user's line
        raise _relocated(e) from None
    if not out.flags.c_contiguous:
        out = np.ascontiguousarray(out).reshape(out.shape)  # keep 0-d as 0-d
    if out.base is not None and builtins.any(np.may_share_memory(out, a) for a in arrays):
        out = out.copy()  # numpy's view of an operand: aliasing is views.py's business, not numpy's
    res = Tensor._wrap(out, rt.dtype, CPU)
    return res if dev is None or dev == CPU else res.to(dev)


def _relocated(e: Exception) -> Exception:
    """`e` with the user's file and line in front, as tracing gives shape errors; an exception that
    cannot be rebuilt from its message keeps its type and gets the line as a note instead."""
    loc = user_location()
    if loc is None or getattr(e, "location", None) is not None:
        return e
    try:
        return located(e, loc)
    except TypeError:
        if hasattr(e, "add_note"):  # Python >= 3.11
            e.add_note(f"at {loc}")
        return e


# -- argument checks --------------------------------------------------------------------------

class ArgumentError(ShapeError, RuntimeError):
    """Arguments that do not fit each other (a dim named twice, a weight per class of the wrong
    length, ...): torch raises RuntimeError here, and Avalon's ShapeError (a ValueError) still
    catches what it caught before."""


class IntegerDivisionError(RuntimeError, ZeroDivisionError):
    """Integer division or remainder by zero: torch's RuntimeError('ZeroDivisionError'), and also
    Python's own ZeroDivisionError."""


class IndexRangeError(IndexError, RuntimeError):
    """An index argument out of its range (gather, scatter, index_add, narrow): torch's
    RuntimeError('index 5 is out of bounds for dimension 1 with size 5'), and the IndexError
    Avalon raised before (and Python raises)."""


class DTypeNotImplementedError(TypeError, NotImplementedError):
    """An op torch has no kernel for at an operand's dtype (bitwise ops and shifts of floats, histc
    of integers): torch's NotImplementedError('"lshift_cpu" not implemented for 'Float''), and
    the TypeError Avalon raised before."""


class FloatingInputError(ArgumentError, NotImplementedError):
    """An integer or bool input to a function of floats (softmax, the norms, mean): torch's
    NotImplementedError('"softmax_lastdim_kernel_impl" not implemented for 'Long'') or its
    RuntimeError (mean), and the ArgumentError Avalon raised before."""


def fail(err: Exception) -> Exception:
    """`err` with the user's file and line in front, to raise: `raise fail(IndexError(...))`."""
    return located(err, user_location())


def check_dim(op: str, dim: Any, ndim: int, *, new: bool = False) -> int:
    """`dim` as an index in [0, ndim), negative dims counting from the end (torch's maybe_wrap_dim).
    A dim out of range is torch's IndexError naming `op` and the user's line, never wrapped modulo
    ndim, which silently picked another dim. `new=True` allows one past the end (unsqueeze,
    stack); a 0-d tensor takes dims -1 and 0, as in torch."""
    try:
        d = operator.index(dim)
    except TypeError:
        raise fail(TypeError(f"{op}: argument 'dim' must be an int, got {type(dim).__name__} {dim!r}")) from None
    n = builtins.max(ndim + int(new), 1)
    if not -n <= d < n:
        raise fail(IndexError(f"{op}: Dimension out of range (expected to be in range of [{-n}, {n - 1}], "
                              f"but got {d})"))
    return d % n


def check_dims(op: str, dims: Any, ndim: int) -> list[int]:
    """One dim or a sequence of them, each checked by `check_dim`, none named twice (torch's dim lists)."""
    out: list[int] = []
    many = isinstance(dims, (tuple, list, range)) or (isinstance(dims, np.ndarray) and dims.ndim > 0)
    for d in (list(dims) if many else [dims]):
        k = check_dim(op, d, ndim)
        if k in out and ndim:
            raise fail(ArgumentError(f"{op}: dim {k} appears multiple times in the list of dims"))
        out.append(k)
    return out


# -- operand coercion -------------------------------------------------------------------------

def _is_scalar(x: Any) -> bool:
    return isinstance(x, Scalar)


def _as_operand(x: Any) -> Any:
    """Tensors stay; arrays and lists become Tensors."""
    if isinstance(x, Tensor):
        return x
    if _is_scalar(x):
        return x
    return Tensor(as_array(x))


def _scalar_dtype(x: Any, other: DType) -> DType:
    if isinstance(x, (bool, np.bool_)):
        return other
    if isinstance(x, (int, np.integer)):
        return other if other is not dt.bool_ else dt.int64
    return other if other.is_float else default_float_dtype()


def _category(d: DType) -> int:
    return 2 if d.is_float else 0 if d is dt.bool_ else 1


def result_dtype(*xs: Any) -> DType:
    """torch's type promotion: tensors with dims decide; a 0-d tensor (then a Python number) only
    where it is of a higher category (bool < integer < float), so f32 * f64-scalar-tensor stays f32.
    One pass: every eager binary op asks."""
    d: DType | None = None  # of the tensors with dims
    z: DType | None = None  # of the 0-d tensors
    scalars = []
    for x in xs:
        if isinstance(x, Scalar):
            scalars.append(x)
        elif x.shape:
            d = x.dtype if d is None else dt.promote(d, x.dtype)
        else:
            z = x.dtype if z is None else dt.promote(z, x.dtype)
    if d is None and z is None:
        return default_float_dtype() if any(isinstance(x, (float, np.floating)) for x in xs) else dt.int64
    if d is None or (z is not None and _category(z) > _category(d)):
        d = z
    assert d is not None
    for x in scalars:
        d = dt.promote(d, _scalar_dtype(x, d))
    return d


def dtype_arg(fn: str, dtype: Any) -> DType:
    """`dtype` as an Avalon DType, or an error naming the function and the argument."""
    try:
        return dt.dtype(dtype)
    except (TypeError, ValueError, KeyError):
        raise TypeError(f"{fn}: argument 'dtype' = {dtype!r} is not supported; Avalon has "
                        f"{', '.join(d.name for d in dt.ALL)}") from None


def unsupported(fn: str, **kwargs: Any) -> None:
    """Reject torch arguments Avalon has no meaning for (out=, layout=, ...) by name."""
    for k, v in kwargs.items():
        if v is not None and v is not False:
            raise TypeError(f"{fn}: argument '{k}' is not supported")


def size_args(fn: str, size: tuple) -> tuple[int, ...]:
    """torch's `*size`: `f(2, 3)` or `f((2, 3))` (or a torch.Size / list)."""
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    out = []
    for s in size:
        if isinstance(s, Tensor):
            s = int(s)
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"{fn}: argument 'size' must be ints or one tuple of ints, got {s!r}")
        if s < 0:
            raise ValueError(f"{fn}: negative size {int(s)} in {tuple(size)}")
        out.append(int(s))
    return tuple(out)


def _fill_dtype(value: Any) -> DType:
    """torch's default dtype for a fill value: bool -> bool, int -> i64, float -> the default (f32)."""
    if isinstance(value, (bool, np.bool_)):
        return dt.bool_
    if isinstance(value, (int, np.integer)):
        return dt.int64
    return default_float_dtype()


def place(t: Tensor, device: Any) -> Tensor:
    return t if device is None else t.to(device)


def full(size: Sequence[int], fill_value: Any, dtype: Any = None, *, device: Any = None,
         requires_grad: bool = False, out: Any = None, layout: Any = None) -> Tensor:
    """torch.full: dtype defaults to the fill value's (bool, i64 or f32)."""
    unsupported("full", out=out, layout=layout)
    d = dtype_arg("full", dtype) if dtype is not None else _fill_dtype(fill_value)
    v = fill_value.item() if isinstance(fill_value, Tensor) else fill_value
    return place(_constant(size_args("full", (size,)), fits(v, d), d), device)


_FLOAT_MAX = {dt.float32: float(np.finfo(np.float32).max), dt.float16: float(np.finfo(np.float16).max),
              dt.bfloat16: float(np.array(0x7F7F0000, np.uint32).view(np.float32))}


def fits(v: Any, d: DType) -> Any:
    """Python number `v` as a fill value of dtype `d`, with torch's overflow check where numpy wraps
    in silence (full, fill_, masked_fill, clamp's bounds: `full((2,), 300, dtype=int8)` held 44). As
    torch: uint8 takes negatives (two's complement); a finite float past the largest finite value
    of f32, f16 or bf16 is refused even where it would round down to it (65519 in f16), inf and nan
    are kept."""
    if d is dt.bool_ or not isinstance(v, (int, float, np.number)) or isinstance(v, bool):
        return v
    if d.is_float:
        top = _FLOAT_MAX.get(d)
        if top is not None and math.isfinite(v) and builtins.abs(v) > top:
            raise located(RuntimeError(f"value cannot be converted to type {d.name} without overflow (got {v})"),
                          user_location())
        return v
    lo, hi = dt.int_range(d)
    lo = lo if lo < 0 else dt.int_range(dt.int64)[0]
    if not (math.isfinite(v) and lo <= int(v) <= hi):
        raise located(RuntimeError(f"value cannot be converted to type {d.name} without overflow (got {v})"),
                      user_location())
    return v


def _constant(shape: Sequence[int], v: Any, d: DType) -> Tensor:
    """A tensor of `shape` holding Python number `v` stored as dtype `d`: an integer out of range
    wraps, as torch stores a scalar operand (`int8_tensor + 300` adds 44); `fits` checks first
    where torch does."""
    v = bool(v) if d is dt.bool_ else (dt.wrap(int(v), d) if not d.is_float else float(v))
    return bind("constant", value=v, shape=list(shape), dtype=d)


def cast(x: Any, dtype: Any) -> Tensor:
    d = dt.dtype(dtype)
    x = _as_operand(x)
    if _is_scalar(x):
        return _constant((), x, d)
    return x if x.dtype == d else bind("cast", x, dtype=d)


def broadcast_to(input: Any, size: Sequence[int]) -> Tensor:
    x = _as_operand(input)
    shape = tuple(int(s) for s in size)
    if -1 in shape and not _is_scalar(x):  # torch.broadcast_to's -1 keeps that dim, as Tensor.expand's
        lead = len(shape) - x.ndim
        if -1 in shape[:lead if lead > 0 else 0]:  # (`max` is torch's here)
            raise fail(ArgumentError(f"broadcast_to: the expanded size of the tensor (-1) isn't allowed in a leading, "
                                     f"non-existing dimension (expanding shape {x.shape} to {shape})"))
        shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(shape))
    if _is_scalar(x):
        return full(shape, x, result_dtype(x))
    return x if x.shape == shape else bind("broadcast", x, shape=list(shape))


def _broadcast_shapes(name: str, *shapes) -> tuple[int, ...]:
    if all(s == shapes[0] for s in shapes[1:]):
        return tuple(shapes[0])
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        err = ShapeError(f"{name}: shapes {' and '.join(str(tuple(s)) for s in shapes)} cannot be broadcast together")
        raise located(err, user_location()) from None


def _prepare(name: str, *xs: Any, dtype: DType | None = None) -> list[Tensor]:
    """Promote to one dtype and broadcast to one shape, inserting the ops that does."""
    xs = [_as_operand(x) for x in xs]
    first = xs[0]
    if isinstance(first, Tensor):  # the common case, operands that already agree, needs no op
        d, s = first._dtype, first.shape
        if (dtype is None or dtype == d) and all(isinstance(x, Tensor) and x._dtype == d and x.shape == s
                                                 for x in xs[1:]):
            return xs
    d = dtype or result_dtype(*xs)
    shape = _broadcast_shapes(name, *[() if _is_scalar(x) else x.shape for x in xs])
    out = []
    for x in xs:
        if _is_scalar(x):
            out.append(_constant(shape, x, d))
        else:
            out.append(broadcast_to(cast(x, d), shape))
    return out


# -- elementwise ------------------------------------------------------------------------------

def _binary(name: str):
    def f(input: Any, other: Any) -> Tensor:  # torch's parameter names: `x.eq(other=y)`
        return bind(name, *_prepare(name, input, other))
    f.__name__ = name
    f.__doc__ = f"Elementwise {name} with numpy broadcasting and dtype promotion."
    return f


mul, maximum, minimum = (_binary(n) for n in ("mul", "maximum", "minimum"))


def _times_alpha(name: str, a: Any, b: Any, alpha: Any) -> Any:
    """torch.add/sub's `alpha`: `b * alpha` (b itself for alpha 1); a float alpha with integral
    operands is torch's error."""
    if isinstance(alpha, float) and not result_dtype(_as_operand(a), _as_operand(b)).is_float:
        raise fail(RuntimeError(f"{name}: for integral input tensors, argument alpha must not be a floating point "
                                f"number"))
    return b if isinstance(alpha, (int, float)) and alpha == 1 else mul(b, alpha)


def add(input: Any, other: Any, *, alpha: Any = 1) -> Tensor:
    """input + alpha * other, with numpy broadcasting and torch's dtype promotion (torch.add)."""
    return bind("add", *_prepare("add", input, _times_alpha("add", input, other, alpha)))


def _bool_sub(input: Any, other: Any) -> None:
    """torch refuses `-` with a bool tensor operand (numpy's bool subtraction computed xor, or an
    integer difference beside a number, in silence)."""
    a, b = (isinstance(v, Tensor) and v.dtype is dt.bool_ for v in (input, other))
    if not (a or b):
        return
    if (a or isinstance(input, (bool, np.bool_))) and (b or isinstance(other, (bool, np.bool_))):
        raise fail(RuntimeError("Subtraction, the `-` operator, with two bool tensors is not supported. Use the `^` or "
                             "`logical_xor()` operator instead."))
    raise fail(RuntimeError("Subtraction, the `-` operator, with a bool tensor is not supported. If you are trying to "
                         "invert a mask, use the `~` or `logical_not()` operator instead."))


def sub(input: Any, other: Any, *, alpha: Any = 1) -> Tensor:
    """input - alpha * other, with numpy broadcasting and torch's dtype promotion (torch.sub); a bool
    tensor operand is refused, as torch (`_bool_sub`)."""
    _bool_sub(input, other)
    return bind("sub", *_prepare("sub", input, _times_alpha("sub", input, other, alpha)))


eq, ne, lt, le, gt, ge = (_binary(n) for n in ("eq", "ne", "lt", "le", "gt", "ge"))
_logical_and, _logical_or = _binary("logical_and"), _binary("logical_or")


def _truth(x: Any) -> Any:
    """A non-bool tensor as `x != 0` (nan counts as true), for the logical primitives, which take booleans."""
    return ne(x, 0) if isinstance(x, Tensor) and x.dtype is not dt.bool_ else x


def logical_and(input: Any, other: Any) -> Tensor:  # noqa: A002
    """torch.logical_and: True where both are non-zero, for any dtypes."""
    return _logical_and(_truth(_as_operand(input)), _truth(_as_operand(other)))


def logical_or(input: Any, other: Any) -> Tensor:  # noqa: A002
    """torch.logical_or: True where either is non-zero, for any dtypes."""
    return _logical_or(_truth(_as_operand(input)), _truth(_as_operand(other)))


def div(input: Any, other: Any, *, rounding_mode: str | None = None) -> Tensor:
    """True division (integers are promoted to the default float dtype, like torch); torch.div's `rounding_mode`
    'trunc' or 'floor' rounds the quotient instead and keeps integer dtypes."""
    a, b = input, other
    if rounding_mode == "floor":
        return floor_divide(a, b)
    if rounding_mode == "trunc":
        d = _arith_dtype(a, b)
        x, y = _prepare("div", a, b, dtype=d)
        q = bind("div", x, y) if d.is_float else _int_div("div", x, y, b)  # integers: C's division, toward zero
        return trunc(q) if d.is_float else q
    if rounding_mode is not None:
        raise ValueError(f"div: rounding_mode must be None, 'trunc' or 'floor', got {rounding_mode!r}")
    d = result_dtype(_as_operand(a), _as_operand(b))
    if not d.is_float:
        d = default_float_dtype()  # torch: integers divide into the default dtype
    return bind("div", *_prepare("div", a, b, dtype=d))


true_divide = divide = div


def _int_div(op: str, a: Tensor, b: Tensor, divisor: Any) -> Tensor:
    """C's integer division a / b (toward zero). A zero divisor whose value is known (a number, or
    an eager tensor) is torch's error; the primitive would give 0 (the reference) or whatever the
    backend's hardware gives. A traced tensor divisor is checked when the graph runs (a check op)."""
    known_zero = bool(divisor == 0) if _is_scalar(divisor) else (
        not b.is_traced and b.numel() and not np.all(b.numpy()))
    message = f"{op}: ZeroDivisionError (integer division by zero, {dt.PY_NAMES[a.dtype.name]})"
    if known_zero:
        raise fail(IntegerDivisionError(message))
    if isinstance(b, Tensor) and b.is_traced and b.numel():
        b = check_values(b, ne(b, 0), message)
    return bind("div", a, b)


def _arith_dtype(a: Any, b: Any) -> DType:
    """The promoted dtype of integer-rounding arithmetic (booleans count as i64, as in torch)."""
    d = result_dtype(_as_operand(a), _as_operand(b))
    return dt.int64 if d is dt.bool_ else d


_EXACT = 2.0 ** 52  # every float at least this large is an integer (f64's mantissa; f32's is shorter)


@refuses("trunc", "trunc_vml_cpu", "bool")
def trunc(input: Any) -> Tensor:
    """Round toward zero, through an i64 cast where that is exact; larger values, inf and nan
    are integers (or not numbers) already and pass through, with torch's zero derivative (the
    pass-through carried the gradient: fmod(1e30, 1)'s derivative in its dividend was 0)."""
    x = _tensor(input)
    if not x.dtype.is_float:
        return x
    small = lt(abs(x), _EXACT)
    r = cast(cast(where(small, x, 0.0), dt.int64), x.dtype)
    r = where(eq(r, 0.0), mul(x, 0.0), r)  # the integer cast drops a zero's sign: trunc(-0.3) is -0.0
    return where(small, r, stop_gradient(x))


fix = trunc


def isnan(input: Any) -> Tensor:
    """nan is the only value unequal to itself."""
    x = _tensor(input)
    return ne(x, x) if x.dtype.is_float else full(x.shape, False, dt.bool_)


def isinf(input: Any) -> Tensor:
    """|x| == inf (integers are never infinite)."""
    x = _tensor(input)
    return eq(abs(x), math.inf) if x.dtype.is_float else full(x.shape, False, dt.bool_)


def isfinite(input: Any) -> Tensor:
    """x - x is 0 for a finite x and nan for inf or nan."""
    x = _tensor(input)
    return eq(sub(x, x), 0.0) if x.dtype.is_float else full(x.shape, True, dt.bool_)


@refuses("fmod", "fmod_cpu", "bool", (0, 1))
def fmod(input: Any, other: Any) -> Tensor:
    """C's fmod (torch.fmod): the remainder of the quotient truncated toward zero, with the
    dividend's sign. Floats: the rounded quotient may be one off, which the two corrections undo;
    then IEEE's special cases (x fmod inf = x; inf fmod y and x fmod 0 are nan)."""
    return _fmod("fmod", input, other)


def _fmod(op: str, input: Any, other: Any) -> Tensor:
    """fmod, named `op` in errors (remainder builds on it); integers by zero are an error when known."""
    d = _arith_dtype(input, other)
    a, b = _prepare(op, input, other, dtype=d)
    if not d.is_float:
        return sub(a, mul(_int_div(op, a, b, other), b))
    # on |a| and |b|, the sign of a put back by a factor: a zero result keeps a's sign (C's -4 fmod 2
    # is -0.0) and the derivative in a stays 1 there too (a `where` choosing a signed zero cut it)
    # Narrower floats compute in f64, where it is exact for quotients under 2**29: the quotient's
    # multiple of b is then exact (as C's fmod; in f32, 1 fmod 0.1 was 0 where it is 0.09999999)
    w = dt.float64 if d.bits < 64 else d
    sa = cast(where(logical_or(lt(a, 0.0), logical_and(eq(a, 0.0), lt(div(1.0, a), 0.0))), -1.0, 1.0), d)
    pa, pb = cast(mul(a, sa), w), cast(abs(b), w)
    r = sub(pa, mul(trunc(bind("div", pa, pb)), pb))
    r = where(lt(r, 0.0), add(r, pb), r)  # the rounded quotient one too high
    r = where(ge(r, pb), sub(r, pb), r)  # one too low
    r = mul(cast(r, d), sa)
    r = where(logical_and(isinf(b), isfinite(a)), a, r)
    return where(logical_or(eq(b, 0.0), logical_not(isfinite(a))), math.nan, r)


def _wrong_sign(r: Tensor, b: Tensor) -> Tensor:
    """Where a truncated remainder must move one divisor to take the divisor's sign (Python's rule)."""
    zero = 0.0 if r.dtype.is_float else 0
    return logical_and(ne(r, zero), ne(lt(r, zero), lt(b, zero)))


@refuses("remainder", "remainder_cpu", "bool", (0, 1))
def remainder(input: Any, other: Any) -> Tensor:
    """Python's modulus (torch.remainder, `%`): the result has the divisor's sign."""
    d = _arith_dtype(input, other)
    _, b = _prepare("remainder", input, other, dtype=d)
    r = _fmod("remainder", input, other)
    return where(_wrong_sign(r, b), add(r, b), r)


@refuses("floor_divide", "div_floor_cpu", "bool", (0, 1))
def floor_divide(input: Any, other: Any) -> Tensor:
    """Python's `//` (torch.floor_divide): the quotient rounded toward -inf. Floats follow torch's
    div_floor: (a - fmod(a, b)) / b is an integer up to rounding, which the last steps repair.
    Integers by zero are torch's error where the divisor is known (see `_int_div`)."""
    d = _arith_dtype(input, other)
    a, b = _prepare("floor_divide", input, other, dtype=d)
    if not d.is_float:
        q = _int_div("floor_divide", a, b, other)
        return sub(q, cast(_wrong_sign(sub(a, mul(q, b)), b), d))
    m = fmod(a, b)
    q = div(sub(a, m), b)
    q = where(_wrong_sign(m, b), sub(q, 1.0), q)
    f = floor(q)
    f = where(gt(sub(q, f), 0.5), add(f, 1.0), f)
    exact = div(a, b)
    f = where(ne(q, 0.0), f, mul(exact, 0.0))  # a zero quotient keeps the sign of a / b
    return where(eq(b, 0.0), exact, f)


@refuses("floor", "floor_vml_cpu", "bool")
def floor(input: Any) -> Tensor:
    """Float floor through an integer cast where that is exact (|x| < 2**52); larger values, inf
    and nan are their own floor. Integers are unchanged."""
    x = _as_operand(input)
    if _is_scalar(x):
        x = full((), x, result_dtype(x))
    if not x.dtype.is_float:
        return x
    t = trunc(x)
    return where(gt(t, x), sub(t, 1), t)


@refuses("pow", "pow", "bool", (0, 1))
def pow(input: Any, exponent: Any) -> Tensor:  # noqa: A001
    a, b = input, exponent
    d = result_dtype(_as_operand(a), _as_operand(b))
    if _is_scalar(b) and float(b) == 2.0:
        a = _as_operand(a)
        if isinstance(a, Tensor) and a.dtype != d:  # promoted first: int tensor ** 2.0 is float, bool ** 2 int64
            a = cast(a, d)
        return mul(a, a)
    if d is dt.bool_:
        d = dt.float32
    elif not d.is_float:
        # integers to integer powers stay integers, as torch's (`3 ** torch.arange(4)` is int64, a uint8 tensor
        # squared is uint8): the `pow` op computes them exactly (wrapping; a negative tensor exponent truncates
        # toward zero). A negative Python exponent is torch's error.
        if _is_scalar(b) and not isinstance(b, bool) and float(b) < 0:
            raise fail(RuntimeError("Integers to negative integer powers are not allowed."))
    return bind("pow", *_prepare("pow", a, b, dtype=d))


def _unary(name: str, floating: bool = False):
    def f(input: Any) -> Tensor:
        x = _as_operand(input)
        if _is_scalar(x):
            x = full((), x, result_dtype(x))
        if floating and not x.dtype.is_float:
            x = cast(x, dt.float32)
        return bind(name, x)
    f.__name__ = name
    f.__doc__ = f"Elementwise {name}."
    return f


abs, relu, sign = (_unary(n) for n in ("abs", "relu", "sign"))  # noqa: A001
abs = refuses("abs", "abs_cpu", "bool")(abs)  # noqa: A001 - torch has no kernel for these dtypes
relu = refuses("relu", "relu", "bool", message="relu: Boolean inputs not supported for relu")(relu)
_neg = _unary("neg")


def neg(input: Any) -> Tensor:
    """Elementwise -x; a bool tensor is refused, as torch (numpy's negation gave the mask back unchanged)."""
    if isinstance(input, Tensor) and input.dtype is dt.bool_:
        raise fail(RuntimeError("Negation, the `-` operator, on a bool tensor is not supported. If you are trying to "
                             "invert a mask, use the `~` or `logical_not()` operator instead."))
    return _neg(input)
exp, log, tanh, sigmoid, sqrt, rsqrt, erf, sin, cos = (_unary(n, True) for n in
                                                       ("exp", "log", "tanh", "sigmoid", "sqrt", "rsqrt", "erf",
                                                        "sin", "cos"))
_logical_not = _unary("logical_not")


def logical_not(input: Any) -> Tensor:  # noqa: A002
    """torch.logical_not: True where `input` is zero, for any dtype (the `logical_not` primitive takes booleans, so a
    number is first compared with zero: `logical_not(int_mask)` or of a float, where nan counts as true)."""
    x = _as_operand(input)
    if isinstance(x, Tensor) and x.dtype is not dt.bool_:
        x = ne(x, 0)
    return _logical_not(x)


def stop_gradient(x: Any) -> Tensor:
    """`x` unchanged, but autodiff sends no gradient through it (jax.lax.stop_gradient, torch's detach)."""
    return bind("stop_gradient", _tensor(x))


def check_values(x: Any, ok: Any, message: str, error: str = "value") -> Tensor:
    """`x`, raising `ValueCheckError(message)` (a RuntimeError, as torch's value checks; with
    error="linalg" also a `linalg.LinAlgError`) when any element of the boolean `ok` (broadcast to
    x's shape) is false: eagerly at once, in a traced graph when it runs, on every backend. For
    checks torch makes on values a trace cannot know (binary_cross_entropy's inputs in [0, 1]);
    exported models (ONNX, MLIR) drop them."""
    x = _tensor(x)
    ok = _as_operand(ok)
    if not isinstance(ok, Tensor) or ok.dtype is not dt.bool_:
        raise TypeError(f"check_values: the condition must be a boolean tensor, got {getattr(ok, 'dtype', type(ok))}")
    if ok.shape != x.shape:
        ok = broadcast_to(ok, x.shape)
    return bind("check", x, ok, message=str(message), error=error)


def _check_finite_result(out: Tensor, inputs: Sequence[Tensor], message: str, error: str = "linalg") -> Tensor:
    """`out` checked (`check_values`) to be finite wherever every input is: a solver or factorization
    whose result has a nan or inf although its inputs are finite met a singular or indefinite matrix,
    which torch refuses (its LinAlgError), eagerly or compiled. Non-finite inputs pass through."""
    ok = isfinite(out)
    for t in inputs:
        some_bad = gt(sum(cast(logical_not(isfinite(t)), dt.int32)), 0)
        ok = logical_or(ok, broadcast_to(some_bad, out.shape))
    return check_values(out, ok, message, error)


def where(condition: Any, input: Any = None, other: Any = None) -> Any:
    """`input` where `condition` else `other`, broadcasting all three; `where(condition)` alone is torch's
    `nonzero(condition, as_tuple=True)` (eager only: its shape depends on the values)."""
    cond, a, b = condition, input, other
    if a is None and b is None:
        from .dynamic import nonzero
        return nonzero(cond, as_tuple=True)
    if a is None or b is None:
        raise TypeError("where() takes a condition alone, or a condition, input and other (got two)")
    cond = _as_operand(cond)
    if not _is_scalar(cond) and cond.dtype is not dt.bool_:
        cond = ne(cond, 0)
    xa, xb = _as_operand(a), _as_operand(b)
    d = result_dtype(xa, xb)
    shape = _broadcast_shapes("where", *[() if _is_scalar(x) else x.shape for x in (cond, xa, xb)])
    c = broadcast_to(cond, shape) if not _is_scalar(cond) else full(shape, bool(cond), dt.bool_)
    low = d is dt.float16 or d is dt.bfloat16  # torch's where overflows these to inf, refuses f32/int overflow
    ya, yb = ((_constant(shape, x, d) if low else full(shape, x, d)) if _is_scalar(x)
              else broadcast_to(cast(x, d), shape) for x in (xa, xb))
    return bind("where", c, ya, yb)


def clamp(input: Any, min: Any = None, max: Any = None, *, out: Any = None) -> Tensor:  # noqa: A002
    """torch.clamp with number or tensor bounds (broadcast, promoted). Selections rather than
    maximum/minimum, so the gradient is torch's: all of it to x where min <= x <= max (ties
    included), to a tensor bound where it is the result; nan stays nan; min > max gives max."""
    unsupported("clamp", out=out)
    if min is None and max is None:
        raise fail(ArgumentError("torch.clamp: At least one of 'min' or 'max' must not be None"))
    y = _as_operand(input)
    for bound in (min, max):  # checked here too: `where` lets f16/bf16 overflow, as torch's where does
        if _is_scalar(bound) and not _is_scalar(y):
            fits(bound, result_dtype(y, bound))
    if min is not None:
        y = where(_beyond(lt(y, min), min), min, y)
    if max is not None:
        y = where(_beyond(gt(y, max), max), max, y)
    return y


def _beyond(out: Tensor, bound: Any) -> Tensor:
    """Where clamp takes the bound: past it, or where a floating tensor bound is nan (as torch)."""
    b = _as_operand(bound)
    if isinstance(b, Tensor) and b.dtype.is_float:
        return logical_or(out, isnan(b))
    if isinstance(b, (float, np.floating)) and math.isnan(b):
        return logical_or(out, True)
    return out


clip = clamp


# -- shapes -----------------------------------------------------------------------------------

def _tensor(x: Any) -> Tensor:
    x = _as_operand(x)
    return full((), x, result_dtype(x)) if _is_scalar(x) else x


def _shape_kw(fn: str, args: tuple, name: str, value: Any) -> tuple:
    """A size list given as arguments (`x.view(4, 4)`, `x.view((4, 4))`) or by torch's keyword
    (`x.view(size=(4, 4))`, `x.permute(dims=(1, 0))`): the arguments, as a tuple."""
    if value is None:
        return args
    if args:
        raise TypeError(f"{fn}() got multiple values for argument '{name}'")
    return (value,)


def reshape(input: Any, *sizes: Any, shape: Any = None) -> Tensor:
    """Reshape; one dimension may be -1. Shapes may be given as a tuple, as arguments or as `shape=`."""
    x = _tensor(input)
    shape = _shape_kw("reshape", sizes, "shape", shape)
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    shape = [int(s) for s in shape]
    if shape.count(-1) > 1:
        raise located(ShapeError(f"reshape: more than one -1 in {tuple(shape)}"), user_location())
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if known == 0 or x.numel() % known:
            raise located(ShapeError(f"reshape: cannot reshape {x.shape} to {tuple(shape)}"), user_location())
        shape[shape.index(-1)] = x.numel() // known
    if tuple(shape) == x.shape:
        return x
    return link(x, bind("reshape", x, shape=shape), Reshape(tuple(shape)))  # a view where torch's is one


def permute(input: Any, *perm: Any, dims: Any = None) -> Tensor:
    """torch.permute: dims reordered; every dim named once, negative ones counting from the end."""
    x = _tensor(input)
    perm = _shape_kw("permute", perm, "dims", dims)
    if len(perm) == 1 and isinstance(perm[0], (tuple, list)):
        perm = tuple(perm[0])
    if len(perm) != x.ndim:
        raise fail(ArgumentError(f"permute: the order {tuple(perm)} names {len(perm)} dims for a tensor of dimension "
                                 f"{x.ndim} (input.dim() = {x.ndim} is not equal to len(dims) = {len(perm)})"))
    p = [check_dim("permute", d, x.ndim) for d in perm]
    if len(set(p)) != len(p):
        raise fail(ArgumentError(f"permute: duplicate dims are not allowed, got {tuple(perm)}"))
    return x if p == list(range(x.ndim)) else link(x, bind("transpose", x, perm=p), Permute(tuple(p)))


def transpose(input: Any, *dims: Any, dim0: int | None = None, dim1: int | None = None) -> Tensor:
    """No dims: reverse all (numpy). Two ints: swap them (torch, also on 2-d tensors). One
    sequence: a full permutation (numpy's axes argument)."""
    x = _tensor(input)
    if dim0 is not None or dim1 is not None:
        dims = (dim0, dim1)
    swap_given_as_perm = len(dims) == 1 and isinstance(dims[0], (tuple, list))
    if swap_given_as_perm:
        dims = tuple(dims[0])
    if not dims:
        return permute(x, list(reversed(range(x.ndim))))
    if len(dims) == 2 and not swap_given_as_perm:
        a, b = check_dim("transpose", dims[0], x.ndim), check_dim("transpose", dims[1], x.ndim)
        if x.ndim == 0:
            return x
        perm = list(range(x.ndim))
        perm[a], perm[b] = perm[b], perm[a]
        return permute(x, perm)
    return permute(x, list(dims))


def expand_dims(x: Any, axis: int) -> Tensor:
    """A new size-1 dim at `axis` in [-ndim - 1, ndim] (torch's unsqueeze, as which errors name it:
    Tensor.unsqueeze is this function)."""
    x = _tensor(x)
    axis = check_dim("unsqueeze", axis, x.ndim, new=True)
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


def squeeze(input: Any, axis: Any = None, *, dim: Any = None) -> Tensor:
    """Drop size-1 dims: all of them, or those among `dim` (an int or a tuple; others stay, as in torch)."""
    x = _tensor(input)
    axis = dim if dim is not None else axis
    if axis is None:
        return reshape(x, tuple(s for s in x.shape if s != 1))
    axes = set(check_dims("squeeze", axis, x.ndim))
    if x.ndim == 0:
        return x
    return reshape(x, tuple(s for i, s in enumerate(x.shape) if not (i in axes and s == 1)))


def flatten(input: Any, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Dims start_dim .. end_dim (inclusive) merged into one; a 0-d tensor becomes 1-d."""
    x = _tensor(input)
    s, e = check_dim("flatten", start_dim, x.ndim), check_dim("flatten", end_dim, x.ndim)
    if x.ndim == 0:
        return reshape(x, (1,))
    if s > e:
        raise fail(ArgumentError(f"flatten: start_dim ({start_dim}) cannot come after end_dim ({end_dim}) for a tensor "
                                 f"of dimension {x.ndim}"))
    return reshape(x, x.shape[:s] + (math.prod(x.shape[s:e + 1]),) + x.shape[e + 1:])


def _tensor_list(op: str, xs: Any) -> list[Tensor]:
    """The tensors of a list or tuple argument. One tensor (or array) is refused rather than iterated:
    `cat(x)` would otherwise concatenate x's rows."""
    if isinstance(xs, (Tensor, np.ndarray)) or _is_scalar(xs) or not isinstance(xs, Iterable):
        raise fail(TypeError(f"{op}(): argument 'tensors' must be a list or tuple of tensors, not "
                             f"{type(xs).__name__}; write {op}([a, b], dim=...)"))
    ts = [_tensor(x) for x in xs]
    if not ts:
        raise fail(ValueError(f"{op}: expected a non-empty sequence of tensors"))
    return ts


def _concat(op: str, xs: Any, axis: int) -> Tensor:
    """concat's work, named `op` (cat or concat, as the user called it) in errors."""
    ts = _tensor_list(op, xs)
    for i, t in enumerate(ts):
        if t.ndim == 0:
            raise fail(ArgumentError(f"{op}: zero-dimensional tensor (at position {i}) cannot be concatenated"))
    d = result_dtype(*ts)
    # torch's legacy rule: an empty 1-d tensor, shape (0,), is skipped whatever the others' shapes
    # (Transformer-XL's init_mems starts each layer's memory as `torch.empty(0)`); it still promotes
    kept = [t for t in ts if t.shape != (0,)]
    ts = kept or ts
    ax = check_dim(op, axis, ts[0].ndim)
    for i, t in enumerate(ts[1:], 1):  # torch's words, under the name the user called
        if t.ndim != ts[0].ndim:
            raise fail(ArgumentError(f"{op}: Tensors must have same number of dimensions: got {ts[0].ndim} and "
                                     f"{t.ndim} (shapes {ts[0].shape} and {t.shape})"))
        off = [k for k in range(t.ndim) if k != ax and t.shape[k] != ts[0].shape[k]]
        if off:
            raise fail(ArgumentError(f"{op}: Sizes of tensors must match except in dimension {ax}. Expected size "
                                     f"{ts[0].shape[off[0]]} but got size {t.shape[off[0]]} for tensor number {i} in "
                                     f"the list (shapes {ts[0].shape} and {t.shape})"))
    return bind("concat", *[cast(t, d) for t in ts], axis=ax)


def concat(tensors: Sequence[Any], axis: int = 0, *, dim: int | None = None) -> Tensor:
    """Tensors joined along an existing dim (torch.cat); dtypes promote."""
    return _concat("concat", tensors, dim if dim is not None else axis)


def stack(tensors: Sequence[Any], axis: int = 0, *, dim: int | None = None) -> Tensor:
    """Tensors of one shape joined along a new dim at `axis` in [-ndim - 1, ndim]."""
    axis = dim if dim is not None else axis
    xs = _tensor_list("stack", tensors)
    for i, x in enumerate(xs[1:], 1):
        if x.shape != xs[0].shape:
            raise fail(ArgumentError(f"stack: expects each tensor to be equal size, but got {xs[0].shape} at entry 0 "
                                     f"and {x.shape} at entry {i}"))
    axis = check_dim("stack", axis, xs[0].ndim, new=True)
    return concat([expand_dims(x, axis) for x in xs], axis)


def pad(x: Any, pad_width: Sequence[tuple[int, int]], value: float = 0.0) -> Tensor:
    x = _tensor(x)
    return bind("pad", x, low=[int(p[0]) for p in pad_width], high=[int(p[1]) for p in pad_width], value=float(value))


def slice_(x: Any, start: Sequence[int], limit: Sequence[int], step: Sequence[int] | None = None) -> Tensor:
    x = _tensor(x)
    step = list(step) if step is not None else [1] * x.ndim
    if list(start) == [0] * x.ndim and list(limit) == list(x.shape) and step == [1] * x.ndim:
        return x
    unit = builtins.all(s == 1 for s in step)
    return bind("slice", x, start=list(start), limit=list(limit), step=[] if unit else step)


# -- reductions -------------------------------------------------------------------------------

def _axes(x: Tensor, axis: Any, op: str) -> list[int]:
    """The dims a reduction `op` runs over, sorted (all of them for None), checked as torch checks them."""
    if axis is None:
        return list(range(x.ndim))
    axes = check_dims(op, axis, x.ndim)
    return sorted(axes) if x.ndim else []


def _dim_args(axis: Any, dim: Any, keepdims: Any, keepdim: Any) -> tuple[Any, bool]:
    """numpy's `axis`/`keepdims` and torch's `dim`/`keepdim` are the same arguments."""
    return (dim if dim is not None else axis), bool(keepdim if keepdim is not None else keepdims)


def _all_if_empty(axis: Any) -> Any:
    """torch's sum, mean, amax, amin, var, std, logsumexp and norms read an empty dim list as every
    dim: `x.sum(dim=tuple(range(1, x.ndim)))` of a 1-d x is a number there (numpy's `axis=()`, which
    reduces nothing, gave x back). (any and all keep x, as torch's do.) Avalon's own callers with
    computed axes that may be empty guard them."""
    return None if isinstance(axis, (tuple, list)) and len(axis) == 0 else axis


def sum(input: Any, axis: Any = None, keepdims: bool = False, dtype: Any = None, *,  # noqa: A001
        dim: Any = None, keepdim: bool | None = None) -> Tensor:
    """Sum over `axis` (torch: `dim`); booleans and narrower integers sum as i64, as in torch (`dtype=`
    keeps them)."""
    x = _tensor(input)
    axis, keepdims = _dim_args(axis, dim, keepdims, keepdim)
    if dtype is not None:
        x = cast(x, dtype_arg("sum", dtype))
    elif not x.dtype.is_float:
        x = cast(x, dt.int64)
    axes = _axes(x, _all_if_empty(axis), "sum")
    if not axes:
        return x
    return bind("sum", x, axes=axes, keepdims=keepdims)


def mean(input: Any, axis: Any = None, keepdims: bool = False, *, dim: Any = None, keepdim: bool | None = None,
         dtype: Any = None) -> Tensor:
    x = _tensor(input)
    axis, keepdims = _dim_args(axis, dim, keepdims, keepdim)
    if dtype is not None:
        want = dtype_arg("mean", dtype)
        if not want.is_float:  # (it would truncate the input, then average in float32: neither what was asked)
            raise fail(ArgumentError(f"mean(): could not infer output dtype. Optional dtype must be either a floating "
                                     f"point or complex dtype. Got: {want.name}"))
        x = cast(x, want)
    floating_input("mean", x)
    axes = _axes(x, _all_if_empty(axis), "mean")
    n = math.prod(x.shape[a] for a in axes)
    if _low_float(x):  # torch accumulates float16/bfloat16 in float32 and rounds the mean once: a float16
        return cast(div(sum(cast(x, dt.float32), axes, keepdims), float(n)), x.dtype)  # sum past 65504 is no inf
    return div(sum(x, axes, keepdims), float(n))  # torch's CPU mean: the sum divided (n = 0: nan)


def _low_float(x: Tensor) -> bool:
    """float16 and bfloat16: torch's reductions (mean, var) accumulate them in float32 (its acc_type)."""
    return x.dtype is dt.float16 or x.dtype is dt.bfloat16


def _var_args(fn: str, dim: Any, unbiased: Any, keepdim: Any, correction: Any, axis: Any,
              keepdims: Any) -> tuple[Any, bool, float]:
    """torch's var/std arguments: `dim` (numpy's `axis`), `correction` (default 1, Bessel's) or the
    older `unbiased`, never both (torch refuses the pair, in any order), `keepdim`."""
    dim = axis if axis is not None else dim
    keepdim = keepdims if keepdims is not None else keepdim
    if correction is not None and unbiased is not None:
        raise TypeError(f"{fn}(): pass only one of 'unbiased' and 'correction' (correction=0 is unbiased=False)")
    c = correction if correction is not None else (0 if unbiased is not None and not unbiased else 1)
    return dim, bool(keepdim), float(c)


def var(input: Any, dim: Any = None, unbiased: bool | None = None, keepdim: bool | None = None, *,
        correction: float | None = None, axis: Any = None, keepdims: bool | None = None, out: Any = None) -> Tensor:
    """torch.var: sum((x - mean)^2) / (n - correction) over `dim` (all dims by default), unbiased
    (correction=1) by default as in torch; n <= correction gives inf or nan, as in torch."""
    unsupported("var", out=out)
    return _var("var", input, dim, unbiased, keepdim, correction, axis, keepdims)


def _var(fn: str, input: Any, dim: Any, unbiased: Any, keepdim: Any, correction: Any, axis: Any,
         keepdims: Any) -> Tensor:
    """var's work, named `fn` in errors (std builds on it)."""
    dim, keepdim, c = _var_args(fn, dim, unbiased, keepdim, correction, axis, keepdims)
    x = floating_input(fn, _tensor(input))
    axes = _axes(x, _all_if_empty(dim), fn)
    n = math.prod(x.shape[a] for a in axes)
    if n - c <= 0:  # torch's warning: the inf or nan below is rarely what was meant (a batch of one)
        import sys
        import warnings

        from ..trace import _is_user_file
        f, level = sys._getframe(0), 1  # (the user's frame: shown once per call site, as torch's)
        while f is not None and not _is_user_file(f.f_code.co_filename):
            f, level = f.f_back, level + 1
        warnings.warn(f"{fn}(): degrees of freedom is <= 0 (correction {c:g} for {n} elements of input shape "
                      f"{x.shape}). Correction should be strictly less than the reduction factor (input numel "
                      "divided by output numel).", UserWarning, stacklevel=level if f is not None else 2)
    low = x.dtype if _low_float(x) else None
    if low is not None:  # accumulated in float32 and rounded once, as torch's (a float16 sum of squares overflows)
        x = cast(x, dt.float32)
    d = sub(x, mean(x, axes, keepdims=True))
    s = sum(mul(d, d), axes, keepdim)
    v = mul(s, 1.0 / (n - c)) if n - c > 0 else div(s, 0.0)
    return cast(v, low) if low is not None else v


def std(input: Any, dim: Any = None, unbiased: bool | None = None, keepdim: bool | None = None, *,
        correction: float | None = None, axis: Any = None, keepdims: bool | None = None, out: Any = None) -> Tensor:
    """torch.std: the square root of `var` with the same arguments (unbiased by default). Where the
    variance is 0 (a constant row) the gradient is 0, as torch's: sqrt's derivative there is
    infinite, and infinity times the zero deviations would make it NaN, so sqrt reads 1 there."""
    unsupported("std", out=out)
    v = _var("std", input, dim, unbiased, keepdim, correction, axis, keepdims)
    zero = eq(v, 0.0)
    return where(zero, 0.0, sqrt(where(zero, 1.0, v)))


class MaxMin(NamedTuple):
    """What torch.max/min(x, dim) return: the values and the index of each."""

    values: Tensor
    indices: Tensor


def amax(input: Any, axis: Any = None, keepdims: bool = False, *, dim: Any = None,
         keepdim: bool | None = None) -> Tensor:
    """Largest value over `axis`/`dim` (an int, a tuple, or all)."""
    axis, keepdims = _dim_args(axis, dim, keepdims, keepdim)
    return _amax("amax", _tensor(input), _all_if_empty(axis), keepdims)


def _amax(fn: str, x: Tensor, axis: Any, keepdims: bool) -> Tensor:
    """amax's work, named `fn` (amax, amin, max, min) in errors."""
    axes = _axes(x, axis, fn)
    return x if not axes else bind("max", x, axes=axes, keepdims=keepdims)


def amin(input: Any, axis: Any = None, keepdims: bool = False, *, dim: Any = None,
         keepdim: bool | None = None) -> Tensor:
    """Smallest value over `axis`/`dim`: the negated largest of the negation."""
    axis, keepdims = _dim_args(axis, dim, keepdims, keepdim)
    return _flip(_amax("amin", _flip(_tensor(input)), _all_if_empty(axis), keepdims))


def _flip(x: Tensor) -> Tensor:
    """An order-reversing bijection: the negation of floats, the complement of booleans (whose neg
    is themselves) and of integers (~x = -x - 1, wrapping: the negation would map MIN to itself, and
    every nonzero uint8 to another)."""
    if x.dtype is dt.bool_:
        return logical_not(x)
    return neg(x) if x.dtype.is_float else sub(neg(x), 1)


def _torch_max(name: str, x: Any, dim: Any, keepdim: Any, axis: Any, keepdims: Any) -> Any:
    """torch.max/min: `max(x)` the value, `max(x, dim)` (values, indices), `max(x, other)`
    elementwise; numpy's `axis=` (or a tuple of dims) gives the values alone."""
    big = name == "max"
    if dim is not None and not isinstance(dim, (int, np.integer, tuple, list)):
        if axis is not None or keepdim is not None:
            raise TypeError(f"{name}: with a tensor as 'other', 'dim'/'keepdim' are not accepted")
        return maximum(x, dim) if big else minimum(x, dim)
    if isinstance(dim, (int, np.integer)) and axis is None:
        x = _tensor(x)
        d = check_dim(name, dim, x.ndim)
        kd = bool(keepdim if keepdim is not None else keepdims)
        idx = _argmax(name, x if big else _flip(x), d, True)
        # the value at the index, so the gradient goes there alone as torch's (amax's would share it
        # among tied maxima); a select and a sum: one term is x itself, the rest exact zeros
        from .creation import iota
        at = eq(iota(x.shape, d), broadcast_to(idx, x.shape))
        values = sum(where(at, x, 0.0 if x.dtype.is_float else 0), d, kd)
        return MaxMin(values if values.dtype is x.dtype else cast(values, x.dtype), idx if kd else squeeze(idx, d))
    x = _tensor(x)
    axis = axis if axis is not None else dim
    kd = bool(keepdim if keepdim is not None else keepdims)
    return _amax(name, x, axis, kd) if big else _flip(_amax(name, _flip(x), axis, kd))


def max(input: Any, dim: Any = None, keepdim: bool | None = None, *, axis: Any = None,  # noqa: A001
        keepdims: bool = False, other: Any = None) -> Any:
    return _torch_max("max", input, other if other is not None else dim, keepdim, axis, keepdims)


def min(input: Any, dim: Any = None, keepdim: bool | None = None, *, axis: Any = None,  # noqa: A001
        keepdims: bool = False, other: Any = None) -> Any:
    return _torch_max("min", input, other if other is not None else dim, keepdim, axis, keepdims)


@refuses("argmax", "argmax", "bool", message="argmax(): does not support bool input")
def argmax(input: Any, axis: int | None = None, keepdims: bool = False, *, dim: int | None = None,
           keepdim: bool | None = None) -> Tensor:
    """Index of the first maximum along `axis`/`dim`, or in the flattened tensor."""
    axis, keepdims = _dim_args(axis, dim, keepdims, keepdim)
    return _argmax("argmax", _tensor(input), axis, keepdims)


def _argmax(fn: str, x: Tensor, axis: Any, keepdims: bool) -> Tensor:
    """argmax's work, named `fn` (argmax, argmin, max, min) in errors."""
    if axis is None:
        out = bind("argmax", reshape(x, (-1,)), axis=0)
        return reshape(out, (1,) * x.ndim) if keepdims else out
    return bind("argmax", x, axis=check_dim(fn, axis, x.ndim), keepdims=keepdims)


@refuses("argmin", "argmin", "bool", message="argmin(): does not support bool input")
def argmin(input: Any, axis: int | None = None, keepdims: bool = False, *, dim: int | None = None,
           keepdim: bool | None = None) -> Tensor:
    """Index of the first minimum: the argmax of the negation (of the complement for booleans)."""
    x = _tensor(input)
    axis, keepdims = _dim_args(axis, dim, keepdims, keepdim)
    return _argmax("argmin", _flip(x), axis, keepdims)


def cumsum(input: Any, dim: int | None = None, reverse: bool = False, *, axis: int | None = None,
           dtype: Any = None, out: Any = None) -> Tensor:
    """Inclusive running sum along `dim` (torch.cumsum(x, dim, dtype=None); jax.lax.cumsum's
    `reverse`). Booleans and narrower integers count as i64, as in torch, unless `dtype` says otherwise (ONNX's
    CumSum, which keeps i32, passes it)."""
    unsupported("cumsum", out=out)
    dim = axis if axis is not None else dim
    if dim is None:
        raise TypeError("cumsum: argument 'dim' is required")
    x = _tensor(input)
    if dtype is not None:
        x = cast(x, dtype_arg("cumsum", dtype))
    elif not x.dtype.is_float:
        x = cast(x, dt.int64)
    return bind("cumsum", x, axis=check_dim("cumsum", dim, x.ndim), reverse=bool(reverse))


def logsumexp(input: Any, axis: Any = -1, keepdims: bool = False, *, dim: Any = None,
              keepdim: bool | None = None) -> Tensor:
    """log(sum(exp(x))) computed stably; integers and bools in the default float dtype, as torch."""
    x = _tensor(input)
    if not x.dtype.is_float:  # (bool's x - max(x) was refused as a bool subtraction)
        x = cast(x, default_float_dtype())
    axis, keepdims = _dim_args(axis, dim, keepdims, keepdim)
    axes = _axes(x, _all_if_empty(axis), "logsumexp")
    m = stop_gradient(amax(x, axes, keepdims=True))
    s = log(sum(exp(sub(x, m)), axes, keepdims=True))
    out = add(s, m)
    return out if keepdims else reshape(out, [d for i, d in enumerate(x.shape) if i not in axes])


# -- contractions and windows -----------------------------------------------------------------

def _autocast(*xs: Tensor) -> tuple[Tensor, ...]:
    """Under `av.autocast`, matmul and conv2d (torch's lower-precision ops) take their floating
    inputs in the autocast dtype; `avalon.amp` decides, and returns them unchanged outside it."""
    from .. import amp  # here, not at the top: amp builds on ops
    return amp.lower_precision(*xs)


def floating_input(fn: str, x: Tensor) -> Tensor:
    """torch's rule for functions whose result is a fraction of the input (mean, var, std, softmax,
    the norms): an integer or bool input is an error there, where averaging it in float32 here would
    run code that fails in torch; `dtype=` (cast first) or `.float()` is the way to ask for it."""
    if not x.dtype.is_float:
        raise located(FloatingInputError(f"{fn}(): expected a floating point input, got {x.dtype.name}; cast it "
                                    "with .float() (or pass dtype= where the function takes one)"), user_location())
    return x


def same_dtype(fn: str, *xs: Tensor) -> DType:
    """torch's rule for contractions (matmul, conv, linear, einsum): operands of one dtype, an error
    otherwise, where numpy would promote: an f32 model fed an f64 batch ran in f64 at twice the
    memory in silence, and f32 @ i64 computed what torch refuses."""
    d = xs[0].dtype
    other = next((x.dtype for x in xs[1:] if x.dtype != d), None)  # (!=: a deepcopied model holds copies)
    if other is not None:
        raise located(DTypeRuntimeError(f"{fn}: expected both operands to have the same dtype, but got {d.name} and "
                                f"{other.name}; cast one with .to(...)"), user_location())
    return d


def matmul(input: Any, other: Any) -> Tensor:
    """numpy.matmul's shapes (1-d operands are promoted, batch dimensions broadcast), torch's
    dtypes: both operands of one dtype (`same_dtype`)."""
    a, b = _autocast(_tensor(input), _tensor(other))
    if a.ndim == 0 or b.ndim == 0:
        raise located(ShapeError("matmul: operands must not be scalars; use *"), user_location())
    same_dtype("matmul", a, b)
    # torch has no bool kernel for any product (numpy computed a logical or of ands)
    kernel = "dot" if a.ndim == b.ndim == 1 else "addmm_impl_cpu_" if a.ndim <= 2 and b.ndim <= 2 else "bmm"
    check_dtype("matmul", kernel, "bool", a.dtype)
    va, vb = a.ndim == 1, b.ndim == 1
    if va:
        a = reshape(a, (1, a.shape[0]))
    if vb:
        b = reshape(b, (b.shape[0], 1))
    if a.shape[-1] != b.shape[-2]:
        raise located(ShapeError(f"matmul: shapes {a.shape} and {b.shape} do not align "
                                 f"({a.shape[-1]} != {b.shape[-2]})"), user_location())
    batch = _broadcast_shapes("matmul", a.shape[:-2], b.shape[:-2])
    a = broadcast_to(a, batch + a.shape[-2:])
    b = broadcast_to(b, batch + b.shape[-2:])
    out = bind("matmul", a, b)
    if va and vb:
        return reshape(out, batch)
    if va:
        return reshape(out, batch + (out.shape[-1],))
    if vb:
        return reshape(out, batch + (out.shape[-2],))
    return out


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, (int, np.integer)) else [int(i) for i in v]


def conv2d(x: Any, w: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1) -> Tensor:
    x, w = _autocast(_tensor(x), _tensor(w))
    same_dtype("conv2d", x, w)
    check_dtype("conv2d", "slow_conv2d_cpu", "bool", x.dtype)
    return bind("conv2d", x, w, stride=_pair(stride), padding=_pair(padding),
                dilation=_pair(dilation), groups=int(groups))


def max_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Tensor:
    k = _pair(kernel_size)
    return bind("max_pool2d", _tensor(x), kernel=k, stride=_pair(stride) if stride is not None else k,
                padding=_pair(padding))


def avg_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
               count_include_pad: bool = True) -> Tensor:
    k = _pair(kernel_size)
    return bind("avg_pool2d", _tensor(x), kernel=k, stride=_pair(stride) if stride is not None else k,
                padding=_pair(padding), count_include_pad=bool(count_include_pad))


def take(x: Any, indices: Any, axis: int = 0) -> Tensor:
    x, idx = _tensor(x), _as_operand(indices)
    if _is_scalar(idx):
        idx = full((), int(idx), dt.int64)
    return bind("take", x, idx, axis=check_dim("take", axis, x.ndim))


def one_hot(indices: Any, num_classes: int, dtype: Any = dt.float32) -> Tensor:
    idx = _as_operand(indices)
    return bind("one_hot", idx, num_classes=int(num_classes), dtype=dt.dtype(dtype))


def random(seed: Any, shape: Sequence[int], distribution: str = "uniform", dtype: Any = dt.float32) -> Tensor:
    """Counter-based random numbers: the same seed gives the same numbers on every backend."""
    s = _as_operand(seed)
    if _is_scalar(s):
        s = full((), int(s), dt.int64)
    return bind("random", s, shape=[int(i) for i in shape], distribution=distribution, dtype=dt.dtype(dtype))


__all__ = [n for n in dir() if not n.startswith("_") and n not in ("annotations", "builtins", "math", "np", "Any",
                                                                   "Sequence", "Value", "TensorType", "DType",
                                                                   "CPU", "Scalar", "TracerError", "NamedTuple",
                                                                   "Iterable", "operator")]
