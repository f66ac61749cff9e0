"""torch's tensor-creation functions (`arange`, `linspace`, `eye`, `*_like`, `rand/randn/randint`).

Index-valued tensors are built from the `iota` primitive and random ones from the `random`
primitive seeded by Avalon's generator (`avalon.random`), so inside a traced function they are ops
of the graph, not arrays captured at trace time."""
from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from .. import random as _rng
from ..device import CPU
from ..device import device as _device
from ..ir import dtypes as dt
from ..ir.dtypes import DType
from ..tensor import _DEFAULT_FLOAT, Tensor, default_float_dtype
from .core import (
    ArgumentError,
    _is_scalar,
    _tensor,
    add,
    bind,
    cast,
    check_dim,
    div,
    dtype_arg,
    eq,
    fail,
    full,
    mul,
    place,
    random,
    size_args,
    sub,
    trunc,
    unsupported,
    where,
)
from .dtype_kernels import check_dtype


def _sized(fn: str, sizes: tuple, size: Any) -> tuple:
    """torch's `*size`, or its `size=` keyword (pyGAT's `torch.empty(size=(n, m))`), never both."""
    if size is None:
        return sizes
    if sizes:
        raise TypeError(f"{fn}() got multiple values for argument 'size'")
    return (size,)


def _filled(fn: str, value: int, size: tuple, dtype: Any, device: Any, out: Any, layout: Any) -> Tensor:
    if size and isinstance(size[-1], DType):  # Avalon's older spelling zeros(shape, dtype)
        size, dtype = size[:-1], size[-1]
    unsupported(fn, out=out, layout=layout)
    d = dtype_arg(fn, dtype) if dtype is not None else default_float_dtype()
    return full(size_args(fn, size), value, d, device=device)


def zeros(*sizes: Any, size: Any = None, dtype: Any = None, device: Any = None, requires_grad: bool = False,
          out: Any = None, layout: Any = None) -> Tensor:
    """torch.zeros: `zeros(2, 3)` or `zeros((2, 3))`, the default dtype (f32) unless `dtype` says otherwise."""
    return _filled("zeros", 0, _sized("zeros", sizes, size), dtype, device, out, layout)


def ones(*sizes: Any, size: Any = None, dtype: Any = None, device: Any = None, requires_grad: bool = False,
         out: Any = None, layout: Any = None) -> Tensor:
    """torch.ones: `ones(2, 3)` or `ones((2, 3))`, the default dtype (f32) unless `dtype` says otherwise."""
    return _filled("ones", 1, _sized("ones", sizes, size), dtype, device, out, layout)


def empty(*sizes: Any, size: Any = None, dtype: Any = None, device: Any = None, requires_grad: bool = False,
          out: Any = None, layout: Any = None) -> Tensor:
    """torch.empty; Avalon has no uninitialized memory, so its elements are zeros."""
    return _filled("empty", 0, _sized("empty", sizes, size), dtype, device, out, layout)


def iota(shape: Any, axis: int = 0, dtype: Any = dt.int64) -> Tensor:
    """A tensor of `shape` whose elements are their index along `axis` (XLA's iota)."""
    shape = size_args("iota", (shape,))
    return bind("iota", shape=list(shape), axis=check_dim("iota", axis, len(shape)), dtype=dtype_arg("iota", dtype))


def in_range(idx: Tensor, size: int) -> Tensor:
    """A traced integer index, wrapped negatives already, as itself through a `take` of iota(size):
    where the index is later folded into a flat offset (gather along dim 1, x[i, j], a scatter) an
    index past its dim would name another row's element (x[0, 4] of a 3x4 tensor is x[1, 0]); this
    way every backend raises the take's IndexOutOfRangeError, on the user's line, instead. Known
    values are checked when traced, so they pass through."""
    if not idx.is_traced or idx.numel() == 0:
        return idx
    return bind("take", iota((size,), 0, dt.int64), idx, axis=0)


def _num(v: Any) -> Any:
    """A Python number of a 0-d tensor or a numpy scalar (`arange(np.int32(5))` counts in i64, as torch)."""
    return v.item() if isinstance(v, (Tensor, np.generic)) else v


def arange(start: Any = None, end: Any = None, step: Any = 1, *, dtype: Any = None, device: Any = None,
           requires_grad: bool = False, out: Any = None, layout: Any = None) -> Tensor:
    """torch.arange: `arange(end)` (or `arange(end=n)`) or `arange(start, end, step)`; i64 when all
    are ints, else the default dtype (f32)."""
    unsupported("arange", layout=layout)
    if start is None and end is None:
        raise TypeError("arange() missing required argument 'end'")
    start, end, step = _num(start), _num(end), _num(step)
    if end is None:
        start, end = 0, start
    elif start is None:
        start = 0
    if step == 0:
        raise ValueError("arange: argument 'step' must be nonzero")
    if (end - start) * step < 0:  # torch's check: not an empty range, which hides a swapped start and end
        raise fail(ArgumentError(f"arange: upper bound and larger bound inconsistent with step sign (start={start}, "
                                 f"end={end}, step={step})"))
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end, step))
    if dtype is None and isinstance(out, Tensor):
        dtype = out.dtype
    d = dtype_arg("arange", dtype) if dtype is not None else (dt.int64 if ints else default_float_dtype())
    check_dtype("arange", "arange_cpu", "bool", d)
    if not d.is_float:
        # torch's kernel for an integer dtype works in int64: start, end and step each truncated (`arange(0.5, 5.7,
        # 1.5, dtype=torch.int64)` is [0, 1, 2, 3, 4]), the count by integer division
        start, end, step = (math.trunc(v) for v in (start, end, step))
        if step == 0:
            raise ValueError("arange: step must be nonzero (the step truncated to an integer for an integer dtype)")
        num = end - start + step - (1 if step > 0 else -1)
        n = max(0, abs(num) // abs(step) if (num >= 0) == (step > 0) else 0)
        i = iota((n,), 0, dt.int64)
        y = i if (start, step) == (0, 1) else add(mul(i, step), start)
    else:
        # for floats torch's scalar loop computes `start + step * i` in double (float for half types) and rounds once
        # to the dtype (its vectorized loop, from 16 float32 or 8 float64 elements on, starts each group of lanes
        # from a rounded value, so later elements can differ from this by an ulp)
        n = max(0, math.ceil((end - start) / step))
        start, step = float(start), float(step)
        if d not in (dt.float32, dt.float64):
            start, step = float(np.float32(start)), float(np.float32(step))
        if (start, step) == (0.0, 1.0):  # the indices themselves, exact
            y = iota((n,), 0, d if d in (dt.float32, dt.float64) else dt.float32)
        else:
            y = _fma(start, step, iota((n,), 0, dt.float64))
            if d not in (dt.float32, dt.float64):
                y = cast(y, dt.float32)
    y = place(cast(y, d), device)
    return y if out is None else _into("arange", out, y)


def _into(fn: str, out: Any, y: Tensor) -> Tensor:
    """torch's `out=` of a creation function, written into `out` of the same shape: NVIDIA's Tacotron 2
    (and WaveGlow, Mellotron, Flowtron) build their masks by `torch.arange(0, max_len,
    out=torch.cuda.LongTensor(max_len))`. Avalon tensors cannot resize, so a shape that differs is an error."""
    if not isinstance(out, Tensor):
        raise TypeError(f"{fn}(): argument 'out' must be Tensor, not {type(out).__name__}")
    if tuple(out.shape) != tuple(y.shape):
        raise RuntimeError(f"{fn}: the out tensor has shape {tuple(out.shape)} and the result {tuple(y.shape)}; "
                           "Avalon tensors cannot be resized, so give one of the result's shape (or no out=)")
    return out.copy_(y)


def linspace(start: Any, end: Any, steps: int, *, dtype: Any = None, device: Any = None,
             requires_grad: bool = False, out: Any = None, layout: Any = None) -> Tensor:
    """torch.linspace: `steps` evenly spaced values from start to end inclusive, counted from the
    nearer end as torch's CPU kernel does (`start + step * i` for the first half, `end - step * (steps - 1 - i)`
    for the rest), with its arithmetic: for a float32 result the step is computed in float32 and each value
    rounded once (the kernel's fused multiply-add); for an integer result start and end are first truncated to
    integers, the step is a double and each value is truncated toward zero (`linspace(-3, 5, 6, dtype=int64)`
    is [-3, -1, 0, 1, 3, 5], `linspace(2.5, 7.9, 5, dtype=int64)` [2, 3, 4, 5, 7]), as efficient-kan's
    `x_sorted[torch.linspace(0, batch - 1, grid_size + 1, dtype=torch.int64)]` relies on."""
    unsupported("linspace", out=out, layout=layout)
    start, end = float(_num(start)), float(_num(end))
    try:  # torch takes an int (or a 0-d integer tensor), never 2.5 truncated to 2
        steps = operator.index(steps.item() if isinstance(steps, Tensor) and not steps.dtype.is_float else steps)
    except TypeError:
        raise fail(TypeError(f"linspace: argument 'steps' must be int, not {type(steps).__name__}")) from None
    if steps < 0:
        raise ValueError("linspace: argument 'steps' must be non-negative")
    d = dtype_arg("linspace", dtype) if dtype is not None else default_float_dtype()
    check_dtype("linspace", "linspace_cpu", "bool", d)
    if not d.is_float:
        start, end = float(math.trunc(start)), float(math.trunc(end))  # torch's Scalar.to<int64_t>()
    if steps <= 1:
        return place(full((steps,), start, d), device)
    if d in (dt.float16, dt.bfloat16):  # c10::Half / BFloat16 arithmetic: each operation rounds to d
        s_, e_ = full((), start, d), full((), end, d)
        step_ = div(sub(e_, s_), full((), float(steps - 1), d))
        i = iota((steps,), 0, d)
        y = where(iota((steps,), 0, dt.int64) < steps // 2, add(s_, mul(step_, i)),
                  sub(e_, mul(step_, sub(full((), float(steps - 1), d), i))))
        return place(y, device)
    if d.is_float and d is not dt.float64:  # the step in float32 arithmetic, as torch's kernel for float
        start, end = float(np.float32(start)), float(np.float32(end))
        delta = float((np.float32(end) - np.float32(start)) / np.float32(steps - 1))
    else:
        delta = (end - start) / (steps - 1)
    i = iota((steps,), 0, dt.float64)
    half = steps // 2
    y = where(iota((steps,), 0, dt.int64) < half, _fma(start, delta, i),
              _fma(end, -delta, sub(float(steps - 1), i)))
    return place(cast(y, d) if d.is_float else cast(trunc(y), d), device)


def _fma(c: float, a: float, k: Tensor) -> Tensor:
    """c + a * k for float64 integers k < 2**26, rounded once as a fused multiply-add (torch's linspace and arange
    kernels are compiled with contraction): the product's rounding error by Dekker's split of `a` (exact), and the sum's
    by TwoSum, added back before the last rounding. Differs from a true fma only on double-rounding ties."""
    big = a * 134217729.0  # Veltkamp split: a = ah + al, each with at most 26 significant bits
    ah = big - (big - a) if math.isfinite(big) else a
    al = a - ah
    p = mul(k, a)
    err = add(sub(mul(k, ah), p), mul(k, al))
    y = add(p, c)
    bv = sub(y, c)
    r = add(sub(c, sub(y, bv)), sub(p, bv))
    return add(y, add(r, err))


def eye(n: int, m: int | None = None, *, dtype: Any = None, device: Any = None, requires_grad: bool = False,
        out: Any = None, layout: Any = None) -> Tensor:
    """torch.eye: ones on the main diagonal of an n x m matrix."""
    unsupported("eye", out=out, layout=layout)
    m = n if m is None else m
    for name, v in (("n", n), ("m", m)):
        if v < 0:  # (iota's error would name iota, not eye)
            raise fail(ArgumentError(f"eye: {name} must be greater or equal to 0, got {v}"))
    d = dtype_arg("eye", dtype) if dtype is not None else default_float_dtype()
    return place(cast(eq(iota((n, m), 0), iota((n, m), 1)), d), device)


def _like(fn: str, x: Any, dtype: Any) -> tuple[Tensor, Any]:
    x = _tensor(x) if not _is_scalar(x) else _tensor(x)
    return x, (dtype_arg(fn, dtype) if dtype is not None else x.dtype)


def zeros_like(input: Any, *, dtype: Any = None, device: Any = None, requires_grad: bool = False,
               layout: Any = None, memory_format: Any = None) -> Tensor:
    x, d = _like("zeros_like", input, dtype)
    return _filled("zeros_like", 0, x.shape, d, device or x.device, None, layout)


def ones_like(input: Any, *, dtype: Any = None, device: Any = None, requires_grad: bool = False,
              layout: Any = None, memory_format: Any = None) -> Tensor:
    x, d = _like("ones_like", input, dtype)
    return _filled("ones_like", 1, x.shape, d, device or x.device, None, layout)


def empty_like(input: Any, *, dtype: Any = None, device: Any = None, requires_grad: bool = False,
               layout: Any = None, memory_format: Any = None) -> Tensor:
    x, d = _like("empty_like", input, dtype)
    return _filled("empty_like", 0, x.shape, d, device or x.device, None, layout)


def full_like(input: Any, fill_value: Any, *, dtype: Any = None, device: Any = None, requires_grad: bool = False,
              layout: Any = None, memory_format: Any = None) -> Tensor:
    x, d = _like("full_like", input, dtype)
    unsupported("full_like", layout=layout)
    return full(x.shape, fill_value, d, device=device or x.device)


def _random(fn: str, size: tuple, distribution: str, dtype: Any, device: Any, generator: Any, out: Any,
            layout: Any) -> Tensor:
    unsupported(fn, out=out, layout=layout)
    d = dtype_arg(fn, dtype) if dtype is not None else default_float_dtype()
    if not d.is_float:
        raise TypeError(f"{fn}: argument 'dtype' must be a floating-point type, got {d.name}")
    with _rng.using(generator, fn):  # an av.Generator's stream, eagerly (see avalon.random)
        seed = _rng.next_seed()
    return place(random(seed, size_args(fn, size), distribution, d), device)


def rand(*sizes: Any, size: Any = None, dtype: Any = None, device: Any = None, requires_grad: bool = False,
         generator: Any = None, out: Any = None, layout: Any = None) -> Tensor:
    """Uniform on [0, 1), from Avalon's generator (`av.manual_seed`, or `generator=`, an av.Generator);
    a `random` op when traced."""
    return _random("rand", _sized("rand", sizes, size), "uniform", dtype, device, generator, out, layout)


def randn(*sizes: Any, size: Any = None, dtype: Any = None, device: Any = None, requires_grad: bool = False,
          generator: Any = None, out: Any = None, layout: Any = None) -> Tensor:
    """Standard normal, from Avalon's generator (`av.manual_seed`, or `generator=`, an av.Generator);
    a `random` op when traced."""
    return _random("randn", _sized("randn", sizes, size), "normal", dtype, device, generator, out, layout)


def rand_like(input: Any, *, dtype: Any = None, device: Any = None, requires_grad: bool = False,
              layout: Any = None, memory_format: Any = None) -> Tensor:
    x, d = _like("rand_like", input, dtype)
    return _random("rand_like", x.shape, "uniform", d, device or x.device, None, None, layout)


def randn_like(input: Any, *, dtype: Any = None, device: Any = None, requires_grad: bool = False,
               layout: Any = None, memory_format: Any = None) -> Tensor:
    x, d = _like("randn_like", input, dtype)
    return _random("randn_like", x.shape, "normal", d, device or x.device, None, None, layout)


def randint(low: int, high: Any = None, size: Any = None, *, dtype: Any = None, device: Any = None,
            requires_grad: bool = False, generator: Any = None, out: Any = None, layout: Any = None) -> Tensor:
    """torch.randint(high, size) or randint(low, high, size): uniform integers in [low, high), i64."""
    if size is None:
        if high is None:
            raise TypeError("randint: argument 'size' is required")
        low, high, size = 0, low, high
    elif high is None:
        raise TypeError("randint: argument 'high' is required")
    low, high = int(_num(low)), int(_num(high))
    if high <= low:
        raise ValueError(f"randint: argument 'high' ({high}) must be greater than 'low' ({low})")
    d = dtype_arg("randint", dtype) if dtype is not None else dt.int64
    if not d.is_float:  # torch's bounds check: the values must fit the dtype (else they would wrap)
        lo_d, hi_d = dt.int_range(d)
        for what, v in (("from", low), ("to - 1", high - 1)):
            if not lo_d <= v <= hi_d:
                raise fail(RuntimeError(f"randint: {what} is out of bounds for {dt.PY_NAMES[d.name]} "
                                        f"(low={low}, high={high})"))
    u = _random("randint", (size,), "uniform", dt.float64, None, generator, out, layout)
    return place(cast(add(cast(mul(u, float(high - low)), dt.int64), low), d), device)


__all__ = ["arange", "empty", "empty_like", "eye", "full_like", "iota", "linspace", "ones", "ones_like", "rand",
           "rand_like", "randint", "randn", "randn_like", "zeros", "zeros_like"]


# -- torch's namespace helpers: numpy interop, seeds, default dtype, memory formats -----------------

def from_numpy(ndarray: np.ndarray) -> Tensor:
    """torch.from_numpy: a CPU tensor sharing a C-contiguous `ndarray`'s memory (writes through either
    show in the other, in-place ops and compiled state updates included).

    What differs from torch: Avalon tensors have no strides, so a non-contiguous array (a slice
    `a[1:, :-1]`, a transpose, a negative stride) gives a contiguous COPY, with a warning: its values,
    but writes to the tensor do not reach the array, nor the array's to the tensor, where torch's
    tensor would share them. `np.ascontiguousarray(a)` first makes the sharing explicit. numpy dtypes
    Avalon lacks (uint16, uint32, ...) are refused."""
    if not isinstance(ndarray, np.ndarray):
        raise TypeError(f"from_numpy: expected np.ndarray (got {type(ndarray).__name__})")
    d = dtype_arg("from_numpy", ndarray.dtype)
    if d.np != ndarray.dtype:  # another byte order
        raise TypeError(f"from_numpy: the array's dtype {ndarray.dtype} is not in native byte order")
    if not ndarray.flags.c_contiguous:
        import warnings
        warnings.warn("from_numpy: the array is not C-contiguous and Avalon tensors have no strides, so the "
                      "tensor is a copy: writes to it do not reach the array, nor the array's to it (torch's "
                      "would share them). np.ascontiguousarray(a) before from_numpy makes the copy explicit.",
                      UserWarning, stacklevel=2)
        ndarray = np.array(ndarray, order="C")  # (np.ascontiguousarray would make 0-d 1-d)
    return Tensor._wrap(ndarray, d, CPU)


def as_tensor(data: Any, dtype: Any = None, device: Any = None) -> Tensor:
    """torch.as_tensor: `data` as a Tensor without a copy where possible: a Tensor of that dtype and
    device is returned itself, a C-contiguous numpy array of that dtype is shared as by `from_numpy`;
    anything else is converted (a copy)."""
    d = dtype_arg("as_tensor", dtype) if dtype is not None else None
    if isinstance(data, Tensor):
        return data.to(device=device, dtype=d)
    if isinstance(data, np.ndarray) and data.flags.c_contiguous and (d is None or d.np == data.dtype) and (
            device is None or _device(device) == CPU) and data.dtype in _SHAREABLE:
        return from_numpy(data)
    if hasattr(data, "detach") and hasattr(data, "cpu"):  # a torch tensor: its values
        return Tensor(data, d, device)
    return Tensor(np.asarray(data) if isinstance(data, np.ndarray) else data, d, device)


_SHAREABLE = {np.dtype(t) for t in (np.float16, np.float32, np.float64, np.uint8, np.int8, np.int16, np.int32,
                                     np.int64, np.bool_)}


def seed() -> int:
    """torch.seed: seed Avalon's generator from the operating system's entropy; returns the seed
    (a 63-bit int), which `av.manual_seed` takes to repeat what follows."""
    s = int(np.random.SeedSequence().entropy) % (1 << 63)
    _rng.manual_seed(s)
    return s


def initial_seed() -> int:
    """torch.initial_seed: the seed of Avalon's generator, the last `av.manual_seed(n)` / `av.seed()`
    or the entropy it started from (numpy's SeedSequence records it)."""
    return int(_rng.generator().bit_generator.seed_seq.entropy)


def get_default_dtype() -> DType:
    """torch.get_default_dtype: the dtype of Python floats, float creation functions and layer
    parameters; float32 unless `set_default_dtype` changed it."""
    return default_float_dtype()


def set_default_dtype(d: Any) -> None:
    """torch.set_default_dtype: float32 (the default) or float64. Python floats (`av.tensor(1.5)`,
    `int_tensor * 0.5`), creation functions without `dtype=` (zeros, ones, arange of floats,
    linspace, eye, rand, randn, full of a float) and new layers' parameters follow it; tensors that
    exist keep their dtype. It is read when a function is traced and is part of `av.compile`'s
    cache key. torch also takes float16/bfloat16 here; Avalon refuses them (cast instead)."""
    new = dtype_arg("set_default_dtype", d)
    if new not in (dt.float32, dt.float64):
        raise TypeError(f"set_default_dtype: only float32 and float64 are supported as the default dtype, got "
                        f"{new.name}; cast tensors to it explicitly instead")
    _DEFAULT_FLOAT[0] = new


class MemoryFormat:
    """torch's memory formats (`av.channels_last`, ...): accepted wherever torch takes a
    `memory_format=` and without effect, since Avalon tensors have no strides; the layout pass
    chooses each kernel's layout."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"avalon.{self.name}"


channels_last = MemoryFormat("channels_last")
channels_last_3d = MemoryFormat("channels_last_3d")
contiguous_format = MemoryFormat("contiguous_format")
preserve_format = MemoryFormat("preserve_format")

__all__ += ["as_tensor", "channels_last", "channels_last_3d", "contiguous_format", "from_numpy", "get_default_dtype",
            "initial_seed", "preserve_format", "seed", "set_default_dtype", "MemoryFormat"]
