"""`av.Tensor`: a value that is either concrete (numpy data on the CPU, torch storage on CUDA) or
traced (an IR Value inside an active trace). Every operation goes through `ops.bind`, which runs
the op on the reference interpreter's rule when eager and records it in the graph when tracing."""
from __future__ import annotations

from typing import Any

import numpy as np

from .device import CPU, Device
from .device import device as to_device
from .ir import dtypes as dt
from .ir.dtypes import DType


class TracerError(RuntimeError):
    """A traced value was used where Python needs a concrete one."""


def as_array(data: Any, dtype: DType | None = None) -> np.ndarray:
    """numpy view or copy of any tensor-like, optionally converted to `dtype`."""
    if isinstance(data, Tensor):
        arr = data.numpy()
    elif hasattr(data, "detach") and hasattr(data, "cpu"):  # a torch tensor
        t = data.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        arr = t.numpy()
    else:
        arr = np.asarray(data)
    if dtype is not None:
        arr = arr.astype(dtype.np, copy=False)
        if dtype is dt.bfloat16:
            from .ir.reference import round_bf16
            arr = round_bf16(arr)
    return arr


def _default_dtype(data: Any) -> DType:
    if isinstance(data, Tensor):
        return data.dtype
    if hasattr(data, "dtype") and not isinstance(data, np.ndarray) and hasattr(data, "detach"):
        return dt.dtype(data.dtype)  # torch tensor
    if isinstance(data, (np.ndarray, np.generic)):
        return dt.dtype(data.dtype)
    arr = np.asarray(data)
    if arr.dtype == np.bool_:
        return dt.bool_
    if arr.dtype.kind in "iu":
        return dt.int64
    return dt.float32  # Python floats default to f32, as in torch


class Tensor:
    """An n-d array with a static shape and dtype. Build one with `av.tensor(...)`."""

    __slots__ = ("_data", "_dtype", "_value", "_trace", "_device", "__weakref__")
    __array_priority__ = 100  # numpy defers to our operators: `ndarray + Tensor` gives a Tensor

    def __init__(self, data: Any, dtype: Any = None, device: Any = None):
        d = dt.dtype(dtype) if dtype is not None else _default_dtype(data)
        self._dtype = d
        self._value = None
        self._trace = None
        self._device = to_device(device) if device is not None else CPU
        arr = as_array(data, d)
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.require(arr, requirements="C").copy()  # (ascontiguousarray makes 0-d 1-d)
        self._data = arr if self._device == CPU else _to_torch(arr, d, self._device)

    @classmethod
    def _wrap(cls, data: Any, dtype: DType, device: Device = CPU) -> Tensor:
        t = object.__new__(cls)
        t._data, t._dtype, t._value, t._trace, t._device = data, dtype, None, None, device
        return t

    @classmethod
    def _traced(cls, value, trace) -> Tensor:
        t = object.__new__(cls)
        t._data, t._dtype, t._value, t._trace, t._device = None, value.type.dtype, value, trace, trace.device
        return t

    # -- basic facts
    @property
    def is_traced(self) -> bool:
        return self._value is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._value.type.shape) if self._value is not None else tuple(self._data.shape)

    @property
    def dtype(self) -> DType:
        return self._dtype

    @property
    def device(self) -> Device:
        return self._device

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return self.ndim

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    # -- leaving Avalon
    def _concrete(self, what: str) -> None:
        if self._value is not None:
            loc = self._value.op.loc if self._value.op is not None and self._value.op.loc else None
            where = f" (value made at {loc})" if loc else ""
            raise TracerError(
                f"{what} needs a concrete value, but this tensor is being traced{where}. Avalon records "
                "one graph for all inputs, so Python control flow cannot depend on tensor values. Use "
                "av.ops.where(cond, a, b) for data-dependent selection, or move the decision out of the "
                "traced function.")

    def numpy(self) -> np.ndarray:
        """The data as a numpy array (a view on the CPU; a copy from a GPU)."""
        self._concrete("Tensor.numpy()")
        if self._device == CPU:
            return self._data
        t = self._data.detach().cpu()
        return (t.float() if str(t.dtype) == "torch.bfloat16" else t).numpy()

    def __array__(self, dtype=None, copy=None):
        self._concrete("converting to a numpy array")
        a = self.numpy()
        return a.astype(dtype) if dtype is not None else a

    def item(self):
        self._concrete("Tensor.item()")
        return self.numpy().item()

    def tolist(self):
        self._concrete("Tensor.tolist()")
        return self.numpy().tolist()

    def __bool__(self) -> bool:
        self._concrete("a Python `if`/`while`/`and`/`or`/bool() on a tensor")
        if self.numel != 1:
            raise ValueError(f"the truth value of a tensor with {self.numel} elements is ambiguous")
        return bool(self.item())

    def __float__(self) -> float:
        self._concrete("float()")
        return float(self.item())

    def __int__(self) -> int:
        self._concrete("int()")
        return int(self.item())

    def __index__(self) -> int:
        self._concrete("using a tensor as an index")
        if self.dtype.is_float:
            raise TypeError("only integer tensors can be used as an index")
        return int(self.item())

    def to(self, device: Any = None, dtype: Any = None) -> Tensor:
        """Copy to another device and/or convert the dtype (no copy when nothing changes)."""
        out = self
        if dtype is not None and dt.dtype(dtype) != self.dtype:
            out = out.astype(dtype)
        if device is not None:
            dev = to_device(device)
            if dev != out._device:
                out._concrete("Tensor.to(device)")
                if dev == CPU:
                    out = Tensor._wrap(out.numpy().copy(), out.dtype, CPU)
                else:
                    out = Tensor._wrap(_to_torch(out.numpy(), out.dtype, dev), out.dtype, dev)
        return out

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def cuda(self) -> Tensor:
        return self.to("cuda")

    def __repr__(self) -> str:
        if self._value is not None:
            return f"Tensor(traced, shape={self.shape}, dtype={self.dtype.name})"
        # torch's threshold: every element up to 1000, so an 8x4 batch shows all its rows
        body = np.array2string(self.numpy(), separator=", ", precision=4, threshold=1000, prefix="tensor(")
        dev = f", device='{self._device}'" if self._device != CPU else ""
        return f"tensor({body}, dtype={self.dtype.name}{dev})"

    def __hash__(self) -> int:  # by identity: `==` builds an elementwise tensor, so it cannot define equality
        return id(self)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    # -- operators (numpy broadcasting and promotion; each one is the array function in avalon/ops.py)
    def __add__(self, other: Any) -> Tensor:
        return _ops.add(self, other)

    def __radd__(self, other: Any) -> Tensor:
        return _ops.add(other, self)

    def __sub__(self, other: Any) -> Tensor:
        return _ops.sub(self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return _ops.sub(other, self)

    def __mul__(self, other: Any) -> Tensor:
        return _ops.mul(self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return _ops.mul(other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return _ops.div(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return _ops.div(other, self)

    def __floordiv__(self, other: Any) -> Tensor:
        return _ops.floor_divide(self, other)

    def __pow__(self, other: Any) -> Tensor:
        return _ops.pow(self, other)

    def __rpow__(self, other: Any) -> Tensor:
        return _ops.pow(other, self)

    def __matmul__(self, other: Any) -> Tensor:
        return _ops.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return _ops.matmul(other, self)

    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        return _ops.eq(self, other)

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return _ops.ne(self, other)

    def __lt__(self, other: Any) -> Tensor:
        return _ops.lt(self, other)

    def __le__(self, other: Any) -> Tensor:
        return _ops.le(self, other)

    def __gt__(self, other: Any) -> Tensor:
        return _ops.gt(self, other)

    def __ge__(self, other: Any) -> Tensor:
        return _ops.ge(self, other)

    def __and__(self, other: Any) -> Tensor:
        return _ops.logical_and(self, other)

    def __or__(self, other: Any) -> Tensor:
        return _ops.logical_or(self, other)

    def __invert__(self) -> Tensor:
        return _ops.logical_not(self)

    def __neg__(self) -> Tensor:
        return _ops.neg(self)

    def __pos__(self) -> Tensor:
        return self

    def __abs__(self) -> Tensor:
        return _ops.abs(self)

    def __getitem__(self, index: Any) -> Tensor:
        return _ops.getitem(self, index)

    # -- elementwise methods
    def exp(self) -> Tensor:
        return _ops.exp(self)

    def log(self) -> Tensor:
        return _ops.log(self)

    def tanh(self) -> Tensor:
        return _ops.tanh(self)

    def sigmoid(self) -> Tensor:
        return _ops.sigmoid(self)

    def relu(self) -> Tensor:
        return _ops.relu(self)

    def sqrt(self) -> Tensor:
        return _ops.sqrt(self)

    def rsqrt(self) -> Tensor:
        return _ops.rsqrt(self)

    def abs(self) -> Tensor:
        return _ops.abs(self)

    def neg(self) -> Tensor:
        return _ops.neg(self)

    def sign(self) -> Tensor:
        return _ops.sign(self)

    def erf(self) -> Tensor:
        return _ops.erf(self)

    def clamp(self, min: Any = None, max: Any = None) -> Tensor:  # noqa: A002
        return _ops.clamp(self, min, max)

    def maximum(self, other: Any) -> Tensor:
        return _ops.maximum(self, other)

    def minimum(self, other: Any) -> Tensor:
        return _ops.minimum(self, other)

    def matmul(self, other: Any) -> Tensor:
        return _ops.matmul(self, other)

    # -- reductions
    def sum(self, axis: Any = None, keepdims: bool = False, dtype: Any = None) -> Tensor:
        return _ops.sum(self, axis, keepdims, dtype)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return _ops.mean(self, axis, keepdims)

    def var(self, axis: Any = None, keepdims: bool = False, correction: int = 0) -> Tensor:
        return _ops.var(self, axis, keepdims, correction)

    def max(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return _ops.max(self, axis, keepdims)

    def min(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return _ops.min(self, axis, keepdims)

    def argmax(self, axis: int | None = None, keepdims: bool = False) -> Tensor:
        return _ops.argmax(self, axis, keepdims)

    # -- shapes and dtypes
    def reshape(self, *shape: Any) -> Tensor:
        return _ops.reshape(self, *shape)

    view = reshape  # torch's name; Avalon has no strides, so a view is a reshape

    def transpose(self, *dims: Any) -> Tensor:
        return _ops.transpose(self, *dims)

    @property
    def T(self) -> Tensor:
        return _ops.transpose(self)

    def permute(self, *perm: Any) -> Tensor:
        return _ops.permute(self, *perm)

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Tensor:
        return _ops.flatten(self, start_dim, end_dim)

    def squeeze(self, axis: int | None = None) -> Tensor:
        return _ops.squeeze(self, axis)

    def expand_dims(self, axis: int) -> Tensor:
        return _ops.expand_dims(self, axis)

    unsqueeze = expand_dims  # torch's name

    def broadcast_to(self, shape: Any) -> Tensor:
        return _ops.broadcast_to(self, shape)

    def expand(self, *shape: Any) -> Tensor:
        """torch's broadcast: `x.expand(2, 3)` or `x.expand((2, 3))`."""
        return _ops.broadcast_to(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list))
                                 else shape)

    def astype(self, dtype: Any) -> Tensor:
        return _ops.cast(self, dtype)

    def float(self) -> Tensor:
        return _ops.cast(self, dt.float32)

    def double(self) -> Tensor:
        return _ops.cast(self, dt.float64)

    def long(self) -> Tensor:
        return _ops.cast(self, dt.int64)


def _to_torch(arr: np.ndarray, dtype: DType, dev: Device):
    import torch
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise RuntimeError(f"device '{dev}' is not available: {why}; use device='cpu' "
                           "(av.best_available_device() picks the GPU when there is one)")
    t = torch.from_numpy(np.require(arr, requirements="C"))  # keeps 0-d arrays 0-d
    if dtype is dt.bfloat16:
        t = t.to(torch.bfloat16)
    return t.to(dev.torch)


class Buffer(Tensor):
    """A tensor of a model's state that is not trained (batch norm's running statistics).
    `nn.named_parameters` skips it; `nn.state_dict` and the tracer include it."""

    __slots__ = ()


def tensor(data: Any, dtype: Any = None, device: Any = None) -> Tensor:
    """`av.tensor(data, dtype=None, device=None)`: a new Tensor holding a copy of `data`."""
    if isinstance(data, Tensor) and data.is_traced:
        raise TracerError("av.tensor() of a traced tensor; use it directly")
    t = Tensor(as_array(data).copy() if not isinstance(data, (list, tuple, int, float, bool)) else data,
               dtype if dtype is not None else _default_dtype(data), device)
    return t


# Last, because avalon.ops imports this module: Tensor's methods look the functions up when called.
from . import ops as _ops  # noqa: E402
