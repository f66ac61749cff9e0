"""Sparse COO tensors: `SparseTensor`, `av.sparse_coo_tensor`, `av.sparse.mm` / `av.spmm`, `av.sparse.sum`,
`av.sparse.FloatTensor` -- what graph neural network code (Kipf's pygcn, hand-written GCN/GAT/GraphSAGE
layers) does with torch's sparse adjacency matrices.

Why a frontend type and no sparse IR: as `avalon/complex.py` makes complex values pairs of real tensors,
a `SparseTensor` is a pair of ordinary Avalon tensors, int64 `indices` of shape [sparse_dims, nnz] and
`values` of shape [nnz, *dense_dims], plus a static size. Every operation on it is a few existing
primitives, so tracing, autodiff, fusion, every backend and every export see only dense ops:

- `to_dense()` is an `index_add` of the values at their flattened row-major offsets into zeros
  (duplicate indices add up, as torch sums an uncoalesced tensor's duplicates);
- `sparse @ dense` is a `take` of the dense rows at the column indices, scaled by the values, then an
  `index_add` into the output rows -- O(nnz * columns) work and memory, never the dense matrix;
- sums, transposes, scalar products and products with a dense tensor work on the two parts.

Gradients come from the existing VJP rules: to the dense operand (a scatter of the output's gradient)
and to the values (a gather), so learnable edge weights train as in torch. The gradient of a
SparseTensor argument itself (`av.grad(f)(adj)`) is a SparseTensor with the same indices and the
values' gradient, which is what torch's gradient of `to_dense`/`sparse.mm` holds.

nnz is a shape, so it is static: inside `av.compile`/`av.grad` a SparseTensor argument is a pytree node
whose indices and values are inputs (each distinct nnz is a new signature, like any shape), and what
would decide nnz from values -- `dense.to_sparse()`, `coalesce()` merging duplicates, `av.sparse.sum`
over some of the sparse dims -- runs eagerly. `coalesce()` works in a trace when the indices are known
(not an input: a closure's indices) or the tensor is known to be coalesced (the flag is part of the
signature), and otherwise raises naming the way out; `sparse.sum` over sparse dims in a trace returns
an uncoalesced result (same `to_dense()`, nnz not merged).

A SparseTensor held by a model is not state (torch's plain attribute, not a parameter or buffer): the
walks that find parameters do not enter it, and a trace reads it as a constant.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import ops as _ops
from .ir import dtypes as dt
from .tensor import Tensor
from .tensor import tensor as _tensor


class Layout:
    """torch.strided / torch.sparse_coo: a tensor's memory layout, as `x.layout` reports it."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"av.{self.name}"

    def __reduce__(self) -> str:
        return self.name


strided = Layout("strided")
sparse_coo = Layout("sparse_coo")

Tensor.is_sparse = False  # dense tensors: what ported code checks before calling .to_dense()
Tensor.layout = strided

_SUPPORTED = ("to_dense(), coalesce(), indices()/values() (_indices()/_values()), _nnz(), sparse_dim(), dense_dim(), "
              "size()/shape/dim(), t(), sum(dim), mm/matmul/@ by a dense matrix or vector, * and / by a scalar, * by "
              "a dense tensor of the same shape, + of a sparse or dense tensor, to(dtype/device), float()/double(), "
              "detach(), clone(), requires_grad_()")


def _unsupported(what: str) -> NotImplementedError:
    return NotImplementedError(f"{what} is not supported for Avalon's sparse COO tensors (avalon/sparse.py supports "
                               f"{_SUPPORTED}); convert with .to_dense() first")


def _as_tensor(x: Any, dtype: Any = None) -> Tensor:
    if isinstance(x, Tensor):
        return x if dtype is None else x.to(dtype)
    return _tensor(x, dtype=dtype)


def fail(err: Exception) -> Exception:
    """The error located at the user's line (ops.core.fail; read late, as ops imports this module's importers)."""
    return _ops.core.fail(err)


def _known(x: Tensor) -> bool:
    """Values the frontend can read now (eager, or a closure's constant inside a trace)."""
    return not x.is_traced


class SparseTensor:
    """A sparse COO tensor: int64 `indices` [sparse_dim, nnz], `values` [nnz, *dense dims], a static `size`.

    Built by `av.sparse_coo_tensor`, `av.sparse.FloatTensor` or `dense.to_sparse()`; not a subclass of
    Tensor (nothing that expects dense elements can take it by mistake: such uses raise)."""

    __slots__ = ("_i", "_v", "_size", "_coalesced", "__weakref__")  # no __dict__: model walks do not enter it
    __array_priority__ = 200
    __array_ufunc__ = None  # numpy defers to our operators: `array @ S` is S.__rmatmul__
    is_sparse = True
    layout = sparse_coo
    is_quantized = False
    is_mkldnn = False

    def __init__(self, indices: Tensor, values: Tensor, size: Sequence[int], coalesced: bool = False):
        self._i, self._v, self._size, self._coalesced = indices, values, tuple(int(s) for s in size), bool(coalesced)

    # -- facts
    @property
    def shape(self) -> tuple[int, ...]:
        return self._size

    def size(self, dim: int | None = None) -> Any:
        if dim is None:
            return self._size
        return self._size[_dim(dim, len(self._size))]

    def dim(self) -> int:
        return len(self._size)

    ndim = property(dim)
    dtype = property(lambda self: self._v.dtype)
    device = property(lambda self: self._v.device)
    is_cuda = property(lambda self: self._v.is_cuda)
    is_traced = property(lambda self: self._i.is_traced or self._v.is_traced)
    requires_grad = property(lambda self: self._v.requires_grad)

    def sparse_dim(self) -> int:
        return int(self._i.shape[0])

    def dense_dim(self) -> int:
        return len(self._size) - self.sparse_dim()

    def _nnz(self) -> int:
        return int(self._i.shape[1])

    def numel(self) -> int:
        return math.prod(self._size)

    def is_coalesced(self) -> bool:
        return self._coalesced

    def is_floating_point(self) -> bool:
        return self._v.dtype.is_float

    def is_complex(self) -> bool:
        return False

    def __len__(self) -> int:
        if not self._size:
            raise TypeError("len() of a 0-d tensor")
        return self._size[0]

    # -- the parts
    def _indices(self) -> Tensor:
        return self._i

    def _values(self) -> Tensor:
        return self._v

    def indices(self) -> Tensor:
        if not self._coalesced:
            raise RuntimeError("Cannot get indices on an uncoalesced tensor, please call .coalesce() first")
        return self._i

    def values(self) -> Tensor:
        if not self._coalesced:
            raise RuntimeError("Cannot get values on an uncoalesced tensor, please call .coalesce() first")
        return self._v

    def _offsets(self) -> Tensor:
        """Each stored element's row-major offset over the sparse dims: an int64 [nnz] tensor."""
        sd = self.sparse_dim()
        off, stride = None, 1
        for k in range(sd - 1, -1, -1):
            term = self._i[k] if stride == 1 else self._i[k] * stride
            off = term if off is None else off + term
            stride *= self._size[k]
        return off

    # -- conversions
    def to_dense(self, dtype: Any = None, *, masked_grad: Any = None) -> Tensor:
        """The dense tensor: the values added at their offsets into zeros (duplicates sum)."""
        v = self._v if dtype is None else self._v.to(dtype)
        sd = self.sparse_dim()
        rows = math.prod(self._size[:sd])
        flat = _ops.zeros((rows, *self._size[sd:]), dtype=v.dtype, device=v.device)
        if self._nnz():
            flat = _ops.index_add(flat, 0, self._offsets(), v)
        return flat.reshape(self._size)

    def coalesce(self) -> SparseTensor:
        """Indices sorted (row-major) and unique, duplicates' values summed. Needs the indices' values
        (eager, or a closure's indices inside a trace), unless the tensor is coalesced already."""
        if self._coalesced:
            return self
        if not _known(self._i):
            raise fail(TypeError(
                "coalesce: merging duplicate indices decides nnz (a shape) from the indices' values, which a traced "
                "or compiled function does not know; coalesce eagerly before passing the sparse tensor in (it stays "
                "coalesced inside), build it with av.sparse_coo_tensor(..., is_coalesced=True) when the indices are "
                "sorted and unique, or use .to_dense() / sparse.mm, which handle duplicate indices"))
        sd = self.sparse_dim()
        idx = self._i.numpy().astype(np.int64).reshape(sd, -1)
        keys = np.ravel_multi_index(tuple(idx), self._size[:sd]) if idx.shape[1] else np.zeros(0, np.int64)
        uniq, inv = np.unique(keys, return_inverse=True)
        new_i = np.stack(np.unravel_index(uniq, self._size[:sd])).astype(np.int64).reshape(sd, -1)
        if len(uniq) == idx.shape[1] and np.array_equal(uniq, keys):  # sorted and unique already
            return SparseTensor(self._i, self._v, self._size, True)
        v = _ops.zeros((len(uniq), *self._v.shape[1:]), dtype=self._v.dtype, device=self._v.device)
        if idx.shape[1]:
            v = _ops.index_add(v, 0, _tensor(inv.reshape(-1).astype(np.int64), device=self._v.device), self._v)
        return SparseTensor(_tensor(new_i, device=self._i.device), v, self._size, True)

    def to_sparse(self, *args: Any, **kw: Any) -> SparseTensor:
        return self

    to_sparse_coo = to_sparse

    def numpy(self, *args: Any, **kw: Any) -> np.ndarray:
        raise TypeError("can't convert Sparse layout tensor to numpy. Use Tensor.to_dense() first.")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError("a sparse COO tensor cannot be read as a dense array here (Avalon never densifies "
                        "implicitly); call .to_dense() first, or use av.sparse.mm / av.spmm / av.mm for products")

    def tolist(self) -> Any:
        raise TypeError("tolist() of a sparse tensor: call .to_dense().tolist()")

    def item(self) -> Any:
        raise TypeError("item() of a sparse tensor: call .to_dense().item()")

    def __bool__(self) -> bool:
        raise TypeError("the truth value of a sparse tensor: call .to_dense() first")

    def _with(self, values: Tensor, coalesced: bool | None = None, indices: Tensor | None = None) -> SparseTensor:
        return SparseTensor(self._i if indices is None else indices, values, self._size,
                            self._coalesced if coalesced is None else coalesced)

    def to(self, *args: Any, **kw: Any) -> SparseTensor:
        """A dtype converts the values, a device moves both parts (`adj.to(device)`, `adj.double()`)."""
        for a in (*args, *kw.values()):
            if isinstance(a, Layout) or (isinstance(a, str) and "sparse" in a):
                raise _unsupported("to(layout)")
        v = self._v.to(*args, **kw)
        i = self._i if v.device == self._i.device else self._i.to(v.device)
        return self._with(v, indices=i)

    def type(self, dtype: Any = None, non_blocking: bool = False, **kw: Any) -> Any:
        if dtype is None:
            return "torch.sparse." + {"f32": "FloatTensor", "f64": "DoubleTensor"}.get(self.dtype.name, "Tensor")
        return self.to(dtype)

    def float(self) -> SparseTensor:
        return self.to(dt.float32)

    def double(self) -> SparseTensor:
        return self.to(dt.float64)

    def half(self) -> SparseTensor:
        return self.to(dt.float16)

    def long(self) -> SparseTensor:
        return self.to(dt.int64)

    def cpu(self) -> SparseTensor:
        return self.to("cpu")

    def cuda(self, device: Any = None, non_blocking: bool = False) -> SparseTensor:
        return self.to("cuda" if device is None else device)

    def type_as(self, other: Any) -> SparseTensor:
        return self.to(other.dtype)

    def detach(self) -> SparseTensor:
        return self._with(self._v.detach(), indices=self._i.detach())

    def clone(self, *args: Any, **kw: Any) -> SparseTensor:
        return self._with(self._v.clone(), indices=self._i.clone())

    def requires_grad_(self, requires_grad: bool = True) -> SparseTensor:
        """Forwarded to the values (av.grad chooses what it differentiates; freezing them keeps them out)."""
        if self._v.dtype.is_float:
            self._v.requires_grad_(requires_grad)
        elif requires_grad:
            raise RuntimeError(f"only floating-point tensors can require gradients, this one is {self.dtype.name}")
        return self

    # -- shape
    def t(self) -> SparseTensor:
        if len(self._size) > 2:
            raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {len(self._size)}D")
        if len(self._size) < 2:
            return self
        return self.transpose(0, 1)

    def transpose(self, dim0: int, dim1: int) -> SparseTensor:
        n, sd = len(self._size), self.sparse_dim()
        a, b = _dim(dim0, n), _dim(dim1, n)
        if a == b:
            return self
        if a >= sd or b >= sd:
            raise _unsupported("transposing a dense dim of a hybrid sparse tensor")
        order = list(range(sd))
        order[a], order[b] = b, a
        i = _ops.stack([self._i[k] for k in order], 0)
        size = list(self._size)
        size[a], size[b] = size[b], size[a]
        return SparseTensor(i, self._v, size, False)

    T = property(t)
    mT = property(lambda self: self.transpose(-2, -1))  # noqa: N815 (torch's name)

    # -- reductions and products
    def sum(self, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Any:
        if keepdim:
            raise _unsupported("sum(keepdim=True)")
        return sum(self, dim, dtype)

    def mm(self, mat2: Any) -> Tensor:
        return mm(self, mat2)

    def matmul(self, other: Any) -> Tensor:
        return mm(self, other)

    def mv(self, vec: Any) -> Tensor:
        return mm(self, vec)

    __matmul__ = matmul

    def __rmatmul__(self, other: Any) -> Tensor:
        return _dense_mm(other, self)

    def mul(self, other: Any) -> SparseTensor:
        return _mul(self, other)

    __mul__ = __rmul__ = multiply = mul

    def div(self, other: Any) -> SparseTensor:
        if not _is_scalar(other):
            raise _unsupported("dividing a sparse tensor by a tensor")
        return self._with(self._v / other)

    __truediv__ = divide = div

    def __neg__(self) -> SparseTensor:
        return self._with(-self._v)

    def neg(self) -> SparseTensor:
        return -self

    def add(self, other: Any, *, alpha: Any = 1) -> Any:
        return _add(self, other, alpha)

    __add__ = add

    def __radd__(self, other: Any) -> Any:
        return _add(self, other, 1)

    def sub(self, other: Any, *, alpha: Any = 1) -> Any:
        return _add(self, other, -alpha)

    __sub__ = sub

    def __rsub__(self, other: Any) -> Any:
        return _add(-self, other, 1)

    def __repr__(self) -> str:
        extra = "" if self.dtype == _ops.get_default_dtype() else f", dtype={self.dtype!r}"
        if self.is_traced:
            return f"SparseTensor(traced, size={self._size}, nnz={self._nnz()}{extra}, layout=av.sparse_coo)"
        ind = repr(self._i).replace("\n", "\n" + " " * 15)
        val = repr(self._v).replace("\n", "\n" + " " * 14)
        return (f"tensor(indices={ind},\n       values={val},\n       size={self._size}, nnz={self._nnz()}{extra}, "
                f"layout=av.sparse_coo)")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"SparseTensor has no {name!r}: Avalon's sparse COO tensors (avalon/sparse.py) support "
                             f"{_SUPPORTED}; call .to_dense() for the rest")


def _dim(d: int, n: int) -> int:
    if not -max(n, 1) <= d < max(n, 1):
        raise IndexError(f"Dimension out of range (expected to be in range of [{-max(n, 1)}, {max(n, 1) - 1}], "
                         f"but got {d})")
    return d % max(n, 1)


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool) or (
        isinstance(x, Tensor) and x.ndim == 0)


def _mul(s: SparseTensor, other: Any) -> SparseTensor:
    """Values scaled: by a scalar (keeps coalesced), or by a dense tensor of s's shape at s's indices."""
    if isinstance(other, SparseTensor):
        raise _unsupported("the elementwise product of two sparse tensors")
    if _is_scalar(other):
        return s._with(s._v * other)
    d = _as_tensor(other)
    if tuple(d.shape) != s.shape:
        raise _unsupported(f"multiplying a sparse tensor of size {s.shape} by a dense tensor of shape "
                           f"{tuple(d.shape)} (only a scalar or the same shape)")
    sd = s.sparse_dim()
    flat = d.reshape(math.prod(s.shape[:sd]), *s.shape[sd:])
    picked = _ops.take(flat, s._offsets(), 0) if s._nnz() else flat[:0]
    return s._with(s._v * picked, coalesced=s._coalesced)


def _add(s: SparseTensor, other: Any, alpha: Any) -> Any:
    """sparse + sparse: the two index lists joined (a coalesced pair is coalesced again when the indices
    are known, as torch's sum of coalesced tensors is); sparse + dense is dense, as in torch."""
    if isinstance(other, SparseTensor):
        if other.shape != s.shape or other.sparse_dim() != s.sparse_dim():
            raise RuntimeError(f"add: sparse tensors of sizes {s.shape} and {other.shape} (sparse dims "
                               f"{s.sparse_dim()}, {other.sparse_dim()}) do not match")
        ov = other._v if alpha == 1 else other._v * alpha
        out = SparseTensor(_ops.cat([s._i, other._i], 1), _ops.cat([s._v, ov.to(s._v.dtype)], 0), s.shape, False)
        if s._coalesced and other._coalesced and _known(out._i):
            return out.coalesce()
        return out
    if _is_scalar(other) and not isinstance(other, Tensor):
        raise _unsupported("adding a scalar to a sparse tensor")
    d = _as_tensor(other)
    return s.to_dense() + (d if alpha == 1 else d * alpha)


# -- products ---------------------------------------------------------------------------------------

def _check_mm(s: SparseTensor, d: Tensor, name: str) -> None:
    if s.dim() != 2 or s.sparse_dim() != 2:
        raise _unsupported(f"{name} of a sparse tensor of size {s.shape} with {s.sparse_dim()} sparse dims "
                           "(only a 2-d sparse matrix with no dense dims)")
    if d.ndim not in (1, 2):
        raise _unsupported(f"{name} of a sparse matrix by a {d.ndim}-d dense tensor (only a matrix or a vector)")
    if d.shape[0] != s.shape[1]:
        raise RuntimeError(f"{name}: mat1 and mat2 shapes cannot be multiplied ({s.shape[0]}x{s.shape[1]} and "
                           f"{'x'.join(map(str, d.shape))})")
    if d.dtype != s.dtype:
        raise RuntimeError(f"{name}: expected the dense operand to have the sparse tensor's dtype {s.dtype!r}, got "
                           f"{d.dtype!r} (convert one with .to(dtype))")


def mm(mat1: Any, mat2: Any) -> Tensor:
    """torch.sparse.mm / torch.spmm / torch.mm with a sparse operand: (sparse [m, k]) @ (dense [k, n] or [k])
    as a gather of dense rows at the column indices, scaled by the values, added into the output rows.
    dense @ sparse is the transpose of sparse^T @ dense^T."""
    if isinstance(mat1, SparseTensor) and isinstance(mat2, SparseTensor):
        raise _unsupported("the product of two sparse tensors (sparse @ sparse)")
    if not isinstance(mat1, SparseTensor):
        if not isinstance(mat2, SparseTensor):
            return _ops.mm(mat1, mat2)
        return _dense_mm(mat1, mat2)
    d = _as_tensor(mat2)
    _check_mm(mat1, d, "mm")
    rows, cols = mat1._i[0], mat1._i[1]
    out_shape = (mat1.shape[0], *d.shape[1:])
    out = _ops.zeros(out_shape, dtype=d.dtype, device=d.device)
    if not mat1._nnz():
        return out
    gathered = _ops.take(d, cols, 0)
    v = mat1._v if d.ndim == 1 else mat1._v.reshape(-1, 1)
    return _ops.index_add(out, 0, rows, gathered * v)


def _dense_mm(a: Any, s: SparseTensor) -> Tensor:
    d = _as_tensor(a)
    if d.ndim != 2:
        raise _unsupported(f"a {d.ndim}-d dense tensor times a sparse matrix (only dense matrix @ sparse matrix)")
    return mm(s.t(), d.t()).t()


def spmm(input: Any, mat2: Any) -> Tensor:
    """torch.spmm: a sparse matrix times a dense one (pygcn's `torch.spmm(adj, support)`)."""
    return mm(input, mat2)


def addmm(input: Any, mat1: Any, mat2: Any, *, beta: Any = 1, alpha: Any = 1) -> Tensor:
    """torch.sparse.addmm / torch.addmm with a sparse mat1: beta * input + alpha * (mat1 @ mat2)."""
    p = mm(mat1, mat2)
    p = p if alpha == 1 else p * alpha
    i = input.to_dense() if isinstance(input, SparseTensor) else _as_tensor(input)
    return p + (i if beta == 1 else i * beta)


def sum(input: Any, dim: Any = None, dtype: Any = None) -> Any:  # noqa: A001 (torch's name)
    """torch.sparse.sum: over every dim a dense 0-d tensor; over all sparse dims (and maybe some dense
    ones) a dense tensor; over some of the sparse dims a sparse tensor of the rest, coalesced as torch's
    is when the indices are known (eagerly), uncoalesced (same to_dense) inside a trace."""
    if not isinstance(input, SparseTensor):
        return _ops.sum(input, dim=dim, dtype=dtype) if dim is not None else _ops.sum(input, dtype=dtype)
    s = input if dtype is None else input.to(dtype)
    v, sd, n = s._v, s.sparse_dim(), s.dim()
    if dim is None:
        return v.sum()
    dims = sorted({_dim(d, n) for d in ((dim,) if isinstance(dim, int) else dim)})
    sparse_dims = [d for d in dims if d < sd]
    dense_dims = [d - sd + 1 for d in dims if d >= sd]  # in values' dims (dim 0 is nnz)
    if dense_dims:
        v = v.sum(dim=tuple(dense_dims))
    kept = [d for d in range(n) if d not in dims]
    if len(sparse_dims) == sd:
        return v.sum(0)
    rest = [d for d in range(sd) if d not in sparse_dims]
    i = s._i if not sparse_dims else _ops.stack([s._i[d] for d in rest], 0)
    out = SparseTensor(i, v, [s.shape[d] for d in kept], s._coalesced and not sparse_dims)
    return out.coalesce() if _known(i) else out


# -- making sparse tensors ----------------------------------------------------------------------------

def sparse_coo_tensor(indices: Any, values: Any, size: Any = None, *, dtype: Any = None, device: Any = None,
                      pin_memory: bool = False, requires_grad: bool = False, check_invariants: Any = None,
                      is_coalesced: Any = None) -> SparseTensor:
    """torch.sparse_coo_tensor: `indices` [sparse_dim, nnz] (int64), `values` [nnz, *dense dims]. The size
    (inferred from the largest index when not given) must hold every index, which is checked when the
    indices are known. `requires_grad` is accepted (av.grad chooses what it differentiates)."""
    if isinstance(indices, SparseTensor):
        raise TypeError("sparse_coo_tensor(indices, values, size): the first argument is the indices tensor")
    i = _as_tensor(indices)
    if i.dtype.is_float or i.dtype == dt.bool_:
        raise RuntimeError(f"indices must be an int64 tensor, got {i.dtype!r}")
    if i.dtype != dt.int64:
        i = i.to(dt.int64)
    v = _as_tensor(values, dtype)
    if device is not None:
        i, v = i.to(device), v.to(device)
    elif i.device != v.device:
        i = i.to(v.device)
    if i.ndim == 1 and i.shape[0] == 0:
        i = i.reshape(1, 0) if size is None else i.reshape(len(tuple(size)) - max(v.ndim - 1, 0), 0)
    if i.ndim != 2:
        raise RuntimeError(f"indices must be sparse_dim x nnz, but got: {list(i.shape)}")
    sd, nnz = int(i.shape[0]), int(i.shape[1])
    if v.ndim == 0:
        raise RuntimeError("values must be a tensor of shape [nnz, *dense dims], got a 0-d tensor")
    if int(v.shape[0]) != nnz:
        raise RuntimeError(f"indices and values must have the same nnz, but got nnz from indices: {nnz}, nnz from "
                           f"values: {v.shape[0]}")
    if sd < 1:
        raise _unsupported("a sparse tensor with no sparse dims")
    dense = tuple(v.shape[1:])
    if size is None:
        if not _known(i):
            raise fail(TypeError("sparse_coo_tensor: with traced indices the size must be given (inferring it reads "
                                 "the largest index)"))
        top = i.numpy().max(axis=1) + 1 if nnz else np.zeros(sd, np.int64)
        size = (*(int(t) for t in top), *dense)
    size = tuple(int(s) for s in (size.shape if hasattr(size, "shape") and not isinstance(size, tuple) else size))
    if len(size) != sd + len(dense) or size[sd:] != dense:
        raise RuntimeError(f"sparse_coo_tensor: size {size} does not match {sd} sparse dims and values of shape "
                           f"{tuple(v.shape)} (the dense dims must be the values' trailing dims)")
    if _known(i) and nnz:
        a = i.numpy()
        lo, hi = a.min(axis=1), a.max(axis=1)
        for k in range(sd):
            if lo[k] < 0:
                raise RuntimeError(f"found negative index {lo[k]} for dim {k}")
            if hi[k] >= size[k]:
                raise RuntimeError(f"size is inconsistent with indices: for dim {k}, size is {size[k]} but found "
                                   f"index {hi[k]}")
    return SparseTensor(i, v, size, bool(is_coalesced))


def _legacy(name: str, d: dt.DType) -> Callable[..., SparseTensor]:
    def make(*args: Any, device: Any = None) -> SparseTensor:
        if args and all(isinstance(a, (int, np.integer)) for a in args):  # FloatTensor(2, 3): empty
            size = tuple(int(a) for a in args)
            return SparseTensor(_ops.zeros((len(size), 0), dtype=dt.int64, device=device),
                                _ops.zeros((0,), dtype=d, device=device), size, True)
        if len(args) not in (2, 3):
            raise TypeError(f"torch.sparse.{name}(indices, values[, size]) or {name}(*size)")
        v = args[1]
        if not isinstance(v, Tensor) or v.dtype == dt.int64:  # a list or an integer tensor: this type's dtype
            v = _as_tensor(v, d)
        return sparse_coo_tensor(args[0], v, args[2] if len(args) == 3 else None, device=device)
    make.__name__ = make.__qualname__ = name
    make.__doc__ = f"torch.sparse.{name}(indices, values, size): the legacy constructor (sparse_coo_tensor)."
    return make


FloatTensor = _legacy("FloatTensor", dt.float32)
DoubleTensor = _legacy("DoubleTensor", dt.float64)
LongTensor = _legacy("LongTensor", dt.int64)


def to_sparse(x: Tensor, sparse_dim: int | None = None, *, layout: Any = None, blocksize: Any = None,
              dense_dim: Any = None) -> SparseTensor:
    """dense.to_sparse(): the coalesced sparse tensor of its non-zero elements (with `sparse_dim` < ndim,
    of its rows that hold a non-zero). Eager only: nnz is a shape decided by the values."""
    if isinstance(x, SparseTensor):
        return x
    if layout not in (None, sparse_coo) or blocksize is not None:
        raise _unsupported(f"to_sparse(layout={layout!r}) (only COO)")
    x = _as_tensor(x)
    if x.is_traced:
        raise fail(TypeError(
            "to_sparse: the number of stored elements (nnz, a shape) depends on the tensor's values, which a traced "
            "or compiled function does not know; call it eagerly and pass the sparse tensor in (its indices and "
            "values become inputs), or build one with av.sparse_coo_tensor(indices, values, size) from known indices"))
    sd = x.ndim if sparse_dim is None else int(sparse_dim)
    if not 1 <= sd <= x.ndim:
        raise RuntimeError(f"to_sparse: sparse_dim {sd} must be in [1, {x.ndim}]")
    a = x.numpy()
    hit = a != 0
    if sd < x.ndim:
        hit = hit.reshape(*a.shape[:sd], -1).any(-1)
    idx = np.stack(np.nonzero(hit)).astype(np.int64).reshape(sd, -1)
    i = _tensor(idx, device=x.device)
    v = x[tuple(_tensor(r, device=x.device) for r in idx)] if idx.shape[1] else _ops.zeros(
        (0, *a.shape[sd:]), dtype=x.dtype, device=x.device)
    return SparseTensor(i, v, tuple(a.shape), True)


def _dense_to_dense(x: Tensor, dtype: Any = None, *, masked_grad: Any = None) -> Tensor:
    return x if dtype is None else x.to(dtype)


def _dense_matmul(dense_method: Callable[[Tensor, Any], Tensor]) -> Callable[[Tensor, Any], Tensor]:
    """`dense @ sparse` (torch's mm of a dense and a sparse matrix): Tensor's @ hands a sparse right
    operand to the rule here, as Python would if SparseTensor were a subclass."""
    def __matmul__(self: Tensor, other: Any) -> Tensor:  # noqa: N807 (the operator it stands for)
        if isinstance(other, SparseTensor):
            return _dense_mm(self, other)
        return dense_method(self, other)
    __matmul__.__doc__ = dense_method.__doc__
    return __matmul__


Tensor.__matmul__ = _dense_matmul(Tensor.__matmul__)
Tensor.to_sparse = to_sparse
Tensor.to_sparse_coo = lambda self: to_sparse(self)
Tensor.to_dense = _dense_to_dense


# -- torch's functions with a sparse operand ------------------------------------------------------------
# `install` wraps `av.mm` & co.: the dense function unless an operand is sparse, then the rule here.

def _mul_rule(a: Any, b: Any, **kw: Any) -> Any:
    if kw:
        raise _unsupported(f"mul with {sorted(kw)}")
    return _mul(a, b) if isinstance(a, SparseTensor) else _mul(b, a)


def _add_rule(a: Any, b: Any, *, alpha: Any = 1, **kw: Any) -> Any:
    if kw:
        raise _unsupported(f"add with {sorted(kw)}")
    if isinstance(a, SparseTensor):
        return _add(a, b, alpha)
    return _add(b * alpha if alpha != 1 else b, a, 1)


def _mm_rule(a: Any, b: Any, **kw: Any) -> Tensor:
    if kw.pop("out", None) is not None or kw:
        raise _unsupported("mm/matmul with out= or other keywords")
    return mm(a, b)


def _addmm_rule(input: Any, mat1: Any, mat2: Any, *, beta: Any = 1, alpha: Any = 1, out: Any = None) -> Tensor:
    if out is not None:
        raise _unsupported("addmm with out=")
    return addmm(input, mat1, mat2, beta=beta, alpha=alpha)


_RULES: dict[str, Callable[..., Any]] = {
    "mm": _mm_rule, "matmul": _mm_rule, "mv": _mm_rule, "spmm": _mm_rule, "addmm": _addmm_rule,
    "mul": _mul_rule, "multiply": _mul_rule, "add": _add_rule,
}  # (the rest of torch's functions on a sparse tensor are its methods: s.t(), s.sum(dim), s.detach(), ...)


def _any_sparse(args: tuple, kw: dict) -> bool:
    return any(isinstance(a, SparseTensor) for a in (*args, *kw.values()))


def _dispatch(dense_fn: Callable[..., Any], rule: Callable[..., Any]) -> Callable[..., Any]:
    def fn(*args: Any, **kw: Any) -> Any:
        if _any_sparse(args, kw):
            return rule(*args, **kw)
        return dense_fn(*args, **kw)
    fn.__name__, fn.__qualname__, fn.__doc__ = dense_fn.__name__, dense_fn.__qualname__, dense_fn.__doc__
    fn._sparse_rule = True  # type: ignore[attr-defined]
    fn.__wrapped__ = dense_fn
    if getattr(dense_fn, "_complex_rule", None):  # over complex.py's wrapper: one wrapper deep to the real op
        fn.__wrapped__, fn._complex_rule = dense_fn.__wrapped__, True  # type: ignore[attr-defined]
    return fn


def install(namespace: dict[str, Any]) -> None:
    """Make the torch-level functions in `namespace` (the `avalon` package's) take sparse operands."""
    for name, rule in _RULES.items():
        fn = namespace.get(name)
        if fn is not None and callable(fn):
            namespace[name] = _dispatch(fn, rule)


__all__ = ["DoubleTensor", "FloatTensor", "Layout", "LongTensor", "SparseTensor", "addmm", "mm", "sparse_coo",
           "sparse_coo_tensor", "spmm", "strided", "sum", "to_sparse"]
