"""torch's pointwise functions that are compositions of the elementwise primitives: `log1p`,
`expm1`, `lerp`, `addcmul`, `addcdiv`, `addmm`, `outer`.

log1p and expm1 keep full precision near zero, where log(1 + x) and exp(x) - 1 cancel, with
Goldberg's and Kahan's corrections. The correction is added under `stop_gradient`, so the gradient
is that of the plain log(u) or u - 1 (u = 1 + x or exp(x), rounded): 1 / u or u, accurate to
rounding, where differentiating the correction factor would be off by eps / |x|."""
from __future__ import annotations

import math
from typing import Any

from ..ir import ShapeError
from ..ir import dtypes as dt
from ..tensor import Tensor
from ..trace import located, user_location
from .core import (
    _as_operand,
    _prepare,
    _tensor,
    abs,
    add,
    cast,
    check_values,
    div,
    eq,
    exp,
    fail,
    ge,
    isnan,
    le,
    log,
    logical_and,
    logical_or,
    lt,
    matmul,
    mul,
    random,
    reshape,
    same_dtype,
    stop_gradient,
    sub,
    unsupported,
    where,
)
from .dtype_kernels import TORCH_NAMES, DTypeRuntimeError


def _float(x: Any) -> Tensor:
    x = _tensor(x)
    return x if x.dtype.is_float else cast(x, dt.float32)


def _corrected(plain: Tensor, accurate: Tensor) -> Tensor:
    """`accurate`'s value with `plain`'s gradient: plain + (accurate - plain), the difference
    (exact: the two agree to within a factor of 2) carrying no gradient."""
    return add(plain, stop_gradient(sub(accurate, plain)))


def log1p(input: Any) -> Tensor:
    """log(1 + x), accurate for tiny x: with u = 1 + x rounded, log(u) * x / (u - 1) (Goldberg),
    and x itself where u rounds to 1."""
    x = _float(input)
    u = add(x, 1.0)
    um1 = sub(u, 1.0)
    one = eq(um1, 0.0)
    lu = log(u)
    y = where(one, x, _corrected(lu, mul(lu, div(x, where(one, 1.0, um1)))))
    return where(logical_or(eq(u, 0.0), eq(x, math.inf)), lu, y)  # -inf at x = -1, inf at inf


def expm1(input: Any) -> Tensor:
    """exp(x) - 1, accurate for small x: for |x| < 0.5, (u - 1) * x / log(u) with u = exp(x)
    rounded (Kahan), and x itself where u rounds to 1; farther out exp(x) - 1 does not cancel."""
    x = _float(input)
    small = lt(abs(x), 0.5)
    xs = where(small, x, 0.25)  # lanes the other branch serves stay finite here (no nan gradient)
    u = exp(xs)
    um1 = sub(u, 1.0)
    one = eq(um1, 0.0)
    near = where(one, xs, _corrected(um1, mul(um1, div(xs, where(one, 1.0, log(u))))))
    return where(small, near, sub(exp(x), 1.0))


def lerp(input: Any, end: Any, weight: Any) -> Tensor:
    """start + weight * (end - start), evaluated from the nearer end as torch does (exact at
    weight 0 and 1). torch's dtypes: a floating-point `input`, `end` of its dtype and a `weight`
    tensor of its dtype too unless 0-d (numpy would promote, and int inputs computed what torch refuses)."""
    x = _tensor(input)
    if not x.dtype.is_float:
        raise fail(NotImplementedError(f"lerp: input must be a floating-point tensor, got {x.dtype.name}"))
    end, weight = _as_operand(end), _as_operand(weight)
    for name, t in (("end", end), ("weight", weight)):
        if isinstance(t, Tensor) and t.dtype != x.dtype and (name == "end" or t.ndim > 0):
            raise fail(DTypeRuntimeError(f"lerp: expected dtype {x.dtype.name} for `{name}` but got dtype "
                                         f"{t.dtype.name}; cast it with .to(...)"))
    start, end_, w = _prepare("lerp", x, end, weight, dtype=x.dtype)
    d = sub(end_, start)
    return where(lt(abs(w), 0.5), add(start, mul(w, d)), sub(end_, mul(d, sub(1.0, w))))


def addcmul(input: Any, tensor1: Any, tensor2: Any, *, value: Any = 1, out: Any = None) -> Tensor:
    """input + value * tensor1 * tensor2."""
    unsupported("addcmul", out=out)
    p = mul(tensor1, tensor2)
    return add(input, p if value == 1 else mul(p, value))


def addcdiv(input: Any, tensor1: Any, tensor2: Any, *, value: Any = 1, out: Any = None) -> Tensor:
    """input + value * tensor1 / tensor2."""
    unsupported("addcdiv", out=out)
    q = div(tensor1, tensor2)
    return add(input, q if value == 1 else mul(q, value))


def addmm(input: Any, mat1: Any, mat2: Any, *, beta: Any = 1, alpha: Any = 1, out: Any = None) -> Tensor:
    """beta * input + alpha * (mat1 @ mat2), input broadcast; beta = 0 ignores input (its nan too)."""
    unsupported("addmm", out=out)
    a, b = _tensor(mat1), _tensor(mat2)
    if a.ndim != 2 or b.ndim != 2:
        raise located(ShapeError(f"addmm: mat1 and mat2 must be 2-d, got {a.shape} and {b.shape}"), user_location())
    p = matmul(a, b)
    if isinstance(input, Tensor):
        same_dtype("addmm", input, p)  # torch's rule (an f64 bias on an f32 product is an error)
    p = p if alpha == 1 else mul(p, alpha)
    if beta == 0:
        return p
    return add(p, input if beta == 1 else mul(input, beta))


def outer(input: Any, vec2: Any) -> Tensor:
    """The outer product of two 1-d tensors: out[i, j] = input[i] * vec2[j]."""
    a, b = _tensor(input), _tensor(vec2)
    if a.ndim != 1 or b.ndim != 1:
        raise located(ShapeError(f"outer: expects 1-d tensors, got {a.shape} and {b.shape}"), user_location())
    return mul(reshape(a, (a.shape[0], 1)), reshape(b, (1, b.shape[0])))


ger = outer

def isclose(input: Any, other: Any, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False) -> Tensor:
    """torch.isclose: |input - other| <= atol + rtol * |other| (infinities equal only to themselves).
    As torch: two tensors of one dtype (numpy promoted i64 against f32 in silence), and bool tensors
    compare equal or not (`-` has no bool case)."""
    a, b = _tensor(input), _tensor(other)
    if isinstance(input, Tensor) and isinstance(other, Tensor) and a.dtype != b.dtype:
        raise fail(DTypeRuntimeError(f"isclose: {TORCH_NAMES[a.dtype.name]} did not match {TORCH_NAMES[b.dtype.name]} "
                                     f"(torch compares tensors of one dtype); cast one with .to(...)"))
    if a.dtype is dt.bool_ and b.dtype is dt.bool_:
        return eq(a, b)
    close = logical_or(eq(a, b), le(abs(sub(a, b)), add(mul(abs(b), rtol), atol)))
    return logical_or(close, logical_and(isnan(a), isnan(b))) if equal_nan else close


def allclose(input: Any, other: Any, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False) -> bool:
    """torch.allclose: a Python bool, so it needs concrete values (not inside a traced function)."""
    return bool(isclose(input, other, rtol, atol, equal_nan).numpy().all())


def equal(input: Any, other: Any) -> bool:
    """torch.equal: same shape and the same elements (a Python bool)."""
    a, b = _tensor(input), _tensor(other)
    return a.shape == b.shape and bool(eq(a, b).numpy().all())


def bernoulli(input: Any, p: float | None = None, *, generator: Any = None) -> Tensor:
    """torch.bernoulli: 1 with probability `input` (or `p`) per element, in the input's dtype."""
    from ..random import next_seed
    if generator is not None:
        raise NotImplementedError("a torch.Generator is not supported; seed with av.manual_seed")
    x = _tensor(input)
    if p is not None and not 0 <= float(p) <= 1:
        raise fail(RuntimeError(f"bernoulli_ expects p to be in [0, 1], but got p={p}"))
    if p is None:  # torch's check of the probabilities (eagerly at once, compiled when the graph runs)
        x = check_values(x, logical_and(ge(x, 0), le(x, 1)), "bernoulli: Expected p_in >= 0 && p_in <= 1 to be "
                                                              "true, but got false (probabilities outside [0, 1])")
    prob = x if p is None else p
    d = x.dtype if x.dtype.is_float else dt.float32
    return cast(lt(random(next_seed(), x.shape, "uniform", d), prob), d)


__all__ = ["addcdiv", "addcmul", "addmm", "allclose", "bernoulli", "equal", "expm1", "ger", "isclose", "lerp",
           "log1p", "outer"]
