"""torch's statistics, order statistics and scans beyond reductions.py: `cummax`/`cummin`,
`logcumsumexp`, `kthvalue`, `median`, `nanmedian`, `mode`, `quantile`, `nanquantile`, `nansum`,
`nanmean`, `count_nonzero`, `std_mean`/`var_mean`, `diff`, `histc`, `renorm`, `cov`, `corrcoef`,
`cdist`, `dist`, `sum_to_size`.

Order statistics build on the `sort`/`argsort` primitives (stable, nan largest) and read the
chosen elements back with `gather`, so the gradient goes to the element whose value is returned,
as torch's does. The scans are Hillis-Steele doublings (log2(n) steps of shift-and-combine), as
`cumprod`: cummax/cummin combine (value, index) pairs with torch's rule (the later index on ties,
nan sticks), logcumsumexp combines with logaddexp, so nothing underflows."""
from __future__ import annotations

import math
from typing import Any, NamedTuple

from ..ir import ShapeError
from ..ir import dtypes as dt
from ..tensor import Tensor, default_float_dtype
from .core import (
    DTypeNotImplementedError,
    _tensor,
    _var,
    add,
    amax,
    amin,
    broadcast_to,
    cast,
    check_dim,
    check_values,
    concat,
    div,
    dtype_arg,
    eq,
    expand_dims,
    fail,
    floor,
    full,
    ge,
    gt,
    isfinite,
    isnan,
    le,
    logical_and,
    logical_not,
    logical_or,
    lt,
    matmul,
    maximum,
    mean,
    minimum,
    mul,
    ne,
    pad,
    reshape,
    same_dtype,
    sqrt,
    squeeze,
    sub,
    sum,
    transpose,
    unsupported,
    where,
)
from .creation import iota
from .dtype_kernels import refuses
from .mathfn import _round_even, logaddexp
from .reductions import vector_norm
from .shaping import movedim, narrow
from .sorting import argsort, gather, sort


class ValuesIndices(NamedTuple):
    """What torch's cummax, kthvalue, median(dim), mode, ... return: values and their indices."""

    values: Tensor
    indices: Tensor


# -- scans ----------------------------------------------------------------------------------------

def _shifted(x: Tensor, d: int, shift: int, fill: Any) -> Tensor:
    """`x` moved `shift` places forward along `d`, the first `shift` filled with `fill`."""
    n = x.shape[d]
    return pad(narrow(x, d, 0, n - shift), [(shift, 0) if k == d else (0, 0) for k in range(x.ndim)], fill)


def _cum_extreme(fn: str, input: Any, dim: int, big: bool) -> ValuesIndices:
    x = _tensor(input)
    d = check_dim(fn, dim, x.ndim)
    if x.ndim == 0:
        return ValuesIndices(x, full((), 0, dt.int64))
    n = x.shape[d]
    if n == 0:
        return ValuesIndices(x, full(x.shape, 0, dt.int64))
    work = cast(x, dt.int32) if x.dtype is dt.bool_ else x
    v = work
    idx = iota(x.shape, d)
    nan = isnan(v) if v.dtype.is_float else full(v.shape, False, dt.bool_)
    better = ge if big else le
    shift = 1
    while shift < n:
        # a (earlier segment) and b (this one): b wins if it holds a nan, a wins if it holds one, else b
        # where b >= a (<= for cummin): ties go to the later index, as torch's
        pv, pi, pn = _shifted(v, d, shift, 0), _shifted(idx, d, shift, -1), _shifted(cast(nan, dt.int32), d, shift, 0)
        pn = ne(pn, 0)
        has = ge(pi, 0)
        take_b = logical_or(logical_not(has), logical_or(nan, logical_and(logical_not(pn), better(v, pv))))
        v, idx, nan = where(take_b, v, pv), where(take_b, idx, pi), logical_or(nan, logical_and(has, pn))
        shift *= 2
    return ValuesIndices(gather(x, d, idx), idx)


def cummax(input: Any, dim: int) -> ValuesIndices:
    """torch.cummax: running maxima along `dim` and where each was (the last of equal maxima; a nan
    sticks, with the last nan's index)."""
    return _cum_extreme("cummax", input, dim, True)


def cummin(input: Any, dim: int) -> ValuesIndices:
    """torch.cummin: running minima and their (last) indices; a nan sticks."""
    return _cum_extreme("cummin", input, dim, False)


@refuses("logcumsumexp", "logcumsumexp_out_cpu", "integer")
def logcumsumexp(input: Any, dim: int) -> Tensor:
    """log(cumsum(exp(x))) along `dim` without overflow or underflow: a doubling scan of logaddexp."""
    x = _tensor(input)
    d = check_dim("logcumsumexp", dim, x.ndim)
    if not x.dtype.is_float:
        x = cast(x, default_float_dtype())
    if x.ndim == 0:
        return x
    n = x.shape[d]
    shift = 1
    while shift < n:
        x = logaddexp(x, _shifted(x, d, shift, -math.inf))
        shift *= 2
    return x


# -- order statistics -----------------------------------------------------------------------------

def _keep(t: Tensor, d: int, keepdim: bool) -> Tensor:
    """A result with `d` of size 1: kept or squeezed."""
    return t if keepdim else squeeze(t, d)


@refuses("kthvalue", "kthvalue_cpu", "bool")
def kthvalue(input: Any, k: int, dim: int = -1, keepdim: bool = False, *, out: Any = None) -> ValuesIndices:
    """torch.kthvalue: the k-th smallest element along `dim` (k counts from 1) and its index."""
    unsupported("kthvalue", out=out)
    x = _tensor(input)
    d = check_dim("kthvalue", dim, x.ndim)
    n = x.shape[d] if x.ndim else 1
    if not 1 <= int(k) <= n:
        raise fail(IndexError(f"kthvalue: k ({k}) is out of range for dimension {d} of size {n} (expected 1 <= k "
                              f"<= {n})"))
    if x.ndim == 0:
        return ValuesIndices(x, full((), 0, dt.int64))
    idx = narrow(argsort(x, d), d, int(k) - 1, 1)
    return ValuesIndices(_keep(gather(x, d, idx), d, keepdim), _keep(idx, d, keepdim))


def _median(fn: str, x: Tensor, dim: Any, keepdim: bool, ignore_nan: bool) -> Any:
    if dim is None:
        flat = reshape(x, (-1,))
        if flat.shape[0] == 0:
            return full((), math.nan, x.dtype) if x.dtype.is_float else fail(IndexError(f"{fn}: empty input"))
        r = _median(fn, flat, 0, False, ignore_nan)
        return r.values
    d = check_dim(fn, dim, x.ndim)
    if x.ndim == 0:
        return ValuesIndices(x, full((), 0, dt.int64))
    n = x.shape[d]
    if n == 0:
        raise fail(IndexError(f"{fn}: cannot compute the median of an empty dimension ({d})"))
    order = argsort(x, d)
    if x.dtype.is_float:
        nan = isnan(x)
        count = sum(cast(logical_not(nan), dt.int64), d, True)
        if ignore_nan:
            pos = where(gt(count, 0), div(sub(count, 1), 2, rounding_mode="floor"), 0)
        else:
            pos = full(count.shape, (n - 1) // 2, dt.int64)
        idx = gather(order, d, pos)
        if not ignore_nan:  # any nan: the first nan and its index, as torch
            first_nan = amin(where(nan, iota(x.shape, d), n), d, True)
            idx = where(lt(count, n), first_nan, idx)
    else:
        idx = narrow(order, d, (n - 1) // 2, 1)
    return ValuesIndices(_keep(gather(x, d, idx), d, keepdim), _keep(idx, d, keepdim))


@refuses("median", "median_cpu", "bool")
def median(input: Any, dim: int | None = None, keepdim: bool = False, *, out: Any = None) -> Any:
    """torch.median: the lower median (the ((n - 1) // 2)-th smallest) of every element, or along
    `dim` as (values, indices); nan if the row holds a nan (with the first nan's index)."""
    unsupported("median", out=out)
    return _median("median", _tensor(input), dim, keepdim, False)


@refuses("nanmedian", "nanmedian_cpu", "bool")
def nanmedian(input: Any, dim: int | None = None, keepdim: bool = False, *, out: Any = None) -> Any:
    """torch.nanmedian: the lower median of the non-nan elements (nan if there are none)."""
    unsupported("nanmedian", out=out)
    return _median("nanmedian", _tensor(input), dim, keepdim, True)


def mode(input: Any, dim: int = -1, keepdim: bool = False, *, out: Any = None) -> ValuesIndices:
    """torch.mode: the most frequent value along `dim` (the smallest of equally frequent ones) and
    the index of its last occurrence. Counts compare every pair: O(n^2) along `dim`."""
    unsupported("mode", out=out)
    x = _tensor(input)
    d = check_dim("mode", dim, x.ndim)
    if x.ndim == 0:
        return ValuesIndices(x, full((), 0, dt.int64))
    y = movedim(x, d, -1)
    counts = sum(cast(eq(expand_dims(y, -1), expand_dims(y, -2)), dt.int64), -1)
    best = eq(counts, amax(counts, -1, keepdims=True))
    if y.dtype.is_float:
        cand = logical_and(best, logical_not(isnan(y)))
        value = amin(where(cand, y, math.inf), -1, keepdims=True)
        value = where(sum(cast(cand, dt.int64), -1, keepdims=True) > 0, value, math.nan)
    elif y.dtype is dt.bool_:
        value = logical_not(amax(where(best, logical_not(y), False), -1, keepdims=True))
    else:
        value = amin(where(best, y, dt.int_range(y.dtype)[1]), -1, keepdims=True)
    pos = iota(y.shape, y.ndim - 1)
    hit = eq(y, value) if not y.dtype.is_float else logical_or(eq(y, value), logical_and(isnan(y), isnan(value)))
    idx = amax(where(hit, pos, -1), -1, keepdims=True)
    idx = movedim(idx, -1, d)
    return ValuesIndices(_keep(gather(x, d, idx), d, keepdim), _keep(idx, d, keepdim))


_INTERPOLATIONS = ("linear", "lower", "higher", "midpoint", "nearest")


def _quantile(fn: str, input: Any, q: Any, dim: Any, keepdim: bool, interpolation: str, ignore_nan: bool) -> Tensor:
    x = _tensor(input)
    if not x.dtype.is_float:
        raise fail(TypeError(f"{fn}: input tensor must be either float or double dtype, got {x.dtype.name}"))
    if interpolation not in _INTERPOLATIONS:
        raise fail(ValueError(f"{fn}: interpolation must be one of {', '.join(_INTERPOLATIONS)}, got "
                              f"{interpolation!r}"))
    scalar_q = not isinstance(q, Tensor)
    qt = full((), float(q), x.dtype) if scalar_q else cast(_tensor(q), x.dtype)
    if qt.ndim > 1:
        raise fail(ShapeError(f"{fn}: q must be a scalar or 1D tensor, got shape {qt.shape}"))
    if not qt.is_traced:
        qv = qt.numpy()
        if not ((qv >= 0) & (qv <= 1)).all():  # (nan refused, as torch)
            raise fail(ValueError(f"{fn}: q values must be in the range [0, 1]"))
    else:  # checked when the graph runs (an index out of range or a nan quantile otherwise)
        qt = check_values(qt, logical_and(ge(qt, 0.0), le(qt, 1.0)), f"{fn}: q values must be in the range [0, 1]")
    q1 = reshape(qt, (-1,))
    nq = q1.shape[0]
    if dim is None:
        y, d = reshape(x, (-1,)), 0
        out_shape_kept = (1,) * x.ndim
    else:
        d = check_dim(fn, dim, x.ndim)
        y = x if x.ndim else reshape(x, (1,))
        out_shape_kept = None
    y = movedim(y, d, -1)  # (..., n)
    n = y.shape[-1]
    if n == 0:
        raise fail(IndexError(f"{fn}: input tensor must be non-empty"))
    s = sort(y, -1).values
    batch = s.shape[:-1]
    nan = isnan(y)
    valid = sum(cast(logical_not(nan), dt.int64), -1, keepdims=True)  # (..., 1)
    last = sub(cast(valid if ignore_nan else full(valid.shape, n, dt.int64), x.dtype), 1.0)
    pos = mul(reshape(q1, (1,) * len(batch) + (nq,)), maximum(last, 0.0))  # (..., nq)
    lo_f = floor(pos)
    hi_f = minimum(add(lo_f, 1.0), maximum(last, 0.0))
    if interpolation == "lower":
        hi_f = lo_f
    elif interpolation == "higher":
        lo_f = hi_f = where(gt(pos, lo_f), hi_f, lo_f)
    elif interpolation == "nearest":
        lo_f = hi_f = _round_even(pos)
    elif interpolation == "midpoint":
        hi_f = where(gt(pos, lo_f), hi_f, lo_f)
    lo_i, hi_i = cast(lo_f, dt.int64), cast(hi_f, dt.int64)
    full_b = batch + (nq,)
    a = gather(s, -1, broadcast_to(lo_i, full_b))
    b = gather(s, -1, broadcast_to(hi_i, full_b))
    if interpolation == "linear":
        w = sub(pos, lo_f)
        val = add(a, mul(w, sub(b, a)))
    elif interpolation == "midpoint":
        val = mul(add(a, b), 0.5)
    else:
        val = a
    bad = eq(valid, 0) if ignore_nan else lt(valid, n)
    val = where(broadcast_to(bad, full_b), math.nan, val)
    val = movedim(val, -1, 0)  # (nq, ...)
    if keepdim:
        kept = out_shape_kept if out_shape_kept is not None else tuple(
            1 if k == d else s_ for k, s_ in enumerate(x.shape))
        val = reshape(val, (nq,) + kept)
    elif dim is not None and x.ndim:
        val = reshape(val, (nq,) + x.shape[:d] + x.shape[d + 1:])
    else:
        val = reshape(val, (nq,))
    return reshape(val, val.shape[1:]) if scalar_q or qt.ndim == 0 else val


def quantile(input: Any, q: Any, dim: int | None = None, keepdim: bool = False, *, interpolation: str = "linear",
             out: Any = None) -> Tensor:
    """torch.quantile: the q-th quantiles (q a number or a 1-d tensor in [0, 1], its dim first in
    the result) of every element or along `dim`; nan for a row holding a nan."""
    unsupported("quantile", out=out)
    return _quantile("quantile", input, q, dim, keepdim, interpolation, False)


def nanquantile(input: Any, q: Any, dim: int | None = None, keepdim: bool = False, *,
                interpolation: str = "linear", out: Any = None) -> Tensor:
    """torch.nanquantile: quantile of the non-nan elements (nan where a row has none)."""
    unsupported("nanquantile", out=out)
    return _quantile("nanquantile", input, q, dim, keepdim, interpolation, True)


# -- nan-aware and counting reductions --------------------------------------------------------------

def nansum(input: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None, out: Any = None) -> Tensor:
    """torch.nansum: the sum, nan counting as 0."""
    unsupported("nansum", out=out)
    x = _tensor(input)
    if dtype is not None:
        x = cast(x, dtype_arg("nansum", dtype))
    if x.dtype.is_float:
        x = where(isnan(x), 0.0, x)
    return sum(x, dim, keepdim)


def nanmean(input: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None, out: Any = None) -> Tensor:
    """torch.nanmean: the mean of the non-nan elements (nan where there are none)."""
    unsupported("nanmean", out=out)
    x = _tensor(input)
    if dtype is not None:
        x = cast(x, dtype_arg("nanmean", dtype))
    if not x.dtype.is_float:
        raise fail(TypeError(f"nanmean(): expected input to have floating point dtype but got {x.dtype.name}"))
    ok = logical_not(isnan(x))
    return div(sum(where(ok, x, 0.0), dim, keepdim), sum(cast(ok, x.dtype), dim, keepdim))


def count_nonzero(input: Any, dim: Any = None) -> Tensor:
    """torch.count_nonzero: how many elements are not zero (i64), over `dim` (an int or a tuple)."""
    x = _tensor(input)
    return sum(cast(ne(x, False if x.dtype is dt.bool_ else 0), dt.int64), dim)


def var_mean(input: Any, dim: Any = None, unbiased: bool | None = None, keepdim: bool | None = None, *,
             correction: float | None = None) -> tuple[Tensor, Tensor]:
    """torch.var_mean: (var, mean) with var's arguments."""
    v = _var("var_mean", input, dim, unbiased, keepdim, correction, None, None)
    x = _tensor(input)
    x = x if x.dtype.is_float else cast(x, dt.float32)
    return v, mean(x, dim if not isinstance(dim, list) else tuple(dim), bool(keepdim))


def std_mean(input: Any, dim: Any = None, unbiased: bool | None = None, keepdim: bool | None = None, *,
             correction: float | None = None) -> tuple[Tensor, Tensor]:
    """torch.std_mean: (std, mean) with std's arguments."""
    from .core import std
    s = std(input, dim, unbiased, keepdim, correction=correction)
    x = _tensor(input)
    x = x if x.dtype.is_float else cast(x, dt.float32)
    return s, mean(x, dim if not isinstance(dim, list) else tuple(dim), bool(keepdim))


# -- differences, histograms, norms -----------------------------------------------------------------

def diff(input: Any, n: int = 1, dim: int = -1, prepend: Any = None, append: Any = None) -> Tensor:
    """torch.diff: the n-th forward difference along `dim` (prepend/append joined first; booleans
    give "not equal", as torch)."""
    x = _tensor(input)
    if x.ndim == 0:
        raise fail(ShapeError("diff expects input to be at least one-dimensional"))
    d = check_dim("diff", dim, x.ndim)
    parts = [p for p in (prepend, x, append) if p is not None]
    if len(parts) > 1:
        def fit(p: Any) -> Tensor:
            t = _tensor(p)
            return broadcast_to(t, x.shape[:d] + (1,) + x.shape[d + 1:]) if t.ndim == 0 else t
        x = concat([fit(p) if p is not x else p for p in parts], d)
    for _ in range(int(n)):
        m = x.shape[d]
        if m == 0:
            break
        a, b = narrow(x, d, 1, m - 1), narrow(x, d, 0, m - 1)
        x = ne(a, b) if x.dtype is dt.bool_ else sub(a, b)
    return x


def histc(input: Any, bins: int = 100, min: Any = 0, max: Any = 0, *, out: Any = None) -> Tensor:  # noqa: A002
    """torch.histc: counts in `bins` equal bins over [min, max] (the data's range when both are 0;
    widened by 1 either side when that range is one point); elements outside are ignored, max
    falls in the last bin. Counts are the input's (float) dtype."""
    unsupported("histc", out=out)
    x = _tensor(input)
    if not x.dtype.is_float:
        raise fail(DTypeNotImplementedError(f"histc: \"histogram_cpu\" not implemented for "
                                            f"'{dt.PY_NAMES[x.dtype.name]}'"))
    nb = int(bins)
    if nb <= 0:
        raise fail(ValueError(f"histc: bins must be > 0, but got {nb}"))
    flat = reshape(x, (-1,))
    lo = cast(_tensor(min), x.dtype)
    hi = cast(_tensor(max), x.dtype)
    if float(min) == float(max) and flat.shape[0]:
        lo, hi = amin(flat), amax(flat)
    lo, hi = _check_range(lo, hi, "torch.histc: range of [{lo:g}, {hi:g}] is not finite",
                 "torch.histc: max must be larger than min")
    same = eq(lo, hi)
    lo, hi = where(same, sub(lo, 1.0), lo), where(same, add(hi, 1.0), hi)
    inside = logical_and(ge(flat, lo), le(flat, hi))
    pos = floor(mul(div(sub(flat, lo), sub(hi, lo)), float(nb)))
    idx = cast(where(inside, minimum(pos, float(nb - 1)), -1.0), dt.int64)
    hits = eq(expand_dims(idx, -1), iota((flat.shape[0], nb), 1))
    return sum(cast(hits, x.dtype), 0)


def _check_range(lo: Tensor, hi: Tensor, not_finite: str, reversed_: str) -> tuple[Tensor, Tensor]:
    """(lo, hi), with torch's RuntimeError for a histogram range (given, or the data's) that is not finite
    (an inf or nan in the data) or runs backwards: at once for eager values, when the graph runs for a
    traced range (check ops: the returned lo and hi must be the ones used)."""
    if lo.is_traced or hi.is_traced:
        def named(m: str) -> str:  # (the values are unknown while tracing)
            return m.replace("{lo:g}", "min").replace("{hi:g}", "max")
        lo = check_values(lo, logical_and(isfinite(lo), isfinite(hi)), named(not_finite))
        hi = check_values(hi, le(lo, hi), named(reversed_))
        return lo, hi
    a, b = float(lo.numpy()), float(hi.numpy())
    if not (math.isfinite(a) and math.isfinite(b)):
        raise fail(RuntimeError(not_finite.format(lo=a, hi=b)))
    if a > b:
        raise fail(RuntimeError(reversed_.format(lo=a, hi=b)))
    return lo, hi


class HistogramResult(NamedTuple):
    """torch.return_types.histogram."""
    hist: Tensor
    bin_edges: Tensor


@refuses("histogram", "histogramdd", "half")
def histogram(input: Any, bins: Any = 100, *, range: Any = None, weight: Any = None,  # noqa: A002
              density: bool = False, out: Any = None) -> HistogramResult:
    """torch.histogram: (hist, bin_edges). `bins` an int (equal bins over `range`, the data's range by
    default, widened by 0.5 either side when that is one point, as numpy's) or a 1-d tensor of increasing
    edges; the last bin includes its right edge, elements outside are ignored; `weight` sums weights
    instead of counting; `density` divides by the total and the bin widths."""
    unsupported("histogram", out=out)
    x = _tensor(input)
    if not x.dtype.is_float:
        raise fail(RuntimeError(f"torch.histogram: input tensor and bins tensors should have the same dtype, "
                                f"and be floating point, got {x.dtype}"))
    flat = reshape(x, (-1,))
    if isinstance(bins, int) and not isinstance(bins, bool):
        nb = int(bins)
        if nb <= 0:
            raise fail(RuntimeError(f"torch.histogram(): bins must be > 0, but got {nb}"))
        if range is not None:
            lo, hi = cast(_tensor(float(range[0])), x.dtype), cast(_tensor(float(range[1])), x.dtype)
        elif flat.shape[0]:
            lo, hi = amin(flat), amax(flat)
        else:
            lo, hi = cast(_tensor(0.0), x.dtype), cast(_tensor(1.0), x.dtype)
        lo, hi = _check_range(lo, hi, "torch.histogram: range [{lo:g}, {hi:g}] is not finite",
                     "torch.histogram: min should not exceed max, but got min {lo:g} max {hi:g}")
        same = eq(lo, hi)
        lo, hi = where(same, sub(lo, 0.5), lo), where(same, add(hi, 0.5), hi)
        # torch.linspace's: from the start for the first half, from the end for the second (the last edge is hi)
        i = cast(iota((nb + 1,), 0), x.dtype)
        step = div(sub(hi, lo), float(nb))
        edges = where(lt(i, (nb + 1) // 2), add(lo, mul(i, step)), sub(hi, mul(sub(float(nb), i), step)))
    else:
        edges = cast(_tensor(bins), x.dtype)
        if edges.ndim != 1 or edges.shape[0] < 2:
            raise fail(RuntimeError(f"torch.histogram(): bins must be a 1-d tensor of at least 2 edges, got shape "
                                    f"{edges.shape}"))
        nb = edges.shape[0] - 1
    # bin i holds edges[i] <= x < edges[i + 1]; the last also x == edges[-1]
    left = ge(expand_dims(flat, -1), expand_dims(edges[:-1], 0))
    right_open = lt(expand_dims(flat, -1), expand_dims(edges[1:], 0))
    last = eq(iota((1, nb), 1), nb - 1)
    right = logical_or(right_open, logical_and(last, le(expand_dims(flat, -1), expand_dims(edges[1:], 0))))
    hits = cast(logical_and(left, right), x.dtype)
    if weight is not None:
        w = cast(reshape(_tensor(weight), (-1,)), x.dtype)
        if w.shape[0] != flat.shape[0]:
            raise fail(RuntimeError(f"torch.histogram(): weight should have the same shape as input, got "
                                    f"{_tensor(weight).shape} and {x.shape}"))
        hits = mul(hits, expand_dims(w, -1))
    hist = sum(hits, 0)
    if density:
        widths = sub(edges[1:], edges[:-1])
        hist = div(hist, mul(sum(hist), widths))
    return HistogramResult(hist, edges)


def renorm(input: Any, p: float, dim: int, maxnorm: float) -> Tensor:
    """torch.renorm: each slice along `dim` whose p-norm exceeds maxnorm scaled down to it
    (maxnorm / (norm + 1e-7), as torch)."""
    x = _tensor(input)
    d = check_dim("renorm", dim, x.ndim)
    if float(p) <= 0:
        raise fail(ValueError(f"renorm: non-positive norm not supported, got p={p}"))
    if not float(maxnorm) >= 0:  # torch's check (a negative maxnorm flipped the signs of every slice)
        raise fail(RuntimeError(f"renorm: expected maxnorm to be >= 0 but got {maxnorm}"))
    others = tuple(k for k in range(x.ndim) if k != d)
    norm = vector_norm(x, p, others, True) if others else vector_norm(expand_dims(x, -1), p, -1, False)
    scale = where(gt(norm, float(maxnorm)), div(float(maxnorm), add(norm, 1e-7)), 1.0)
    return mul(x, cast(scale, x.dtype))


def sum_to_size(input: Any, *size: Any) -> Tensor:
    """Tensor.sum_to_size: summed over the dims broadcasting would have expanded to reach x's shape."""
    x = _tensor(input)
    shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else tuple(int(s) for s in size)
    lead = x.ndim - len(shape)
    if lead < 0 or any(s not in (1, t) for s, t in zip(shape, x.shape[lead:])):
        raise fail(ShapeError(f"sum_to_size: size {list(shape)} is not expandable to size {list(x.shape)}"))
    axes = list(range(lead)) + [lead + k for k, s in enumerate(shape) if s == 1 and x.shape[lead + k] != 1]
    y = sum(x, axes, True) if axes else x
    return reshape(y, shape)


# -- covariance and distances -----------------------------------------------------------------------

def cov(input: Any, *, correction: int = 1, fweights: Any = None, aweights: Any = None) -> Tensor:
    """torch.cov: the covariance of the variables in the rows (observations in the columns), with
    frequency and/or analytic observation weights."""
    x = _tensor(input)
    if x.ndim > 2:
        raise fail(ShapeError(f"cov(): expected input to have two or fewer dimensions but got an input with "
                              f"{x.ndim} dimensions"))
    x = x if x.ndim == 2 else reshape(x, (1, -1))
    if not x.dtype.is_float:
        x = cast(x, default_float_dtype())
    n = x.shape[1]
    w = None
    if fweights is not None:
        w = cast(_tensor(fweights), x.dtype)
    if aweights is not None:
        aw = cast(_tensor(aweights), x.dtype)
        w = aw if w is None else mul(w, aw)
    if w is None:
        avg = mean(x, 1, True)
        norm = float(n - correction)
        xm = sub(x, avg)
        c = matmul(xm, transpose(xm))
        c = mul(c, 1.0 / norm) if norm > 0 else div(c, 0.0)
    else:
        w_sum = sum(w)
        avg = div(sum(mul(x, w), 1, True), w_sum)
        if aweights is None:
            norm = sub(w_sum, float(correction))
        else:
            norm = sub(w_sum, div(mul(sum(mul(w, cast(_tensor(aweights), x.dtype))), float(correction)), w_sum))
        norm = where(le(norm, 0.0), 0.0, norm)
        xm = sub(x, avg)
        c = div(matmul(mul(xm, w), transpose(xm)), norm)
    return reshape(c, ()) if _tensor(input).ndim < 2 else c


def corrcoef(input: Any) -> Tensor:
    """torch.corrcoef: Pearson correlation coefficients of the rows, clipped to [-1, 1]."""
    c = cov(input)
    if c.ndim == 0:
        return div(c, c)
    dg = sqrt(reshape(_diag(c), (-1,)))
    r = div(div(c, reshape(dg, (-1, 1))), reshape(dg, (1, -1)))
    return where(gt(r, 1.0), 1.0, where(lt(r, -1.0), -1.0, r))


def _diag(c: Tensor) -> Tensor:
    from .shaping import diagonal
    return diagonal(c)


def cdist(x1: Any, x2: Any, p: float = 2.0, compute_mode: Any = None) -> Tensor:
    """torch.cdist: the p-norm distances between the rows of x1 (..., P, M) and x2 (..., R, M),
    (..., P, R), computed from the differences (no |a|^2 + |b|^2 - 2ab cancellation)."""
    a, b = _tensor(x1), _tensor(x2)
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-1]:
        raise fail(ShapeError(f"cdist: X1 and X2 must be at least 2-d with the same number of columns, got "
                              f"{a.shape} and {b.shape}"))
    for name, x in (("X1", a), ("X2", b)):
        if not x.dtype.is_float:
            raise fail(TypeError(f"cdist only supports floating-point dtypes, {name} got: {x.dtype.name}"))
    same_dtype("cdist", a, b)  # torch's rule: numpy would promote
    if not float(p) >= 0:
        raise fail(RuntimeError("cdist only supports non-negative p values"))
    diffs = sub(expand_dims(a, -2), expand_dims(b, -3))  # (..., P, R, M)
    return vector_norm(diffs, p, -1)


def dist(input: Any, other: Any, p: float = 2) -> Tensor:
    """torch.dist: the p-norm of input - other."""
    return vector_norm(sub(input, other), p)


__all__ = ["HistogramResult", "ValuesIndices", "cdist", "corrcoef", "count_nonzero", "cov", "cummax", "cummin", "diff",
           "dist", "histc", "histogram", "kthvalue", "logcumsumexp", "median", "mode", "nanmean", "nanmedian",
           "nanquantile", "nansum", "quantile", "renorm", "std_mean", "sum_to_size", "var_mean"]
