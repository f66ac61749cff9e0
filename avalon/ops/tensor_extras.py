"""What Tensor methods without a torch.* function of their own compute: `fill_diagonal_`'s value,
the random fills `random_`, `geometric_`, `log_normal_`, `cauchy_`, and
the storage queries `element_size`, `stride`, `data_ptr`, `get_device`, plus `resize_` and the
refusal of `register_hook`. (`byte()`, `char()` and `short()` are casts to uint8, int8, int16.)"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..ir import dtypes as dt
from ..tensor import Tensor
from .core import (
    _shape_kw,
    _tensor,
    add,
    cast,
    eq,
    exp,
    fail,
    floor,
    full,
    log,
    logical_and,
    lt,
    mul,
    neg,
    random,
    remainder,
    sub,
    where,
)
from .creation import iota
from .mathfn import tan


def fill_diagonal(input: Any, fill_value: Any, wrap: bool = False) -> Tensor:
    """The tensor with `fill_value` on its main diagonal (all dims of a >2-d tensor equal, as
    torch requires); a tall matrix with `wrap` continues the diagonal every n + 1 rows."""
    x = _tensor(input)
    if x.ndim < 2:
        raise fail(RuntimeError(f"fill_diagonal_: dimensions must larger than 1, got {x.ndim}"))
    if x.ndim > 2 and len(set(x.shape)) != 1:
        raise fail(RuntimeError("fill_diagonal_: all dimensions of input must be of equal length"))
    if x.ndim > 2:
        idx = iota(x.shape, 0)
        on = eq(idx, idx)
        for k in range(1, x.ndim):
            on = logical_and(on, eq(iota(x.shape, k), idx))
        return where(on, full((), fill_value, x.dtype), x)
    rows, cols = x.shape
    flat = add(mul(iota(x.shape, 0), cols), iota(x.shape, 1))
    on = eq(remainder(flat, cols + 1), 0)
    if not wrap:
        n = min(rows, cols)
        on = logical_and(on, lt(flat, n * cols))
    return where(on, full((), fill_value, x.dtype), x)


def _uniform(x: Tensor, generator: Any) -> Tensor:
    from ..random import next_seed
    if generator is not None:
        raise NotImplementedError("a torch.Generator is not supported; seed with av.manual_seed")
    return random(next_seed(), x.shape, "uniform", dt.float64)


def random_fill(input: Any, *args: Any, generator: Any = None, **kwargs: Any) -> Tensor:
    """Tensor.random_(): uniform integers in [from, to - 1] (`random_(to)`, `random_(from, to)`);
    with no bounds [0, 2^mantissa] for floats (2^24 for f32, 2^53 for f64) or [0, max] for integers."""
    x = _tensor(input)
    lo = kwargs.pop("from", None)
    to = kwargs.pop("to", None)
    if kwargs or len(args) > 2:
        raise TypeError(f"random_() takes from and to, got {len(args)} positional and {sorted(kwargs)}")
    if len(args) == 1:
        lo, to = (lo, args[0]) if lo is not None else (0, args[0])
    elif len(args) == 2:
        lo, to = args
    lo = 0 if lo is None else int(lo)
    if to is None:
        top = {"f64": 2 ** 53, "f32": 2 ** 24, "f16": 2 ** 11, "bf16": 2 ** 8}.get(x.dtype.name)
        top = dt.int_range(x.dtype)[1] if top is None else top
        to = top + 1
    to = int(to)
    if to <= lo:
        raise fail(RuntimeError(f"random_ expects 'from' to be less than 'to', but got from={lo} >= to={to}"))
    span = float(to - lo)
    r = floor(mul(_uniform(x, generator), span))
    r = where(eq(r, span), span - 1, r)  # (rounding of u * span right below 1)
    if x.dtype.is_float:
        return cast(add(r, float(lo)), x.dtype)
    return cast(add(cast(r, dt.int64), lo), x.dtype)


def geometric_fill(input: Any, p: float, *, generator: Any = None) -> Tensor:
    """Tensor.geometric_(p): the number of Bernoulli(p) trials to the first success, >= 1:
    ceil(log(u) / log(1 - p))."""
    x = _tensor(input)
    if not 0 < float(p) < 1:
        raise fail(RuntimeError(f"geometric_ expects p to be in (0, 1), but got p={p}"))
    u = sub(1.0, _uniform(x, generator))  # (0, 1]
    k = neg(floor(neg(div_(log(u), math.log1p(-float(p))))))
    k = where(eq(k, 0.0), 1.0, k)
    return cast(k, x.dtype)


def div_(a: Tensor, b: float) -> Tensor:
    return mul(a, 1.0 / b)


def log_normal_fill(input: Any, mean: float = 1.0, std: float = 2.0, *, generator: Any = None) -> Tensor:
    """Tensor.log_normal_(mean, std): exp of normal draws with that mean and std."""
    from ..random import next_seed
    x = _tensor(input)
    if generator is not None:
        raise NotImplementedError("a torch.Generator is not supported; seed with av.manual_seed")
    if not float(std) > 0:  # torch's check (a negative std drew from a flipped distribution)
        raise fail(RuntimeError(f"log_normal_ expects std > 0.0, but found std={std}"))
    d = x.dtype if x.dtype.is_float else dt.float32
    z = random(next_seed(), x.shape, "normal", d)
    return cast(exp(add(mul(z, float(std)), float(mean))), x.dtype)


def cauchy_fill(input: Any, median: float = 0.0, sigma: float = 1.0, *, generator: Any = None) -> Tensor:
    """Tensor.cauchy_(median, sigma): median + sigma * tan(pi * (u - 1/2))."""
    x = _tensor(input)
    if not float(sigma) > 0:  # torch's check
        raise fail(RuntimeError(f"cauchy_ expects sigma > 0.0, but found sigma={sigma}"))
    u = cast(_uniform(x, generator), x.dtype if x.dtype.is_float else dt.float32)
    return cast(add(mul(tan(mul(sub(u, 0.5), math.pi)), float(sigma)), float(median)), x.dtype)


def element_size(input: Any) -> int:
    """Bytes per element of the dtype (bf16 counts 2, as on a GPU, though the CPU holds it in f32)."""
    return _tensor(input).dtype.itemsize


def stride(input: Any, dim: int | None = None) -> Any:
    """torch's strides in elements: row-major for a tensor of its own, its base's layout for a view."""
    from .. import views
    from .core import check_dim
    x = _tensor(input)
    st = views.layout_of(x)[1]
    if dim is None:
        return tuple(st)
    return st[check_dim("stride", dim, x.ndim)]


def storage_offset(input: Any) -> int:
    """Where a view's first element lies in its base, in elements (0 for a tensor of its own)."""
    from .. import views
    return int(views.layout_of(_tensor(input))[2])


def data_ptr(input: Any) -> int:
    """The address of the first element: the base's buffer plus the view's offset, so views of
    one tensor compare as torch's do (`a.data_ptr() == b.data_ptr()`)."""
    from .. import views
    x = _tensor(input)
    base = x._view.base if x._view is not None else x
    base._concrete("Tensor.data_ptr()")
    off = views.layout_of(x)[2]
    data = base._data
    addr = int(data.ctypes.data) if isinstance(data, np.ndarray) else int(data.data_ptr())
    return addr + off * x.dtype.itemsize


def get_device(input: Any) -> int:
    """-1 on the CPU, else the CUDA device's index."""
    dev = _tensor(input).device
    return -1 if dev.type == "cpu" else int(dev.index or 0)


def pin_memory(input: Any, device: Any = None) -> Tensor:
    """Tensor.pin_memory(): Avalon has no pinned host memory; the tensor itself."""
    return _tensor(input)


def is_leaf(input: Any) -> bool:
    """Tensor.is_leaf: True for every tensor, since Avalon records no autograd graph on tensors."""
    return True


def view(input: Any, *shape: Any, size: Any = None, dtype: Any = None) -> Tensor:
    """Tensor.view: torch's view, an error where it would need a copy (see avalon/views.py); the
    shape as arguments, a tuple or torch's `size=`, or torch's `dtype=`."""
    from .. import views
    shape = _shape_kw("view", _shape_kw("view", shape, "size", size), "dtype", dtype)
    return views.view(_tensor(input), *shape)


def register_hook(input: Any, hook: Any) -> None:
    """torch's gradient hooks have no place where gradients are values: refused, saying what to do."""
    raise RuntimeError("Tensor.register_hook: Avalon's gradients are values returned by av.grad / "
                       "av.value_and_grad, not accumulated through hooks during backward(); transform the gradient "
                       "dict instead (`loss, grads = av.value_and_grad(loss_fn)(model, x, y)`, then e.g. "
                       "`grads = {k: hook(g) for k, g in grads.items()}` before `opt.step(grads)`)")


def retain_grad(input: Any) -> None:
    """torch's `retain_grad()` (keep a non-leaf's `.grad` after backward) has no place where gradients are
    values: refused, saying how to get an activation's gradient (it was an AttributeError naming nothing)."""
    raise RuntimeError("Tensor.retain_grad: Avalon's gradients are values returned by av.grad / "
                       "av.value_and_grad, not .grad attributes filled by backward(); for the gradient of an "
                       "intermediate value, make it an argument: `g = av.grad(lambda h: loss_of(h))(h)`")


def register_post_accumulate_grad_hook(input: Any, hook: Any) -> None:
    """torch's hook after `.grad` accumulates: refused as register_hook (gradients are values here)."""
    raise RuntimeError("Tensor.register_post_accumulate_grad_hook: Avalon's gradients are values returned by "
                       "av.grad / av.value_and_grad, not accumulated into .grad during backward(); apply the step to "
                       "the gradient dict instead (`opt.step(grads)`)")


def resize(input: Tensor, *sizes: Any) -> Tensor:
    """Tensor.resize_ for a new shape with the same number of elements (the elements keep their
    row-major order, as torch's); growing or shrinking storage is refused. Eager tensors that are
    neither views nor have live views only."""
    shape = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else tuple(sizes)
    shape = tuple(int(s) for s in shape)
    x = input
    if shape == x.shape:
        return x
    if math.prod(shape) != x.numel():
        raise fail(RuntimeError(f"resize_: Avalon tensors cannot grow or shrink their storage (from {x.shape}, "
                                f"{x.numel()} elements, to {shape}, {math.prod(shape)}); make a new tensor (av.zeros"
                                f"({shape}) or x.new_zeros(...)) instead"))
    if x.is_traced:
        raise fail(RuntimeError("resize_: a traced tensor cannot change its shape in place; use x = x.reshape(...)"))
    if x._view is not None or any(r() is not None for r in (x._views or [])):
        raise fail(RuntimeError("resize_: this tensor is a view or has views, which would lose their layout; use "
                                "x = x.reshape(...)"))
    x._data = x._data.reshape(shape) if isinstance(x._data, np.ndarray) else x._data.reshape(shape)
    return x


def reshape_inplace(x: Tensor, fn: Any, what: str) -> Tensor:
    """`x` becomes `fn(x)`, a tensor of another shape (`x.unsqueeze_(0)`, `x.t_()`): eagerly its
    storage is replaced; in a trace the object stands for the new value. Refused for a view or a tensor
    with views (their layouts would be wrong) and, in a trace, for an argument or a model's tensor (the
    caller's tensor cannot change shape): torch's shape-changing in-place methods, where Avalon can. A view
    with no views of its own whose new shape is a view of the same base (`g = p.grad.data; g.transpose_(0, 1)`,
    Shampoo's) stays a view of that base through the new step, as torch changes only the view's sizes and strides."""
    if x._view is not None and not any(r() is not None for r in (x._views or [])):
        out = fn(x)
        if out._view is not None and out._view.base is x._view.base and out._trace is x._trace:
            x._view = out._view
            if out._value is not None:
                x._value = out._value
            else:
                x._data = out._data
            return x
    if x._view is not None or any(r() is not None for r in (x._views or [])):
        raise fail(RuntimeError(f"{what}: this tensor is a view or has views, which would lose their layout; use "
                                "the out-of-place form (x = x.unsqueeze(0), ...)"))
    new = fn(x).clone()  # (its own storage: not a view of x)
    if x.is_traced or new.is_traced:
        tr = new._trace
        if x._trace is not tr or id(x) in tr.stands_for or id(x) in tr.leaves:
            raise fail(RuntimeError(f"{what}: an argument or a model's tensor cannot change its shape in place "
                                    "inside a traced function; use the out-of-place form (x = x.unsqueeze(0), ...)"))
        x._value = new._value
        return x
    x._data = new.to(x.device)._data
    return x


__all__ = ["cauchy_fill", "data_ptr", "element_size", "fill_diagonal", "geometric_fill", "get_device", "is_leaf",
           "log_normal_fill", "pin_memory", "random_fill", "register_hook", "register_post_accumulate_grad_hook",
           "resize", "retain_grad", "storage_offset", "stride", "view"]
