"""torch's reductions and scans beyond the primitives `sum`, `max` and `cumsum`: `all`, `any`,
`prod`, `cumprod`, vector and matrix norms, `softmax`, `log_softmax`.

Products are trees of `mul` (log2(n) halvings; a scan doubles its reach each step, Hillis and
Steele), not exp(sum(log)): exact for integers, right for negative numbers, and the gradient is the
product of the other factors, so zeros get torch's gradient with no special case."""
from __future__ import annotations

import builtins
import math
from typing import Any

from ..ir import ShapeError
from ..ir import dtypes as dt
from ..tensor import Tensor
from ..trace import located, user_location
from .core import (
    _all_if_empty,
    _axes,
    _tensor,
    abs,
    amax,
    amin,
    bind,
    cast,
    check_dim,
    check_dims,
    div,
    dtype_arg,
    eq,
    exp,
    fail,
    floating_input,
    full,
    log,
    logical_not,
    mul,
    ne,
    pad,
    pow,
    reshape,
    sqrt,
    sub,
    sum,
    unsupported,
    where,
)
from .shaping import movedim, narrow


def _truth(x: Tensor) -> Tensor:
    return x if x.dtype is dt.bool_ else ne(x, 0)


def any(input: Any, dim: Any = None, keepdim: bool = False, *, out: Any = None) -> Tensor:  # noqa: A001
    """True where some element over `dim` (all dims by default) is non-zero: a `sum` of booleans,
    which is their "or"."""
    unsupported("any", out=out)
    x = _tensor(input)
    return _as_uint8(x, _any("any", _truth(x), dim, keepdim))


def _as_uint8(x: Tensor, r: Tensor) -> Tensor:
    """torch's any and all give uint8 (0 or 1) for a uint8 input, as before bool tensors existed; bool otherwise."""
    return cast(r, dt.uint8) if x.dtype is dt.uint8 else r


def _any(fn: str, b: Tensor, dim: Any, keepdim: bool) -> Tensor:
    """any's work, named `fn` in errors (all builds on it)."""
    axes = _axes(b, dim, fn)
    return bind("sum", b, axes=axes, keepdims=bool(keepdim)) if axes else b


def all(input: Any, dim: Any = None, keepdim: bool = False, *, out: Any = None) -> Tensor:  # noqa: A001
    """True where every element over `dim` is non-zero: not any of the negations."""
    unsupported("all", out=out)
    x = _tensor(input)
    return _as_uint8(x, logical_not(_any("all", logical_not(_truth(x)), dim, keepdim)))


def _product_dtype(fn: str, x: Tensor, dtype: Any) -> Tensor:
    if dtype is not None:
        return cast(x, dtype_arg(fn, dtype))
    return x if x.dtype.is_float else cast(x, dt.int64)  # torch: integers multiply as i64


def prod(input: Any, dim: int | None = None, keepdim: bool = False, *, dtype: Any = None, out: Any = None) -> Tensor:
    """torch.prod over one dim (or every element): the axis padded with ones to a power of two,
    then halved log2(n) times by multiplying its two halves."""
    unsupported("prod", out=out)
    x = _product_dtype("prod", _tensor(input), dtype)
    if dim is None:
        return reshape(_prod_last(reshape(x, (-1,))), ())
    d = check_dim("prod", dim, x.ndim)
    if x.ndim == 0:
        return x
    y = _prod_last(movedim(x, d, -1))
    return reshape(y, x.shape[:d] + (1,) + x.shape[d + 1:]) if keepdim else y


def _prod_last(x: Tensor) -> Tensor:
    """The product over the last dim, which disappears."""
    n = x.shape[-1]
    if n == 0:
        return full(x.shape[:-1], 1, x.dtype)
    width = 1 << (n - 1).bit_length()
    if width != n:
        x = pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - n)], 1.0)
    while width > 1:
        width //= 2
        x = mul(narrow(x, -1, 0, width), narrow(x, -1, width, width))
    return reshape(x, x.shape[:-1])


def cumprod(input: Any, dim: int, *, dtype: Any = None, out: Any = None) -> Tensor:
    """torch.cumprod: running products along `dim`. Step k multiplies every element by the one
    2**k places before it (ones before the start), so ceil(log2(n)) steps cover the axis."""
    unsupported("cumprod", out=out)
    x = _product_dtype("cumprod", _tensor(input), dtype)
    d = check_dim("cumprod", dim, x.ndim)
    if x.ndim == 0:
        return x
    n = x.shape[d]
    shift = 1
    while shift < n:
        before = narrow(x, d, 0, n - shift)
        x = mul(x, pad(before, [(shift, 0) if k == d else (0, 0) for k in range(x.ndim)], 1.0))
        shift *= 2
    return x


# -- norms --------------------------------------------------------------------------------------

def _float_dtype_arg(fn: str, dtype: Any) -> Any:
    """A norm's or softmax's `dtype=`, which must be floating: an integer one would truncate the
    input, after which the result is computed in float32 anyway (torch: an error)."""
    want = dtype_arg(fn, dtype)
    if not want.is_float:
        raise fail(TypeError(f"{fn}: dtype should be floating point, but got {want.name}"))
    return want


def _floating(fn: str, x: Any, dtype: Any) -> Tensor:
    x = floating_input(fn, _modulus(x))  # (integers are refused even with dtype=, as torch)
    return x if dtype is None else cast(x, _float_dtype_arg(fn, dtype))


def _modulus(x: Any) -> Tensor:
    """A norm's operand: a complex tensor's norms are those of |z| (torch's), so a ComplexTensor
    (avalon/complex.py) is read as its magnitudes."""
    return x.abs() if getattr(x, "_complex_pair", False) else _tensor(x)


def _root(s: Tensor, p: float) -> Tensor:
    """s ** (1 / p) with torch's zero gradient where s is 0 (a norm of zeros): the root of a
    zero is taken of a one instead and the result selected back to 0."""
    zero = eq(s, 0.0)
    safe = where(zero, 1.0, s)
    r = sqrt(safe) if p == 2 else pow(safe, 1.0 / p)
    return where(zero, 0.0, r)


def vector_norm(x: Any, ord: Any = 2, dim: Any = None, keepdim: bool = False, *,  # noqa: A002
                dtype: Any = None, out: Any = None) -> Tensor:
    """torch.linalg.vector_norm: the `ord`-norm over `dim` (every element by default): 2, 1, inf,
    -inf, 0 (the count of non-zeros) or any other real p, (sum |x|^p)^(1/p)."""
    unsupported("vector_norm", out=out)
    return _vector_norm("vector_norm", x, ord, dim, keepdim, dtype)


def _vector_norm(fn: str, x: Any, ord: Any, dim: Any, keepdim: bool, dtype: Any) -> Tensor:  # noqa: A002
    """vector_norm's work, named `fn` in errors (norm and linalg.norm build on it)."""
    x = _floating(fn, x, dtype)
    axes = _axes(x, _all_if_empty(dim), fn)
    kd = bool(keepdim)
    p = float(ord)
    if not axes:  # a 0-d tensor: the norm of one number
        return abs(x) if p != 0 else cast(ne(x, 0.0), x.dtype)
    if p == math.inf:
        return amax(abs(x), axes, kd)
    if p == -math.inf:
        return amin(abs(x), axes, kd)
    if p == 0:
        return sum(cast(ne(x, 0.0), x.dtype), axes, kd)
    if x.dtype in (dt.float16, dt.bfloat16):  # torch sums the powers in float32: 300**2 overflows float16
        return cast(_vector_norm(fn, cast(x, dt.float32), p, dim, keepdim, None), x.dtype)
    if p == 1:
        return sum(abs(x), axes, kd)
    if p == 2:
        return _root(sum(mul(x, x), axes, kd), 2)
    return _root(sum(pow(abs(x), p), axes, kd), p)


def matrix_norm(A: Any, ord: Any = "fro", dim: Any = (-2, -1), keepdim: bool = False, *,  # noqa: A002
                dtype: Any = None, out: Any = None) -> Tensor:
    """torch.linalg.matrix_norm over the two dims `dim`: 'fro', the induced 1 / inf norms (the
    largest column / row sum of |A|; -1 / -inf the smallest), and from the singular values 'nuc'
    (their sum), 2 (the largest) and -2 (the smallest)."""
    unsupported("matrix_norm", out=out)
    if ord in ("nuc", 2, -2) and getattr(A, "_complex_pair", False):
        raise NotImplementedError(f"matrix_norm: ord={ord!r} of a complex matrix needs a complex SVD, which Avalon "
                                  "does not compute")
    x = _floating("matrix_norm", A, dtype)
    if x.ndim < 2:
        raise located(ShapeError(f"matrix_norm: expects at least 2 dims, got shape {x.shape}"), user_location())
    d0, d1 = check_dims("matrix_norm", tuple(dim), x.ndim)
    if ord == "fro":
        return vector_norm(x, 2, (d0, d1), keepdim)
    if ord in ("nuc", 2, -2):
        from .linalg import spectral_matrix_norm  # (linalg builds on this module)
        return spectral_matrix_norm(x, ord, d0, d1, keepdim)
    p = float(ord)
    if builtins.abs(p) not in (1.0, math.inf):
        raise ValueError(f"matrix_norm: ord must be 'fro', 'nuc', 1, -1, 2, -2, inf or -inf, got {ord!r}")
    across, over = (d1, d0) if builtins.abs(p) == math.inf else (d0, d1)  # inf: row sums; 1: column sums
    sums = sum(abs(x), across, keepdims=True)
    r = amax(sums, over, keepdims=True) if p > 0 else amin(sums, over, keepdims=True)
    return r if keepdim else reshape(r, [s for i, s in enumerate(r.shape) if i not in (d0, d1)])


def norm(input: Any, p: Any = "fro", dim: Any = None, keepdim: bool = False, out: Any = None,
         dtype: Any = None) -> Tensor:
    """torch.norm: 'fro' (or a number p) is a vector norm over `dim`, every element by default;
    'nuc' the nuclear norm of the matrices over `dim` (the last two of a 2-d input by default)."""
    unsupported("norm", out=out)
    if p == "nuc":
        x = _tensor(input)
        if dim is None and x.ndim != 2:
            raise located(ShapeError(f"norm: p='nuc' with no dim needs a 2-d input, got shape {x.shape}"),
                          user_location())
        return matrix_norm(x, "nuc", (-2, -1) if dim is None else dim, keepdim, dtype=dtype)
    if p == "fro":
        p = 2
    if isinstance(p, str):
        raise ValueError(f"norm: p must be 'fro', 'nuc' or a number, got {p!r}")
    return _vector_norm("norm", input, p, dim, keepdim, dtype)


def linalg_norm(A: Any, ord: Any = None, dim: Any = None, keepdim: bool = False, *,  # noqa: A002
                dtype: Any = None, out: Any = None) -> Tensor:
    """torch.linalg.norm: an int `dim` (or a 1-d input) gives a vector norm, a pair of dims (or a
    2-d input with `ord` given) a matrix norm; with neither, the 2-norm of every element."""
    unsupported("linalg.norm", out=out)
    x = _modulus(A)
    if isinstance(dim, (tuple, list)) and len(dim) == 2:
        return matrix_norm(x, "fro" if ord is None else ord, tuple(dim), keepdim, dtype=dtype)
    if dim is not None:
        return _vector_norm("linalg.norm", x, 2 if ord is None else ord, dim, keepdim, dtype)
    if ord is None:
        return _vector_norm("linalg.norm", x, 2, None, keepdim, dtype)
    if x.ndim == 1:
        return _vector_norm("linalg.norm", x, ord, None, keepdim, dtype)
    if x.ndim == 2:
        return matrix_norm(x, ord, (0, 1), keepdim, dtype=dtype)
    raise located(ShapeError(f"linalg.norm: with ord={ord!r} and no dim the input must be 1-d or 2-d, "
                             f"got shape {x.shape}"), user_location())


# -- softmax ------------------------------------------------------------------------------------

def _softmax_input(fn: str, input: Any, dim: Any, dtype: Any) -> Tensor:
    if dim is None:
        raise TypeError(f"{fn}: argument 'dim' is required")
    x = _tensor(input)
    check_dim(fn, dim, x.ndim)
    if dtype is not None:
        x = cast(x, _float_dtype_arg(fn, dtype))
    return floating_input(fn, x)


def softmax(input: Any, dim: int | None = None, dtype: Any = None) -> Tensor:
    """torch.softmax: exp(x - max) / sum(exp(x - max)) along `dim` (the same ops as
    avalon.nn.functional.softmax, so the backends recognize the same row reduction)."""
    x = _softmax_input("softmax", input, dim, dtype)
    if x.ndim == 0:  # 1 (NaN for inf or NaN, as torch)
        return exp(sub(x, x))
    if 0 in x.shape:  # nothing to normalize (torch returns the empty tensor; amax would raise)
        return sub(x, x)
    e = exp(sub(x, amax(x, dim, keepdims=True)))
    return div(e, sum(e, dim, keepdims=True))


def log_softmax(input: Any, dim: int | None = None, dtype: Any = None) -> Tensor:
    """torch.log_softmax: x - max - log(sum(exp(x - max))) along `dim`."""
    x = _softmax_input("log_softmax", input, dim, dtype)
    if x.ndim == 0 or 0 in x.shape:
        return sub(x, x)
    s = sub(x, amax(x, dim, keepdims=True))
    return sub(s, log(sum(exp(s), dim, keepdims=True)))


__all__ = ["all", "any", "cumprod", "log_softmax", "matrix_norm", "norm", "prod", "softmax", "vector_norm"]
