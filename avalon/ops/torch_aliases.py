"""torch.* functions ported code calls that earlier modules lacked: `clone`, `detach`, `fill`,
`normal` (all four overloads), `scalar_tensor`, `asarray`, `range` (deprecated, inclusive end),
`hsplit`/`vsplit`/`dsplit`, `split_with_sizes`, `rsub`, `select_scatter`/`slice_scatter`/
`diagonal_scatter`, `hardshrink`/`prelu` (also Tensor methods), the dtype and size queries
`is_complex`, `is_signed`, `is_nonzero`, `is_same_size`, `typename`, the signal windows (`hann_window`,
`hamming_window`, `blackman_window`, `bartlett_window`, `kaiser_window`) and the in-place functions
`torch.X_(t, ...)`, each `t.X_(...)`.

All are compositions of existing ops (windows from `iota`, scatters from `setitem`/`where`, random
draws from the `random` primitive), so they trace, differentiate and compile. The torch.* forms of
nn.functional's ops (`torch.conv2d`, `torch.layer_norm`, ...) live in avalon/nn/torch_functions.py,
above the layer these functions are in."""
from __future__ import annotations

import builtins
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import random as _rng
from ..ir import dtypes as dt
from ..tensor import Tensor, default_float_dtype, values_fixed
from . import linalg as _linalg
from .core import (
    _broadcast_shapes,
    _tensor,
    abs,
    add,
    broadcast_to,
    cast,
    check_dim,
    check_values,
    cos,
    dtype_arg,
    eq,
    fail,
    full,
    ge,
    gt,
    mul,
    pad,
    place,
    random,
    reshape,
    result_dtype,
    sqrt,
    stop_gradient,
    sub,
    trunc,
    unsupported,
    where,
)
from .creation import from_numpy, iota
from .indexing import setitem
from .math_more import i0
from .shapes import tensor_split
from .shaping import concatenate, movedim, split


def _need_tensor(fn: str, x: Any, arg: str = "input") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}(): argument '{arg}' must be Tensor, not {type(x).__name__}")
    return x


# -- copies and fills ------------------------------------------------------------------------------

def clone(input: Any, *, memory_format: Any = None) -> Tensor:
    """torch.clone: `input.clone()`, an independent copy (gradients flow through it)."""
    return _need_tensor("clone", input).clone()


def detach(input: Any) -> Tensor:
    """torch.detach: `input.detach()`, the same values (and storage) with no gradient."""
    return _need_tensor("detach", input).detach()


def fill(input: Any, value: Any) -> Tensor:
    """torch.fill (out of place): a tensor of input's shape, dtype and device holding `value`, a
    number or a 0-d tensor (whose gradient is the sum of the result's)."""
    x = _need_tensor("fill", input)
    if isinstance(value, Tensor):
        if value.ndim:
            raise fail(RuntimeError(f"fill_ only supports 0-dimension value tensor but got tensor with {value.ndim} "
                                    "dimensions."))
        return broadcast_to(cast(value, x.dtype), x.shape)
    return full(x.shape, value, x.dtype, device=x.device)


def zero_(input: Any) -> Tensor:
    """torch.zero_(t): `t.zero_()`."""
    return _need_tensor("zero_", input).zero_()


def scalar_tensor(s: Any, *, dtype: Any = None, device: Any = None, layout: Any = None, pin_memory: Any = None,
                  requires_grad: bool = False) -> Tensor:
    """torch.scalar_tensor: a 0-d tensor of `s`, the default float dtype unless `dtype` says otherwise
    (an int or bool too: `scalar_tensor(3)` is `tensor(3.)`)."""
    unsupported("scalar_tensor", layout=layout)
    s = s.item() if isinstance(s, Tensor) else s
    d = dtype_arg("scalar_tensor", dtype) if dtype is not None else default_float_dtype()
    return full((), s, d, device=device)


def asarray(obj: Any, *, dtype: Any = None, device: Any = None, copy: bool | None = None,
            requires_grad: bool = False) -> Tensor:
    """torch.asarray: `obj` as a tensor, sharing memory where it can unless `copy=True`; `copy=False`
    where a copy is needed (another dtype, a list) is torch's ValueError. A tensor of that dtype
    and device is itself; a C-contiguous numpy array is shared as by `from_numpy`; other data are
    read as `av.tensor` reads them (ints i64, floats the default dtype)."""
    d = dtype_arg("asarray", dtype) if dtype is not None else None
    if isinstance(obj, Tensor):
        out = obj.to(device=device, dtype=d)
        if out is obj and copy:
            return obj.clone()
        if out is not obj and copy is False:
            raise ValueError(f"can't alias tensor with dtype '{obj.dtype.name}' into dtype '{out.dtype.name}' or "
                             f"device '{out.device}'.")
        return out
    if isinstance(obj, np.ndarray):
        can_share = obj.flags.c_contiguous and obj.dtype.kind in "biuf" and (d is None or d.np == obj.dtype)
        if copy is False and not can_share:
            raise ValueError(f"can't alias numpy array with dtype {obj.dtype} into dtype "
                             f"'{d.name if d else obj.dtype}'.")
        if can_share and not copy:
            return place(from_numpy(obj), device)
        return Tensor(np.array(obj), d, device)
    if copy is False:
        raise ValueError("can't alias arbitrary sequence into a tensor.")
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a torch tensor: its values
        return Tensor(obj, d, device)
    return Tensor(obj, d, device)


# -- random ------------------------------------------------------------------------------------------

_NORMAL_FORMS = ("normal() received an invalid combination of arguments; torch's forms are normal(Tensor mean, "
                 "Tensor std), normal(Tensor mean, float std=1), normal(float mean, Tensor std) and normal(float "
                 "mean, float std, tuple of ints size, *, dtype=None, device=None)")


def normal(mean: Any = None, std: Any = None, size: Any = None, *, generator: Any = None, dtype: Any = None,
           device: Any = None, layout: Any = None, pin_memory: bool = False, requires_grad: bool = False,
           out: Any = None) -> Tensor:
    """torch.normal: draws with elementwise means and standard deviations, tensors broadcast
    together (`normal(mean, std)`, `normal(mean, 1.0)`, `normal(0.0, std)`), or of `size` with float
    ones (`normal(0.0, 1.0, (2, 3), dtype=...)`). The result's dtype is the tensors' (promoted);
    `generator=` an av.Generator. As in torch, no gradient flows to `mean` or `std`."""
    unsupported("normal", out=out, layout=layout)
    mt, st = isinstance(mean, Tensor), isinstance(std, Tensor)
    if mean is None:
        raise TypeError(_NORMAL_FORMS)
    if size is not None or not (mt or st):
        if mt or st or size is None or std is None:
            raise TypeError(_NORMAL_FORMS)
        d = dtype_arg("normal", dtype) if dtype is not None else default_float_dtype()
        shape = size
        m, s = float(mean), float(std)
        if s < 0:
            raise fail(RuntimeError(f"normal expects std >= 0.0, but found std {std}"))
    else:
        if dtype is not None:
            raise TypeError(_NORMAL_FORMS + "; dtype= goes with the last only")
        if std is None:
            std = 1.0
        m, s = mean, std
        shape = _broadcast_shapes("normal", *[v.shape for v in (m, s) if isinstance(v, Tensor)])
        d = result_dtype(*[v for v in (m, s) if isinstance(v, Tensor)])
        if not st and float(s) < 0:
            raise fail(RuntimeError(f"normal expects std >= 0.0, but found std {s}"))
        if st and values_fixed(s) and s.numel() and not bool((s.numpy() >= 0).all()):  # (nan refused, as torch)
            raise fail(RuntimeError("normal expects all elements of std >= 0.0"))
        if st and not values_fixed(s):  # checked when the graph runs
            s = check_values(s, ge(s, 0.0), "normal expects all elements of std >= 0.0")
    if not d.is_float:
        raise NotImplementedError(f"\"normal\" not implemented for '{d.name}': normal draws floating-point values")
    with _rng.using(generator, "normal"):
        seed = _rng.next_seed()
    z = random(seed, tuple(int(v) for v in shape), "normal", d)
    r = add(mul(z, cast(s, d) if isinstance(s, Tensor) else s), cast(m, d) if isinstance(m, Tensor) else m)
    return place(stop_gradient(cast(r, d)), device)


# -- ranges ------------------------------------------------------------------------------------------

def range(start: Any = None, end: Any = None, step: Any = 1, *, dtype: Any = None,  # noqa: A001
          device: Any = None, layout: Any = None, requires_grad: bool = False, out: Any = None) -> Tensor:
    """torch.range (deprecated, with torch's UserWarning): start, start + step, ... up to `end`
    INCLUDED, floor((end - start) / step) + 1 values, in the default float dtype unless `dtype`
    says otherwise (ints too: `range(0, 4)` is `tensor([0., 1., 2., 3., 4.])`)."""
    unsupported("range", out=out, layout=layout)
    if start is None or end is None:
        missing = [n for n, v in (("start", start), ("end", end)) if v is None]
        raise TypeError(f"range() missing {len(missing)} required positional argument: "
                        f"{', '.join(repr(n) for n in missing)}")
    warnings.warn("torch.range is deprecated and will be removed in a future release because its behavior is "
                  "inconsistent with Python's range builtin. Instead, use torch.arange, which produces values in "
                  "[start, end).", UserWarning, stacklevel=2)
    start, end, step = (v.item() if isinstance(v, Tensor) else v for v in (start, end, step))
    if step == 0:
        raise fail(RuntimeError("step must be nonzero"))
    if (step > 0 and end < start) or (step < 0 and end > start):
        raise fail(RuntimeError("upper bound and lower bound inconsistent with step sign"))
    d = dtype_arg("range", dtype) if dtype is not None else default_float_dtype()
    n = int(math.floor((end - start) / step)) + 1
    ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (start, end, step))
    if ints and not d.is_float:
        r = add(mul(iota((n,), 0, dt.int64), int(step)), int(start))
    else:
        r = add(mul(iota((n,), 0, dt.float64), float(step)), float(start))
    return place(cast(r, d), device)


# -- splits and scatters -----------------------------------------------------------------------------

def _directional_split(fn: str, input: Any, indices_or_sections: Any, dim: int, min_ndim: int) -> tuple[Tensor, ...]:
    x = _tensor(input)
    if x.ndim < min_ndim:
        raise fail(RuntimeError(f"torch.{fn} requires a tensor with at least {min_ndim} dimension, but got a tensor "
                                f"with {x.ndim} dimensions!"))
    ios = indices_or_sections
    if isinstance(ios, Tensor) and ios.ndim == 0:
        ios = int(ios.item())
    if isinstance(ios, (int, np.integer)):
        k = int(ios)
        if k == 0 or x.shape[dim] % k:
            raise fail(RuntimeError(f"torch.{fn} attempted to split along dimension {dim}, but the size of the "
                                    f"dimension {x.shape[dim]} is not divisible by the split_size {k}!"))
    return tensor_split(x, ios, dim)


def hsplit(input: Any, indices_or_sections: Any) -> tuple[Tensor, ...]:
    """torch.hsplit: `tensor_split` along dim 1 (dim 0 of a 1-d tensor); a number of sections must
    divide that dim. Views of the input."""
    x = _tensor(input)
    return _directional_split("hsplit", x, indices_or_sections, 1 if x.ndim > 1 else 0, 1)


def vsplit(input: Any, indices_or_sections: Any) -> tuple[Tensor, ...]:
    """torch.vsplit: `tensor_split` along dim 0 of a tensor of at least 2 dims."""
    return _directional_split("vsplit", input, indices_or_sections, 0, 2)


def dsplit(input: Any, indices_or_sections: Any) -> tuple[Tensor, ...]:
    """torch.dsplit: `tensor_split` along dim 2 of a tensor of at least 3 dims."""
    return _directional_split("dsplit", input, indices_or_sections, 2, 3)


def split_with_sizes(input: Any, split_sizes: Sequence[int], dim: int = 0) -> tuple[Tensor, ...]:
    """torch.split_with_sizes: `split` with a list of sizes, which must add up to the dim's size."""
    x = _tensor(input)
    d = check_dim("split_with_sizes", dim, x.ndim)
    sizes = [int(s) for s in split_sizes]
    if any(s < 0 for s in sizes):
        raise fail(RuntimeError(f"split_with_sizes expects split_sizes have only non-negative entries, but got "
                                f"split_sizes={sizes}"))
    if builtins.sum(sizes) != x.shape[d]:
        raise fail(RuntimeError(f"split_with_sizes expects split_sizes to sum exactly to {x.shape[d]} (input tensor's "
                                f"size at dimension {d}), but got split_sizes={sizes}"))
    return split(x, sizes, d)


def _scatter_shape_check(src: Tensor, shape: Sequence[int]) -> None:
    if tuple(src.shape) != tuple(shape):
        raise fail(RuntimeError(f"expected src to have a size equal to the slice of self. src size = "
                                f"{list(src.shape)}, slice size = {list(shape)}"))


def select_scatter(input: Any, src: Any, dim: int, index: int) -> Tensor:
    """torch.select_scatter: a copy of `input` with `src` at `index` along `dim` (src has the
    selected slice's shape; it is cast to input's dtype)."""
    x, s = _tensor(input), _tensor(src)
    d = check_dim("select_scatter", dim, x.ndim)
    i, n = int(index), x.shape[d]
    if not -n <= i < n:
        raise fail(IndexError(f"select(): index {i} out of range for tensor of size {list(x.shape)} at dimension {d}"))
    _scatter_shape_check(s, x.shape[:d] + x.shape[d + 1:])
    return setitem(x, (slice(None),) * d + (i,), s)


def slice_scatter(input: Any, src: Any, dim: int = 0, start: int | None = None, end: int | None = None,
                  step: int = 1) -> Tensor:
    """torch.slice_scatter: a copy of `input` with `src` at `input[..., start:end:step, ...]` (along `dim`)."""
    x, s = _tensor(input), _tensor(src)
    d = check_dim("slice_scatter", dim, x.ndim)
    if int(step) <= 0:
        raise fail(RuntimeError("slice step must be positive"))
    sl = slice(None if start is None else int(start), None if end is None else int(end), int(step))
    _scatter_shape_check(s, x.shape[:d] + (len(builtins.range(*sl.indices(x.shape[d]))),) + x.shape[d + 1:])
    return setitem(x, (slice(None),) * d + (sl,), s)


def diagonal_scatter(input: Any, src: Any, offset: int = 0, dim1: int = 0, dim2: int = 1) -> Tensor:
    """torch.diagonal_scatter: a copy of `input` with `src` on the diagonal `input.diagonal(offset,
    dim1, dim2)` reads. The (dim1, dim2) planes are moved last; the diagonal's element k sits at
    row k (offset >= 0) or column k (offset < 0), so `src`, padded to that dim and broadcast along
    the other, is selected where row + offset == column."""
    x, s = _tensor(input), _tensor(src)
    if x.ndim < 2:
        raise fail(RuntimeError(f"diagonal_scatter: expected a tensor of at least 2 dims, got {x.ndim}"))
    d1, d2 = check_dim("diagonal_scatter", dim1, x.ndim), check_dim("diagonal_scatter", dim2, x.ndim)
    if d1 == d2:
        raise fail(RuntimeError(f"diagonal dimensions cannot be identical {dim1}, {dim2}"))
    off = int(offset)
    rows, cols = x.shape[d1], x.shape[d2]
    n = builtins.max(builtins.min(rows, cols - off) if off >= 0 else builtins.min(rows + off, cols), 0)
    batch = tuple(v for k, v in enumerate(x.shape) if k not in (d1, d2))
    _scatter_shape_check(s, batch + (n,))
    moved = movedim(x, (d1, d2), (-2, -1))
    s = cast(s, x.dtype)
    along = rows if off >= 0 else cols
    s = pad(s, [(0, 0)] * len(batch) + [(0, along - n)])
    s = reshape(s, batch + ((along, 1) if off >= 0 else (1, along)))
    on = eq(add(iota((rows, cols), 0), off), iota((rows, cols), 1))
    return movedim(where(on, broadcast_to(s, moved.shape), moved), (-2, -1), (d1, d2))


fix = trunc
"""torch.fix: torch's name for trunc."""


def rsub(input: Any, other: Any, alpha: Any = 1) -> Tensor:
    """torch.rsub: `other - alpha * input` (torch.sub with the operands swapped)."""
    bools = [isinstance(v, (bool, np.bool_)) or (isinstance(v, Tensor) and v.dtype is dt.bool_) for v in (input, other)]
    if builtins.all(bools):
        raise fail(RuntimeError("Subtraction, the `-` operator, with two bool tensors is not supported. Use the `^` "
                                "or `logical_xor()` operator instead."))
    if builtins.any(bools):
        raise fail(RuntimeError("Subtraction, the `-` operator, with a bool tensor is not supported. If you are "
                                "trying to invert a mask, use the `~` or `logical_not()` operator instead."))
    return sub(other, input, alpha=alpha)


# -- activations that are Tensor methods too ---------------------------------------------------------

def hardshrink(input: Any, lambd: float = 0.5) -> Tensor:
    """torch.hardshrink (and x.hardshrink()): x where |x| > lambd, else 0."""
    x = _tensor(input)
    return where(gt(abs(x), lambd), x, 0.0)


def prelu(input: Any, weight: Any) -> Tensor:
    """torch.prelu (and x.prelu(weight)): x for x > 0, weight * x otherwise; a weight of several
    entries is per channel (dim 1)."""
    x, w = _tensor(input), _tensor(weight)
    if w.numel() > 1:
        c = x.shape[1] if x.ndim >= 2 else 1
        if c != w.numel():
            raise fail(RuntimeError(f"Mismatch of parameter numbers and input channel size. Found parameter numbers "
                                    f"= {w.numel()} and channel size = {c}."))
        w = reshape(w, (1, -1) + (1,) * (x.ndim - 2))
    else:
        w = reshape(w, ())
    return where(gt(x, 0), x, mul(w, x))


# -- queries ------------------------------------------------------------------------------------------

def is_complex(input: Any) -> bool:
    """torch.is_complex: True for an `avalon.complex.ComplexTensor` (a pair of real tensors)."""
    if getattr(input, "_complex_pair", False):
        return True
    _need_tensor("is_complex", input)
    return False


def is_signed(input: Any) -> bool:
    """torch.is_signed: whether the dtype holds negative values (all but uint8 and bool)."""
    return _need_tensor("is_signed", input).dtype not in (dt.uint8, dt.bool_)


def is_nonzero(input: Any) -> bool:
    """torch.is_nonzero: the truth of a one-element tensor (torch's errors for more or none)."""
    x = _need_tensor("is_nonzero", input)
    if x.numel() == 0:
        raise fail(RuntimeError("Boolean value of Tensor with no values is ambiguous"))
    if x.numel() > 1:
        raise fail(RuntimeError("Boolean value of Tensor with more than one value is ambiguous"))
    return builtins.bool(x.item())


def is_same_size(input: Any, other: Any) -> bool:
    """torch.is_same_size: whether the two tensors' shapes are equal."""
    return _need_tensor("is_same_size", input).shape == _need_tensor("is_same_size", other, "other").shape


def typename(obj: Any) -> str:
    """torch.typename: a tensor's type name ('torch.FloatTensor'), else the object's module-qualified
    type or name ('int', 'avalon.nn.layers.Linear')."""
    if isinstance(obj, Tensor):
        return obj.type()
    module = getattr(obj, "__module__", "") or ""
    if hasattr(obj, "__qualname__"):
        qualname = obj.__qualname__
    elif hasattr(obj, "__name__"):
        qualname = obj.__name__
    else:
        module = obj.__class__.__module__ or ""
        qualname = obj.__class__.__qualname__
    return qualname if module in ("", "builtins") else f"{module}.{qualname}"


# -- windows ------------------------------------------------------------------------------------------

def _window(fn: str, window_length: int, periodic: bool, dtype: Any, device: Any, layout: Any, formula: Any) -> Tensor:
    """`formula(n, N)` over n = 0 .. L - 1 (float64, cast to the dtype), N = L for a periodic window
    and L - 1 for a symmetric one; 0 and 1 elements are torch's empty and [1]."""
    unsupported(fn, layout=layout)
    L = int(window_length)
    d = dtype_arg(fn, dtype) if dtype is not None else default_float_dtype()
    if not d.is_float:
        raise fail(RuntimeError(f"{fn} expects floating point dtypes, got: {d.name}"))
    if L < 0:
        raise fail(RuntimeError(f"{fn} requires non-negative window_length, got window_length={L}"))
    if L <= 1:
        return full((L,), 1.0, d, device=device)
    n = iota((L,), 0, dt.float64)
    return place(cast(formula(n, float(L if periodic else L - 1)), d), device)


def _cosine_sum(n: Tensor, N: float, *coefs: float) -> Tensor:
    """a0 - a1 cos(2 pi n / N) + a2 cos(4 pi n / N) - ..., the highest term first and a0 last, as
    torch adds them (so a symmetric window's ends are exactly 0 where torch's are)."""
    out = None
    for k in builtins.range(len(coefs) - 1, 0, -1):
        term = mul(cos(mul(n, 2 * math.pi * k / N)), coefs[k] * (-1) ** k)
        out = term if out is None else add(out, term)
    return add(out, coefs[0])


def hann_window(window_length: int, periodic: bool = True, *, dtype: Any = None, device: Any = None,
                layout: Any = None, pin_memory: bool = False, requires_grad: bool = False) -> Tensor:
    """torch.hann_window: 0.5 - 0.5 cos(2 pi n / N)."""
    return _window("hann_window", window_length, periodic, dtype, device, layout,
                   lambda n, N: _cosine_sum(n, N, 0.5, 0.5))


def hamming_window(window_length: int, periodic: bool = True, alpha: float = 0.54, beta: float = 0.46, *,
                   dtype: Any = None, device: Any = None, layout: Any = None, pin_memory: bool = False,
                   requires_grad: bool = False) -> Tensor:
    """torch.hamming_window: alpha - beta cos(2 pi n / N)."""
    return _window("hamming_window", window_length, periodic, dtype, device, layout,
                   lambda n, N: _cosine_sum(n, N, float(alpha), float(beta)))


def blackman_window(window_length: int, periodic: bool = True, *, dtype: Any = None, device: Any = None,
                    layout: Any = None, pin_memory: bool = False, requires_grad: bool = False) -> Tensor:
    """torch.blackman_window: 0.42 - 0.5 cos(2 pi n / N) + 0.08 cos(4 pi n / N)."""
    return _window("blackman_window", window_length, periodic, dtype, device, layout,
                   lambda n, N: _cosine_sum(n, N, 0.42, 0.5, 0.08))


def bartlett_window(window_length: int, periodic: bool = True, *, dtype: Any = None, device: Any = None,
                    layout: Any = None, pin_memory: bool = False, requires_grad: bool = False) -> Tensor:
    """torch.bartlett_window: 1 - |2 n / N - 1|."""
    return _window("bartlett_window", window_length, periodic, dtype, device, layout,
                   lambda n, N: sub(1.0, abs(sub(mul(n, 2.0 / N), 1.0))))


def kaiser_window(window_length: int, periodic: bool = True, beta: float = 12.0, *, dtype: Any = None,
                  device: Any = None, layout: Any = None, pin_memory: bool = False,
                  requires_grad: bool = False) -> Tensor:
    """torch.kaiser_window: I0(beta sqrt(1 - ((n - N/2) / (N/2))^2)) / I0(beta)."""
    def formula(n: Tensor, N: float) -> Tensor:
        r = mul(sub(n, N / 2), 2.0 / N)
        arg = sqrt(where(gt(mul(r, r), 1.0), 0.0, sub(1.0, mul(r, r))))
        return mul(i0(mul(arg, float(beta))), 1.0 / float(np.i0(float(beta))))
    return _window("kaiser_window", window_length, periodic, dtype, device, layout, formula)


# -- torch.X_(t, ...): t.X_(...) ------------------------------------------------------------------------

def _inplace_function(name: str) -> Any:
    def fn(input: Any, *args: Any, **kwargs: Any) -> Tensor:
        return getattr(_need_tensor(name, input), name)(*args, **kwargs)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"torch.{name}(t, ...): `t.{name}(...)`, in place; returns t."
    return fn


(abs_, acos_, acosh_, addmv_, arccos_, arccosh_, arcsin_, arcsinh_, arctan_, arctanh_, asin_, asinh_, atan_,
 atanh_, ceil_, clamp_, clamp_max_, clamp_min_, clip_, cos_, cosh_, deg2rad_, erf_, erfc_, exp2_, exp_, expm1_,
 fill_, fix_, floor_, frac_, gcd_, i0_, index_put_, lcm_, ldexp_, log10_, log1p_, log2_, log_, logit_,
 nan_to_num_, neg_, negative_, rad2deg_, reciprocal_, relu_, round_, rsqrt_, sigmoid_, sin_, sinc_, sinh_, sqrt_,
 square_, tan_, tanh_, trunc_, xlogy_) = (_inplace_function(_n) for _n in (
    "abs_", "acos_", "acosh_", "addmv_", "arccos_", "arccosh_", "arcsin_", "arcsinh_", "arctan_", "arctanh_", "asin_",
    "asinh_", "atan_", "atanh_", "ceil_", "clamp_", "clamp_max_", "clamp_min_", "clip_", "cos_", "cosh_", "deg2rad_",
    "erf_", "erfc_", "exp2_", "exp_", "expm1_", "fill_", "fix_", "floor_", "frac_", "gcd_", "i0_", "index_put_",
    "lcm_", "ldexp_", "log10_", "log1p_", "log2_", "log_", "logit_", "nan_to_num_", "neg_", "negative_", "rad2deg_",
    "reciprocal_", "relu_", "round_", "rsqrt_", "sigmoid_", "sin_", "sinc_", "sinh_", "sqrt_", "square_", "tan_",
    "tanh_", "trunc_", "xlogy_"))

INPLACE_FUNCTIONS = ("abs_", "acos_", "acosh_", "addmv_", "arccos_", "arccosh_", "arcsin_", "arcsinh_", "arctan_",
                     "arctanh_", "asin_", "asinh_", "atan_", "atanh_", "ceil_", "clamp_", "clamp_max_", "clamp_min_",
                     "clip_", "cos_", "cosh_", "deg2rad_", "erf_", "erfc_", "exp2_", "exp_", "expm1_", "fill_",
                     "fix_", "floor_", "frac_", "gcd_", "i0_", "index_put_", "lcm_", "ldexp_", "log10_", "log1p_",
                     "log2_", "log_", "logit_", "nan_to_num_", "neg_", "negative_", "rad2deg_", "reciprocal_",
                     "relu_", "round_", "rsqrt_", "sigmoid_", "sin_", "sinc_", "sinh_", "sqrt_", "square_", "tan_",
                     "tanh_", "trunc_", "xlogy_", "zero_")
"""The torch.X_ functions defined here, each the Tensor method X_ (zero_ included)."""


# -- torch._foreach_X_(tensors, ...): t.X_(...) for every tensor of a list (timm's ModelEmaV3) -----------------

def _foreach_function(name: str, operand: str | None) -> Any:
    """torch._foreach_{name}(self, other | scalar | scalars | weight, ...): `self[i].{name}(o_i, ...)` for
    each i, `o_i` the i-th of a list (of tensors or numbers) or the one tensor or number given."""
    def fn(self: Sequence[Tensor], *args: Any, **kwargs: Any) -> None:
        tensors = list(self)
        given = [kwargs.pop(k) for k in ("other", "scalar", "scalars", "tensors1", "weight", "src") if k in kwargs]
        args = list(args) + given
        if operand is None:
            for t in tensors:
                getattr(t, name)(**kwargs)
            return None
        if len(args) != 1 + (operand == "weight"):
            want = "a list and a weight" if operand == "weight" else "one operand"
            raise TypeError(f"_foreach_{name}(): expected {want} besides the tensors, got {len(args)}")
        per = [list(a) if isinstance(a, (list, tuple)) else [a] * len(tensors) for a in args]
        for k, a in enumerate(per):
            if len(a) != len(tensors):
                raise ValueError(f"_foreach_{name}(): tensor lists must have the same number of tensors, got "
                                 f"{len(tensors)} and {len(a)} (operand {k + 1})")
        for i, t in enumerate(tensors):
            getattr(t, name)(*(a[i] for a in per), **kwargs)
        return None
    fn.__name__ = fn.__qualname__ = f"_foreach_{name}"
    fn.__doc__ = f"torch._foreach_{name}(tensors, ...): `t.{name}(...)` for every tensor t of the list, in place."
    return fn


_foreach_add_, _foreach_sub_, _foreach_mul_, _foreach_div_ = (_foreach_function(n, "other")
                                                              for n in ("add_", "sub_", "mul_", "div_"))
_foreach_lerp_ = _foreach_function("lerp_", "weight")
_foreach_copy_ = _foreach_function("copy_", "src")
_foreach_zero_ = _foreach_function("zero_", None)
FOREACH_FUNCTIONS = ("_foreach_add_", "_foreach_copy_", "_foreach_div_", "_foreach_lerp_", "_foreach_mul_",
                     "_foreach_sub_", "_foreach_zero_")

def as_strided(input: Any, size: Any, stride: Any, storage_offset: int | None = None) -> Tensor:
    """torch.as_strided: a view with the given sizes, strides and offset in the storage of `input`'s base
    (reads gather those positions; in-place writes reach the base, refused where positions repeat)."""
    from .. import views
    from .core import _tensor
    return views.as_strided(_tensor(input), size, stride, storage_offset)


def gradient(input: Any, *, spacing: Any = 1, dim: Any = None, edge_order: int = 1) -> tuple[Tensor, ...]:
    """torch.gradient (numpy.gradient's): central differences inside, one-sided ones (first or second
    order, `edge_order`) at the ends, along each dim of `dim` (all by default); `spacing` a number, a
    number per dim, or a coordinate tensor per dim (unevenly spaced samples)."""
    from .core import _tensor, add, cast, concat, div, mul, sub
    x = _tensor(input)
    if not x.dtype.is_float:
        x = cast(x, default_float_dtype())
    dims = list(builtins.range(x.ndim)) if dim is None else [dim] if isinstance(dim, int) else list(dim)
    dims = [d % x.ndim for d in dims]
    if edge_order not in (1, 2):
        raise ValueError(f"torch.gradient only supports edge_order=1 and edge_order=2, got {edge_order}")
    sp = list(spacing) if isinstance(spacing, (list, tuple)) else [spacing] * len(dims)
    if len(sp) != len(dims):
        raise RuntimeError(f"torch.gradient expected spacing to be unspecified, a scalar or its length to match "
                           f"the number of dimensions ({len(dims)}), got {len(sp)}")
    out = []
    for d, h in zip(dims, sp):
        n = x.shape[d]
        if n < edge_order + 1:
            raise RuntimeError(f"torch.gradient expected each dimension size to be at least edge_order+1, got "
                               f"{n} along dim {d}")

        def at(a: int, b: int | None, d: int = d) -> Tensor:
            index = [slice(None)] * x.ndim
            index[d] = slice(a, b)
            return x[tuple(index)]

        if not isinstance(h, Tensor) or h.ndim == 0:  # evenly spaced
            h = float(h.item()) if isinstance(h, Tensor) else float(h)
            mid = div(sub(at(2, None), at(0, n - 2)), 2 * h)
            if edge_order == 1:
                lo, hi = div(sub(at(1, 2), at(0, 1)), h), div(sub(at(n - 1, n), at(n - 2, n - 1)), h)
            else:
                lo = div(add(sub(mul(at(1, 2), 4.0), mul(at(0, 1), 3.0)), mul(at(2, 3), -1.0)), 2 * h)
                hi = div(sub(add(mul(at(n - 1, n), 3.0), at(n - 3, n - 2)), mul(at(n - 2, n - 1), 4.0)), 2 * h)
        else:  # coordinates: numpy's second-order interior formula for uneven steps
            c = cast(h, x.dtype)
            if c.ndim != 1 or c.shape[0] != n:
                raise RuntimeError(f"torch.gradient expected each tensor in spacing to be 1-d of the size of its "
                                   f"dimension ({n}), got shape {c.shape}")
            view = [1] * x.ndim
            view[d] = n - 2
            hd = (c[1:n - 1] - c[0:n - 2]).reshape(view)
            hs = (c[2:] - c[1:n - 1]).reshape(view)
            a = -hs / (hd * (hd + hs))
            b = (hs - hd) / (hd * hs)
            cc = hd / (hs * (hd + hs))
            mid = add(add(mul(at(0, n - 2), a), mul(at(1, n - 1), b)), mul(at(2, None), cc))
            if edge_order != 1:
                raise NotImplementedError("torch.gradient: edge_order=2 with coordinate spacing is not supported")
            lo = div(sub(at(1, 2), at(0, 1)), c[1] - c[0])
            hi = div(sub(at(n - 1, n), at(n - 2, n - 1)), c[n - 1] - c[n - 2])
        out.append(concat([lo, mid, hi], d) if n > 2 else concat([lo, hi], d))
    return tuple(out)


svd = _linalg.torch_svd
qr = _linalg.torch_qr
pinverse = _linalg.pinverse
cholesky = _linalg.torch_cholesky
cholesky_solve = _linalg.cholesky_solve
cholesky_inverse = _linalg.cholesky_inverse
lu = _linalg.torch_lu
lu_unpack = _linalg.lu_unpack
lu_solve = _linalg.torch_lu_solve
svd_lowrank = _linalg.svd_lowrank
pca_lowrank = _linalg.pca_lowrank


def nuclear_norm(input: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None, out: Any = None) -> Tensor:
    """torch.nuclear_norm: the sum of the singular values of the matrices over `dim` (the last two)."""
    return _linalg.matrix_norm(input, "nuc", (-2, -1) if dim is None else dim, keepdim, dtype=dtype, out=out)


__all__ = ["as_strided", "asarray", "bartlett_window", "blackman_window", "cholesky", "cholesky_inverse",
           "cholesky_solve", "clone", "concatenate", "detach", "diagonal_scatter", "dsplit", "fill", "fix", "gradient",
           "hamming_window", "hann_window", "hardshrink", "hsplit", "is_complex", "is_nonzero", "is_same_size",
           "is_signed", "kaiser_window",
           "lu", "lu_solve", "lu_unpack", "normal", "nuclear_norm", "pca_lowrank", "pinverse", "prelu", "qr", "range",
           "rsub", "scalar_tensor", "select_scatter", "slice_scatter", "split_with_sizes", "svd", "svd_lowrank",
           "typename", "vsplit", *INPLACE_FUNCTIONS, *FOREACH_FUNCTIONS]
