"""torch's remaining fused products (addmv, addr, addbmm, baddbmm) and aminmax, composed from
matmul/outer/sum with torch's beta/alpha rule: beta = 0 ignores `input` (its nan and inf too), and
`input` must broadcast to the product's shape (it is never the larger one, as torch's expand)."""
from __future__ import annotations

from typing import Any, NamedTuple

from ..tensor import Tensor
from .core import _tensor, add, amax, amin, fail, matmul, mul, same_dtype, sum
from .pointwise import outer

__all__ = ["addbmm", "addmv", "addr", "aminmax", "baddbmm"]


def _scaled(input: Any, p: Tensor, beta: Any, alpha: Any, fn: str | None = None) -> Tensor:
    """beta * input + alpha * p, in p's shape; `fn` (addmm, addmv, ...: torch's matmul family)
    wants input of p's dtype, as torch does (addr promotes)."""
    x = _tensor(input)
    if fn is not None:
        same_dtype(fn, x, p)
    lead = p.ndim - x.ndim
    if lead < 0 or any(s not in (1, p.shape[lead + i]) for i, s in enumerate(x.shape)):
        raise fail(RuntimeError(f"The expanded size of the tensor {list(x.shape)} must match the product's shape "
                                f"{list(p.shape)} (input must broadcast to it)"))
    p = p if alpha == 1 else mul(p, alpha)
    if beta == 0:
        return p
    return add(p, x if beta == 1 else mul(x, beta))


def addmv(input: Any, mat: Any, vec: Any, *, beta: Any = 1, alpha: Any = 1) -> Tensor:
    """beta * input + alpha * (mat @ vec)."""
    m, v = _tensor(mat), _tensor(vec)
    if m.ndim != 2 or v.ndim != 1:
        raise fail(RuntimeError(f"vector + matrix @ vector expected, got {_tensor(input).ndim}, {m.ndim}, {v.ndim}"))
    return _scaled(input, matmul(m, v), beta, alpha, "addmv")


def addr(input: Any, vec1: Any, vec2: Any, *, beta: Any = 1, alpha: Any = 1) -> Tensor:
    """beta * input + alpha * outer(vec1, vec2)."""
    a, b = _tensor(vec1), _tensor(vec2)
    for name, v in (("vec1", a), ("vec2", b)):
        if v.ndim != 1:
            raise fail(RuntimeError(f"addr: Expected 1-D argument {name}, but got {v.ndim}-D"))
    return _scaled(input, outer(a, b), beta, alpha)


def _batches(b1: Any, b2: Any) -> tuple[Tensor, Tensor]:
    a, b = _tensor(b1), _tensor(b2)
    for name, t in (("batch1", a), ("batch2", b)):
        if t.ndim != 3:
            raise fail(RuntimeError(f"{name} must be a 3D tensor"))
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise fail(RuntimeError(f"Expected size for first two dimensions of batch2 tensor to be: "
                                f"[{a.shape[0]}, {a.shape[2]}] but got: [{b.shape[0]}, {b.shape[1]}]."))
    return a, b


def baddbmm(input: Any, batch1: Any, batch2: Any, *, beta: Any = 1, alpha: Any = 1) -> Tensor:
    """beta * input + alpha * (batch1 @ batch2), batch by batch."""
    a, b = _batches(batch1, batch2)
    return _scaled(input, matmul(a, b), beta, alpha, "baddbmm")


def addbmm(input: Any, batch1: Any, batch2: Any, *, beta: Any = 1, alpha: Any = 1) -> Tensor:
    """beta * input + alpha * sum over the batch of batch1[i] @ batch2[i]."""
    a, b = _batches(batch1, batch2)
    return _scaled(input, sum(matmul(a, b), 0), beta, alpha, "addbmm")


class AminmaxResult(NamedTuple):
    """torch.return_types.aminmax: (min, max)."""

    min: Tensor
    max: Tensor


def aminmax(input: Any, *, dim: int | None = None, keepdim: bool = False) -> AminmaxResult:
    """(amin, amax) over `dim` (every element when None), as one named pair."""
    x = _tensor(input)
    if (x.numel() == 0 if dim is None else x.ndim and x.shape[dim] == 0):
        raise fail(RuntimeError("aminmax(): cannot compute aminmax over an empty dimension as the operation has "
                                "no identity."))
    return AminmaxResult(amin(x, dim, keepdim), amax(x, dim, keepdim))
