"""Complex values as pairs of real tensors: `ComplexTensor`, `av.complex64`, and the torch functions that
make and read them (`view_as_complex`, `view_as_real`, `polar`, `complex`, `real`, `imag`, `conj`, `angle`).

Why pairs and not a complex dtype in the IR: every complex operation ported code uses (rotary
embeddings by `view_as_complex`, spectral layers by `av.fft`, magnitudes of an STFT) is a handful of
real operations on the two parts, so a `ComplexTensor` is a frontend value whose parts are ordinary
Avalon tensors. Everything below it -- tracing, autodiff, fusion, every backend, MLIR export -- sees only
real ops and needs nothing new. Gradients follow torch's convention for a real loss L of z = a + ib: the
gradient of z is dL/da + i dL/db, which is exactly the pair of the parts' gradients.

A ComplexTensor held by a model is state like any tensor: its parts are found by the same walks, under
`name.real` and `name.imag` (a complex `nn.Parameter` is two real parameters, which elementwise
optimizers -- SGD, Adam, RMSprop -- update exactly as torch updates `view_as_real` of it);
`load_state_dict` reads a torch complex tensor into the pair. Functions that take or return a
ComplexTensor compile as usual: it flattens to its two parts.
"""
from __future__ import annotations

import builtins
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import ops as _ops
from . import tensor as _tensor_module
from .ir import dtypes as dt
from .tensor import _PLAIN_NUMBERS, Tensor, _is_dtype, leaf_types
from .tensor import tensor as _real_tensor

_PYCOMPLEX = builtins.complex  # `complex` below is torch.complex(real, imag)


class ComplexDType:
    """torch.complex64 / complex128: the dtype of a ComplexTensor, named by the dtype of its parts."""

    is_complex = True
    is_floating_point = False
    is_float = False
    is_signed = True

    def __init__(self, name: str, real: dt.DType):
        self.name, self.real = name, real

    @property
    def itemsize(self) -> int:
        return 2 * self.real.itemsize

    @property
    def np(self) -> np.dtype:
        return np.dtype(self.name)

    def __repr__(self) -> str:
        return f"av.{self.name}"


complex64 = cfloat = ComplexDType("complex64", dt.float32)
complex128 = cdouble = ComplexDType("complex128", dt.float64)
_BY_NAME = {"complex64": complex64, "cfloat": complex64, "complex128": complex128, "cdouble": complex128,
            "c64": complex64, "c128": complex128}


def complex_dtype(x: Any) -> ComplexDType | None:
    """The ComplexDType that `x` names (an Avalon, torch or numpy complex dtype, a name, Python's
    `complex`), or None when `x` is not a complex dtype."""
    if isinstance(x, ComplexDType):
        return x
    if x is _PYCOMPLEX:
        return complex128 if _ops.get_default_dtype() == dt.float64 else complex64
    if x is None or isinstance(x, dt.DType):
        return None
    s = str(x).removeprefix("torch.")
    if s in _BY_NAME:
        return _BY_NAME[s]
    if s in ("complex32", "chalf"):
        raise TypeError("complex32 (chalf) is not supported: Avalon's complex values have float32 or float64 parts")
    return None


def _of(real: dt.DType) -> ComplexDType:
    if real == dt.float64:
        return complex128
    if real == dt.float32:
        return complex64
    raise TypeError(f"complex values need float32 or float64 parts, got {real!r} (convert with .float() first)")


def _float(x: Any, like: Tensor | None = None) -> Tensor:
    """A real operand as a floating-point tensor (integers promote as torch promotes them with complex)."""
    if not isinstance(x, Tensor):
        x = _real_tensor(x, dtype=like.dtype if like is not None and isinstance(x, (int, float)) else None)
    return x if x.dtype.is_float else x.to(like.dtype if like is not None else _ops.get_default_dtype())


def _parts(x: Any, like: Tensor | None = None) -> tuple[Any, Any]:
    """(real, imag) of an operand: imag is None for a real one, so arithmetic skips the zero terms.
    Python numbers stay numbers (they broadcast as weak scalars, as in torch)."""
    if isinstance(x, ComplexTensor):
        return x.real, x.imag
    if isinstance(x, (_PYCOMPLEX, np.complexfloating)):
        return float(x.real), float(x.imag)
    if isinstance(x, (int, float, np.number)):
        return x, None
    if isinstance(x, np.ndarray) and np.iscomplexobj(x):
        return _real_tensor(x.real.copy()), _real_tensor(x.imag.copy())
    if not isinstance(x, Tensor) and hasattr(x, "is_complex") and hasattr(x, "detach") and x.is_complex():
        return _parts(x.detach().cpu().numpy())  # a torch complex tensor
    return _float(x, like), None


def _join(re: Any, im: Any) -> ComplexTensor:
    if im is None:
        im = _ops.zeros_like(re)
    elif not isinstance(im, Tensor):
        im = _ops.full_like(re, im)
    if not isinstance(re, Tensor):
        re = _ops.full_like(im, re)
    return ComplexTensor(re, im)


def _add(a: Any, b: Any, sign: int = 1) -> ComplexTensor:
    (ar, ai), (br, bi) = _parts(a), _parts(b)
    re = ar + br if sign > 0 else ar - br
    if ai is None and bi is None:
        im = None
    elif bi is None:
        im = ai
    elif ai is None:
        im = bi if sign > 0 else -bi
    else:
        im = ai + bi if sign > 0 else ai - bi
    return _join(re, im)


def _bilinear(f: Callable[[Any, Any], Any], a: Any, b: Any) -> ComplexTensor:
    """A real-bilinear map (product, matmul, einsum) extended to complex operands:
    f(ar + i ai, br + i bi) = f(ar, br) - f(ai, bi) + i (f(ar, bi) + f(ai, br)); real parts skip terms."""
    (ar, ai), (br, bi) = _parts(a), _parts(b)
    if ai is None and bi is None:
        return _join(f(ar, br), None)
    if ai is None:
        return _join(f(ar, br), f(ar, bi))
    if bi is None:
        return _join(f(ar, br), f(ai, br))
    return _join(f(ar, br) - f(ai, bi), f(ar, bi) + f(ai, br))


def _mul(a: Any, b: Any) -> ComplexTensor:
    return _bilinear(lambda x, y: x * y, a, b)


def _div(a: Any, b: Any) -> ComplexTensor:
    """a / b by Smith's algorithm, as torch (c10::complex, after numpy) divides: scaled by the larger of
    |Re b| and |Im b|, so |b|^2 neither overflows nor underflows (float32's br^2 + bi^2 is 0 for |b| < 1e-19),
    and a zero divisor gives torch's inf/nan parts, (1 + 1j) / 0 = inf + inf j, where the textbook
    (a conj b) / |b|^2 gave 0 / 0 = nan."""
    (ar, ai), (br, bi) = _parts(a), _parts(b)
    if bi is None:
        return _join(ar / br, None if ai is None else ai / br)
    ai = 0.0 if ai is None else ai
    if not isinstance(br, Tensor):
        br = _ops.full_like(bi, br)
    first = _ops.abs(br) >= _ops.abs(bi)  # torch's branch: |c| >= |d|
    big, small = _ops.where(first, br, bi), _ops.where(first, bi, br)
    zero = big == 0  # then both parts are 0: real / |c| and imag / |d|, as torch
    rat = small / _ops.where(zero, _ops.ones_like(big), big)
    scl = 1.0 / _ops.where(zero, _ops.ones_like(big), big + small * rat)
    # |c| >= |d|: ((a + b r) s, (b - a r) s); else ((a r + b) s, (b r - a) s), r = c / d
    re = _ops.where(first, ar + ai * rat, ar * rat + ai) * scl
    im = _ops.where(first, ai - ar * rat, ai * rat - ar) * scl
    by = _ops.where(zero, _ops.zeros_like(big), _ops.ones_like(big))  # a / 0 only where selected (gradients)
    return _join(_ops.where(zero, ar / by, re), _ops.where(zero, ai / by, im))


def _needs_complex(x: Any) -> bool:
    return isinstance(x, (ComplexTensor, _PYCOMPLEX, np.complexfloating))


class ComplexTensor:
    """A complex tensor held as two real tensors of one shape and float dtype, `real` and `imag`
    (torch's `z.real` and `z.imag`: writing into them writes into z)."""

    __array_priority__ = 200  # numpy defers to our operators
    _complex_pair = True

    def __init__(self, real: Tensor, imag: Tensor):
        if not isinstance(real, Tensor) or not isinstance(imag, Tensor):
            raise TypeError("ComplexTensor(real, imag) takes two Avalon tensors; build one from data with av.tensor "
                            "or av.complex(real, imag)")
        if not real.dtype.is_float or real.dtype != imag.dtype:
            raise TypeError(f"a complex tensor's parts must share a float dtype, got {real.dtype!r} and {imag.dtype!r}")
        if tuple(real.shape) != tuple(imag.shape):
            real, imag = _ops.broadcast_tensors(real, imag)
        _of(real.dtype)
        self.real, self.imag = real, imag

    # -- facts
    shape = property(lambda self: self.real.shape)
    dtype = property(lambda self: _of(self.real.dtype))
    device = property(lambda self: self.real.device)
    ndim = property(lambda self: self.real.ndim)
    is_cuda = property(lambda self: self.real.is_cuda)
    is_traced = property(lambda self: self.real.is_traced or self.imag.is_traced)

    def dim(self) -> int:
        return self.real.ndim

    def size(self, dim: int | None = None):
        return self.real.size(dim)

    def numel(self) -> int:
        return self.real.numel()

    def element_size(self) -> int:
        return self.dtype.itemsize

    def is_complex(self) -> bool:
        return True

    def is_floating_point(self) -> bool:
        return False

    def __len__(self) -> int:
        return len(self.real)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    # -- leaving Avalon
    def numpy(self) -> np.ndarray:
        # the parts are written, not summed: `re + 1j * im` turns an infinite part into nan (1j * inf
        # is nan + inf j), so (1 + 1j) / 0 read back as nan + inf j where torch has inf + inf j
        out = np.empty(tuple(self.shape), self.dtype.np)
        out.real, out.imag = self.real.numpy(), self.imag.numpy()
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def item(self) -> _PYCOMPLEX:
        return _PYCOMPLEX(self.real.item(), self.imag.item())

    def tolist(self) -> Any:
        return self.numpy().tolist()

    def __complex__(self) -> _PYCOMPLEX:
        return self.item()

    def __repr__(self) -> str:
        if self.is_traced:
            return f"ComplexTensor(traced, shape={self.shape}, dtype={self.dtype.name})"
        # prefix: continuation lines indent under the first, as torch's and Avalon's real tensors print
        return f"tensor({np.array2string(self.numpy(), separator=', ', prefix='tensor(')}, dtype={self.dtype!r})"

    # -- arithmetic
    __add__ = lambda self, o: _add(self, o)  # noqa: E731
    __radd__ = lambda self, o: _add(o, self)  # noqa: E731
    __sub__ = lambda self, o: _add(self, o, -1)  # noqa: E731
    __rsub__ = lambda self, o: _add(o, self, -1)  # noqa: E731
    __mul__ = lambda self, o: _mul(self, o)  # noqa: E731
    __rmul__ = lambda self, o: _mul(o, self)  # noqa: E731
    __truediv__ = lambda self, o: _div(self, o)  # noqa: E731
    __rtruediv__ = lambda self, o: _div(o, self)  # noqa: E731
    __matmul__ = lambda self, o: _bilinear(_ops.matmul, self, o)  # noqa: E731
    __rmatmul__ = lambda self, o: _bilinear(_ops.matmul, o, self)  # noqa: E731
    add, sub, mul, div, matmul = __add__, __sub__, __mul__, __truediv__, __matmul__
    multiply, divide = mul, div

    def __neg__(self) -> ComplexTensor:
        return ComplexTensor(-self.real, -self.imag)

    def __pos__(self) -> ComplexTensor:
        return self

    def __pow__(self, p: Any) -> ComplexTensor:
        return pow(self, p)

    def __rpow__(self, base: Any) -> ComplexTensor:
        return exp(_mul(self, log(_join(*_parts(base, self.real)))))

    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        (ar, ai), (br, bi) = _parts(self), _parts(other)
        return (ar == br) & (ai == (0.0 if bi is None else bi))

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return ~(self == other)

    def _no_order(self, other: Any, sym: str = "<") -> Tensor:
        raise TypeError(f"'{sym}' does not support complex inputs: complex values have no order (compare .real, "
                        ".imag or .abs())")

    def __lt__(self, other: Any) -> Tensor:
        return self._no_order(other, "<")

    def __le__(self, other: Any) -> Tensor:
        return self._no_order(other, "<=")

    def __gt__(self, other: Any) -> Tensor:
        return self._no_order(other, ">")

    def __ge__(self, other: Any) -> Tensor:
        return self._no_order(other, ">=")

    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        return bool((self.real != 0) | (self.imag != 0))

    # in place: the parts are written, so whatever holds z (a model, a view of a part) sees it
    def _assign(self, new: ComplexTensor) -> ComplexTensor:
        self.real.copy_(new.real)
        self.imag.copy_(new.imag)
        return self

    def add_(self, o: Any, *, alpha: Any = 1) -> ComplexTensor:
        return self._assign(self + (o if alpha == 1 else _mul(o, alpha)))

    def sub_(self, o: Any, *, alpha: Any = 1) -> ComplexTensor:
        return self._assign(self - (o if alpha == 1 else _mul(o, alpha)))

    def mul_(self, o: Any) -> ComplexTensor:
        return self._assign(self * o)

    def div_(self, o: Any) -> ComplexTensor:
        return self._assign(self / o)

    def copy_(self, src: Any, non_blocking: bool = False) -> ComplexTensor:
        return self._assign(_join(*_parts(src, self.real)).expand(*self.shape))

    def zero_(self) -> ComplexTensor:
        self.real.zero_()
        self.imag.zero_()
        return self

    def fill_(self, value: Any) -> ComplexTensor:
        re, im = _parts(value)
        self.real.fill_(re)
        self.imag.fill_(0.0 if im is None else im)
        return self

    __iadd__, __isub__, __imul__, __itruediv__ = add_, sub_, mul_, div_

    def __setitem__(self, idx: Any, value: Any) -> None:
        re, im = _parts(value, self.real)
        self.real[idx] = re
        self.imag[idx] = 0.0 if im is None else im

    # -- complex functions
    def conj(self) -> ComplexTensor:
        return ComplexTensor(self.real, -self.imag)

    conj_physical = conj

    def resolve_conj(self) -> ComplexTensor:
        return self

    def resolve_neg(self) -> ComplexTensor:
        return self

    def is_conj(self) -> bool:
        return False

    def abs(self) -> Tensor:
        """|z|, with the gradient torch gives at 0 (zero) rather than a division by zero."""
        r2 = self.real * self.real + self.imag * self.imag
        pos = r2 > 0
        return _ops.where(pos, _ops.sqrt(_ops.where(pos, r2, _ops.ones_like(r2))), _ops.zeros_like(r2))

    absolute = abs
    __abs__ = abs

    def angle(self) -> Tensor:
        return _ops.atan2(self.imag, self.real)

    def sgn(self) -> ComplexTensor:
        r = self.abs()
        safe = _ops.where(r > 0, r, _ops.ones_like(r))
        return ComplexTensor(self.real / safe, self.imag / safe)

    def exp(self) -> ComplexTensor:
        m = _ops.exp(self.real)
        return ComplexTensor(m * _ops.cos(self.imag), m * _ops.sin(self.imag))

    def log(self) -> ComplexTensor:
        return ComplexTensor(_ops.log(self.abs()), self.angle())

    def sqrt(self) -> ComplexTensor:
        return pow(self, 0.5)

    def reciprocal(self) -> ComplexTensor:
        return _div(1.0, self)

    def square(self) -> ComplexTensor:
        return self * self

    def pow(self, p: Any) -> ComplexTensor:
        return pow(self, p)

    def sum(self, *args: Any, **kw: Any) -> ComplexTensor:
        return ComplexTensor(self.real.sum(*args, **kw), self.imag.sum(*args, **kw))

    def mean(self, *args: Any, **kw: Any) -> ComplexTensor:
        return ComplexTensor(self.real.mean(*args, **kw), self.imag.mean(*args, **kw))

    def cumsum(self, *args: Any, **kw: Any) -> ComplexTensor:
        return ComplexTensor(self.real.cumsum(*args, **kw), self.imag.cumsum(*args, **kw))

    def norm(self, p: Any = "fro", dim: Any = None, keepdim: bool = False) -> Tensor:
        """The norm of |z| (torch's norm of a complex tensor)."""
        return self.abs().norm(p, dim, keepdim)

    def new_zeros(self, *size: Any, dtype: Any = None, device: Any = None, **kw: Any) -> Any:
        """torch's new_* of a complex tensor: this dtype and device unless given."""
        return _new("zeros", self, size, dtype, device)

    def new_ones(self, *size: Any, dtype: Any = None, device: Any = None, **kw: Any) -> Any:
        return _new("ones", self, size, dtype, device)

    def new_empty(self, *size: Any, dtype: Any = None, device: Any = None, **kw: Any) -> Any:
        return _new("zeros", self, size, dtype, device)

    def new_full(self, size: Any, fill_value: Any, *, dtype: Any = None, device: Any = None, **kw: Any) -> Any:
        return _new("zeros", self, (size,), dtype, device).fill_(fill_value)

    def to(self, *args: Any, **kw: Any) -> Any:
        """A device move applies to both parts; a complex dtype converts the parts; a real dtype keeps
        the real part, as torch does (with its warning)."""
        target = kw.pop("dtype", None)
        rest = []
        for a in args:
            if isinstance(a, (ComplexTensor, Tensor)):
                target, kw["device"] = a.dtype, a.device
            elif complex_dtype(a) is not None or (not isinstance(a, str) and _is_dtype(a)):
                target = a
            else:
                rest.append(a)
        out = ComplexTensor(self.real.to(*rest, **kw), self.imag.to(*rest, **kw))
        if target is None:
            return out
        c = complex_dtype(target)
        if c is not None:
            return ComplexTensor(out.real.to(c.real), out.imag.to(c.real))
        warnings.warn("Casting complex values to real discards the imaginary part", UserWarning, stacklevel=2)
        return out.real.to(target)

    def type_as(self, other: Any) -> Any:
        return self.to(other.dtype)

    def cpu(self) -> ComplexTensor:
        return self.to("cpu")

    def cuda(self) -> ComplexTensor:
        return self.to("cuda")

    def float(self) -> Tensor:
        return self.to(dt.float32)

    def double(self) -> Tensor:
        return self.to(dt.float64)

    def cfloat(self) -> ComplexTensor:
        return self.to(complex64)

    def cdouble(self) -> ComplexTensor:
        return self.to(complex128)

    def view(self, *shape: Any) -> ComplexTensor:
        if len(shape) == 1 and (complex_dtype(shape[0]) is not None or _is_dtype(shape[0])):
            raise TypeError("view(dtype) of a complex tensor: use av.view_as_real(z) for its (..., 2) real view")
        return ComplexTensor(self.real.view(*shape), self.imag.view(*shape))

    @property
    def T(self) -> ComplexTensor:  # noqa: N802 (torch's name)
        return ComplexTensor(self.real.T, self.imag.T)

    @property
    def mT(self) -> ComplexTensor:  # noqa: N802 (torch's name)
        return ComplexTensor(self.real.mT, self.imag.mT)

    @property
    def mH(self) -> ComplexTensor:  # noqa: N802 (torch's name)
        return self.mT.conj()

    H = property(lambda self: self.T.conj())

    def adjoint(self) -> ComplexTensor:
        return self.mH

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("real", "imag"):
            raise AttributeError(name)
        raise AttributeError(f"ComplexTensor has no {name!r}: Avalon's complex values (pairs of real tensors, see "
                             "avalon/complex.py) support arithmetic, matmul/einsum, exp/log/sqrt/pow, abs/angle/conj, "
                             "sums, shape ops, indexing and av.fft; use z.real/z.imag or av.view_as_real(z) for "
                             "the rest")


_tensor_module._COMPLEX += (ComplexTensor,)  # `x * z` with x real hands over to ComplexTensor's rules


def _new(fill: str, like: ComplexTensor, size: tuple, dtype: Any, device: Any) -> Any:
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    d = like.dtype if dtype is None else dtype
    c = complex_dtype(d)
    dev = like.device if device is None else device
    if c is None:
        return getattr(_ops, fill)(*size, dtype=d, device=dev)
    return ComplexTensor(getattr(_ops, fill)(*size, dtype=c.real, device=dev), _ops.zeros(*size, dtype=c.real,
                                                                                         device=dev))


def _both(name: str) -> Callable[..., Any]:
    """A shape or movement method applied to both parts (the parts always share a shape)."""
    def method(self: ComplexTensor, *args: Any, **kw: Any) -> Any:
        re, im = getattr(self.real, name)(*args, **kw), getattr(self.imag, name)(*args, **kw)
        if isinstance(re, Tensor):
            return ComplexTensor(re, im)
        return type(re)(ComplexTensor(r, i) for r, i in zip(re, im))  # chunk, split, unbind
    method.__name__ = name
    return method


for _name in ("reshape", "permute", "transpose", "t", "flatten", "unflatten", "unsqueeze", "squeeze", "expand",
              "contiguous", "clone", "detach", "flip", "roll", "narrow", "movedim", "moveaxis", "repeat", "select",
              "chunk", "split", "unbind", "swapaxes", "swapdims", "diagonal", "tril", "triu", "unfold", "__getitem__",
              "repeat_interleave", "tile", "gather", "index_select"):
    setattr(ComplexTensor, _name, _both(_name))


def _expand_as(self: ComplexTensor, other: Any) -> ComplexTensor:
    return self.expand(*other.shape)


ComplexTensor.expand_as = _expand_as
ComplexTensor.reshape_as = lambda self, other: self.reshape(*other.shape)
ComplexTensor.view_as = lambda self, other: self.view(*other.shape)


def pow(z: Any, p: Any) -> ComplexTensor:  # noqa: A001 (torch's name)
    """z ** p: integer powers by repeated products (exact, as torch's), other real powers in polar
    form, complex powers as exp(p log z)."""
    if not isinstance(z, ComplexTensor):
        z = _join(*_parts(z))
    if _needs_complex(p):
        return exp(_mul(p, z.log()))
    if isinstance(p, (int, float)) and float(p).is_integer() and abs(p) <= 64:
        n, base, out = abs(int(p)), z, None
        while n:
            if n & 1:
                out = base if out is None else out * base
            n >>= 1
            if n:
                base = base * base
        out = _join(_ops.ones_like(z.real), None) if out is None else out
        return out if p >= 0 else _div(1.0, out)
    r, th = z.abs(), z.angle()
    m = r ** p
    return ComplexTensor(m * _ops.cos(th * p), m * _ops.sin(th * p))


# -- making and reading complex tensors (torch's functions) ---------------------------------------

def view_as_complex(input: Tensor) -> ComplexTensor:
    """torch.view_as_complex: a real tensor whose last dim is 2 (real, imaginary) as complex values."""
    if isinstance(input, ComplexTensor):
        raise TypeError("view_as_complex: the input is complex already")
    x = _real_tensor(input) if not isinstance(input, Tensor) else input
    if x.ndim == 0 or x.shape[-1] != 2:
        raise RuntimeError(f"view_as_complex: Tensor must have a last dimension of size 2, got shape {tuple(x.shape)}")
    if x.dtype not in (dt.float32, dt.float64):
        raise RuntimeError(f"view_as_complex is only supported for float and double tensors, but got a tensor of "
                           f"scalar type: {x.dtype!r}")
    return ComplexTensor(x[..., 0], x[..., 1])


def view_as_real(input: ComplexTensor) -> Tensor:
    """torch.view_as_real: the (..., 2) real tensor of (real, imaginary) pairs."""
    if not isinstance(input, ComplexTensor):
        raise RuntimeError("view_as_real is only supported for complex tensors")
    return _ops.stack([input.real, input.imag], -1)


def complex(real: Any, imag: Any) -> ComplexTensor:  # noqa: A001 (torch's name)
    """torch.complex: a complex tensor of two real float tensors of one dtype."""
    re, im = _float(real), _float(imag)
    if re.dtype != im.dtype:
        raise RuntimeError(f"complex: expected both inputs to have the same dtype, got {re.dtype!r} and {im.dtype!r}")
    return ComplexTensor(re, im)


def polar(abs: Any, angle: Any) -> ComplexTensor:  # noqa: A002 (torch's names)
    """torch.polar: abs * (cos(angle) + i sin(angle))."""
    r, th = _float(abs), _float(angle)
    return ComplexTensor(r * _ops.cos(th), r * _ops.sin(th))


def real(input: Any) -> Tensor:
    return input.real if isinstance(input, ComplexTensor) else _float(input) if not isinstance(input, Tensor) else input


def imag(input: Any) -> Tensor:
    if not isinstance(input, ComplexTensor):
        raise RuntimeError("imag is not implemented for tensors with non-complex dtypes.")
    return input.imag


def conj(input: Any) -> Any:
    """The complex conjugate (a real tensor is its own)."""
    return input.conj() if isinstance(input, ComplexTensor) else input


def angle(input: Any) -> Tensor:
    """The argument of each element: of a real x, 0 where x >= 0 and pi where x < 0 (nan stays nan)."""
    if isinstance(input, ComplexTensor):
        return input.angle()
    x = _float(input)
    return _ops.where(x < 0, _ops.full_like(x, math.pi), _ops.where(x == x, _ops.zeros_like(x), x))


def is_complex_like(x: Any) -> bool:
    """Complex data: a ComplexTensor, a complex number, a complex numpy array or torch tensor, or a
    (nested) list holding a complex number."""
    if isinstance(x, (ComplexTensor, _PYCOMPLEX, np.complexfloating)):
        return True
    if isinstance(x, np.ndarray):
        return np.iscomplexobj(x)
    if isinstance(x, (list, tuple)):
        return not leaf_types(x) <= _PLAIN_NUMBERS and any(is_complex_like(v) for v in x)
    return not isinstance(x, Tensor) and hasattr(x, "is_complex") and hasattr(x, "detach") and bool(x.is_complex())


def from_data(data: Any, dtype: Any = None, device: Any = None) -> ComplexTensor:
    """A complex tensor of complex (or real) data, with a complex dtype (default: complex64, or complex128
    for complex128 data)."""
    c = complex_dtype(dtype)
    if isinstance(data, ComplexTensor):
        out = data
    else:
        if not isinstance(data, np.ndarray) and hasattr(data, "detach"):
            data = data.detach().cpu().numpy()
        arr = np.asarray(data)
        if c is None:
            c = complex128 if arr.dtype in (np.complex128, np.float64) and not isinstance(data, list) else complex64
        # np.array, not np.ascontiguousarray, which makes a 0-d array 1-d (av.tensor(1 + 2j) had shape (1,))
        out = ComplexTensor(_real_tensor(np.array(np.real(arr)), dtype=c.real),
                            _real_tensor(np.array(np.imag(arr)), dtype=c.real))
    if c is not None:
        out = out.to(c)
    return out.to(device) if device is not None else out


def make(fill: Callable[..., Tensor], size: Sequence[Any], c: ComplexDType, kw: dict,
         random: str = "") -> ComplexTensor:
    """zeros/ones/empty/full/rand/randn with a complex dtype: torch's complex randn draws each part with
    variance 1/2 (so E|z|^2 = 1); rand draws each part uniformly in [0, 1)."""
    kw = {k: v for k, v in kw.items() if k != "dtype"}  # the real function names what it does not take
    re = fill(*size, dtype=c.real, **kw)
    if random:
        im = fill(*size, dtype=c.real, **kw)
        if random == "randn":
            re, im = re * math.sqrt(0.5), im * math.sqrt(0.5)
        return ComplexTensor(re, im)
    return ComplexTensor(re, _ops.zeros_like(re) if fill is not _ops.empty else _ops.empty(*size, dtype=c.real, **kw))


__all__ = ["ComplexDType", "ComplexTensor", "angle", "cdouble", "cfloat", "complex", "complex64", "complex128",
           "complex_dtype", "conj", "imag", "polar", "real", "view_as_complex", "view_as_real"]



def exp(z: Any) -> ComplexTensor:
    return _join(*_parts(z)).exp()


def log(z: Any) -> ComplexTensor:
    return _join(*_parts(z)).log()


# -- torch's functions on complex operands -----------------------------------------------------------
# `install` wraps `av.<name>`: the real function unless an operand is complex (or a complex dtype is
# asked for), then the rule here. One table, so a function that learns complex operands is one line.

def _lift(x: Any) -> ComplexTensor:
    return x if isinstance(x, ComplexTensor) else _join(*_parts(x))


def _einsum(equation: str, *operands: Any) -> ComplexTensor:
    """A multilinear map: each operand's real or imaginary part in turn, i^k for k imaginary picks."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    parts = [_parts(x) for x in operands]
    re = im = None
    for pick in range(1 << len(parts)):
        chosen = [p[1] if pick >> j & 1 else p[0] for j, p in enumerate(parts)]
        if any(c is None for c in chosen):
            continue
        term = _ops.einsum(equation, *chosen)
        k = bin(pick).count("1") % 4
        if k in (2, 3):
            term = -term
        if k % 2 == 0:
            re = term if re is None else re + term
        else:
            im = term if im is None else im + term
    return _join(re, im)


def _cat(name: str) -> Callable[..., ComplexTensor]:
    def joined(tensors: Sequence[Any], *args: Any, **kw: Any) -> ComplexTensor:
        fn, zs = getattr(_ops, name), [_lift(x) for x in tensors]
        return ComplexTensor(fn([z.real for z in zs], *args, **kw), fn([z.imag for z in zs], *args, **kw))
    return joined


def _where(cond: Any, a: Any, b: Any) -> ComplexTensor:
    za, zb = _lift(a), _lift(b)
    return ComplexTensor(_ops.where(cond, za.real, zb.real), _ops.where(cond, za.imag, zb.imag))


def _like(fill: str) -> Callable[..., Any]:
    def like(input: Any, *args: Any, dtype: Any = None, **kw: Any) -> Any:
        c = complex_dtype(dtype) if dtype is not None else input.dtype if isinstance(input, ComplexTensor) else None
        if c is None:  # a real dtype asked for, or a real input
            x = input.real if isinstance(input, ComplexTensor) else input
            return getattr(_ops, fill)(x, *args, dtype=dtype, **kw)
        kw.pop("requires_grad", None)
        kw.pop("memory_format", None)
        shape = tuple(input.shape)
        if fill == "full_like":
            re, im = _parts(args[0])
            return _join(_ops.full(shape, re, dtype=c.real, **kw), im)
        name = fill.removesuffix("_like")
        return make(getattr(_ops, name), shape, c, kw, random=name if name in ("rand", "randn") else "")
    return like


def _close(name: str) -> Callable[..., Any]:
    def close(a: Any, b: Any, *args: Any, **kw: Any) -> Any:
        fn, za, zb = getattr(_ops, name), _lift(a), _lift(b)
        r, i = fn(za.real, zb.real, *args, **kw), fn(za.imag, zb.imag, *args, **kw)
        return (r and i) if isinstance(r, bool) else r & i
    return close


def _arith(f: Callable[[Any, Any], Any]) -> Callable[..., ComplexTensor]:
    def op(a: Any, b: Any, *, alpha: Any = 1, out: Any = None, rounding_mode: Any = None) -> ComplexTensor:
        if out is not None or rounding_mode is not None:
            raise TypeError("out= and rounding_mode= are not supported for complex operands")
        return f(a, b if alpha == 1 else _mul(b, alpha))
    return op


def _method(name: str) -> Callable[..., Any]:
    return lambda z, *args, **kw: getattr(_lift(z), name)(*args, **kw)


_RULES: dict[str, Callable[..., Any]] = {
    **{n: _method(n) for n in ("exp", "log", "sqrt", "abs", "absolute", "square", "reciprocal", "sgn",
                               "conj_physical", "resolve_conj", "resolve_neg", "clone", "detach", "flatten",
                               "unflatten", "transpose", "permute", "unsqueeze", "squeeze", "flip", "roll", "chunk",
                               "split", "movedim", "moveaxis", "narrow", "tile", "unbind", "reshape", "sum", "mean",
                               "cumsum", "diagonal", "gather", "index_select", "swapaxes", "swapdims", "tril", "triu",
                               "repeat_interleave", "select", "norm")},
    "add": _arith(_add), "sub": _arith(lambda a, b: _add(a, b, -1)), "mul": _arith(_mul), "div": _arith(_div),
    "pow": lambda a, p: pow(a, p) if isinstance(a, ComplexTensor) else exp(_mul(p, log(a))),
    "matmul": lambda a, b: _bilinear(_ops.matmul, a, b), "mm": lambda a, b: _bilinear(_ops.mm, a, b),
    "bmm": lambda a, b: _bilinear(_ops.bmm, a, b), "outer": lambda a, b: _bilinear(_ops.outer, a, b),
    # dot/inner of complex vectors (vdot conjugates its first): were converted as data, a complex64 numpy error
    "dot": lambda a, b: _bilinear(_ops.dot, a, b), "inner": lambda a, b: _bilinear(_ops.inner, a, b),
    "vdot": lambda a, b: _bilinear(_ops.dot, _lift(a).conj(), b),
    "einsum": _einsum, "cat": _cat("cat"), "stack": _cat("stack"), "where": _where,
    "allclose": _close("allclose"), "isclose": _close("isclose"), "isreal": lambda z: _lift(z).imag == 0,
    "is_floating_point": lambda z: False,  # (read the complex value's dtype, which has no Avalon DType)
    **{n: _like(n) for n in ("zeros_like", "ones_like", "empty_like", "rand_like", "randn_like", "full_like")},
}
_ALIASES = {"subtract": "sub", "multiply": "mul", "divide": "div", "true_divide": "div", "concat": "cat",
            "concatenate": "cat", "ger": "outer"}


def _any_complex(args: tuple, kw: dict) -> bool:
    for a in (*args, *kw.values()):
        if _needs_complex(a) or (isinstance(a, (list, tuple)) and any(_needs_complex(v) for v in a)):
            return True
    return False


def _dispatch(real_fn: Callable[..., Any], rule: Callable[..., Any]) -> Callable[..., Any]:
    def fn(*args: Any, **kw: Any) -> Any:
        if _any_complex(args, kw) or complex_dtype(kw.get("dtype")) is not None:
            return rule(*args, **kw)
        return real_fn(*args, **kw)
    fn.__name__, fn.__qualname__, fn.__doc__ = real_fn.__name__, real_fn.__qualname__, real_fn.__doc__
    fn.__wrapped__, fn._complex_rule = real_fn, True  # type: ignore[attr-defined]
    return fn


def _creation(name: str, real_fn: Callable[..., Any]) -> Callable[..., Any]:
    """zeros/ones/empty/rand/randn/full with a complex dtype (full: or a complex fill value)."""
    random = name if name in ("rand", "randn") else ""

    def fn(*size: Any, dtype: Any = None, **kw: Any) -> Any:
        if name == "full":
            # torch takes them by keyword too: `full(size=(n,), fill_value=v)`, `full((n,), fill_value=v)`
            size = (*size, *(kw.pop(k) for k in ("size", "fill_value") if k in kw))
            c = complex_dtype(dtype) or (_of(dt.dtype(_ops.get_default_dtype())) if _needs_complex(size[1]) else None)
            if c is None:
                return real_fn(*size, dtype=dtype, **kw)
            re, im = _parts(size[1])
            return _join(real_fn(size[0], re, dtype=c.real, **kw), im)
        c = complex_dtype(dtype)
        if c is None:
            return real_fn(*size, dtype=dtype, **kw)
        return make(getattr(_ops, name), size, c, kw, random)
    fn.__name__, fn.__qualname__, fn.__doc__ = real_fn.__name__, real_fn.__qualname__, real_fn.__doc__
    fn.__wrapped__, fn._complex_rule = real_fn, True  # type: ignore[attr-defined]
    return fn


def _data(real_fn: Callable[..., Any]) -> Callable[..., Any]:
    """tensor/as_tensor/from_numpy of complex data or with a complex dtype."""
    def fn(data: Any, *args: Any, **kw: Any) -> Any:
        dtype = kw.get("dtype", args[0] if args else None)
        if complex_dtype(dtype) is not None or is_complex_like(data):
            return from_data(data, dtype, kw.get("device", args[1] if len(args) > 1 else None))
        return real_fn(data, *args, **kw)
    fn.__name__, fn.__qualname__, fn.__doc__ = real_fn.__name__, real_fn.__qualname__, real_fn.__doc__
    fn.__wrapped__, fn._complex_rule = real_fn, True  # type: ignore[attr-defined]
    return fn


def install(namespace: dict[str, Any]) -> None:
    """Make the torch-level functions in `namespace` (the `avalon` package's) take complex operands."""
    for name, real_fn in list(namespace.items()):
        rule = _RULES.get(_ALIASES.get(name, name))
        if rule is not None and callable(real_fn):
            namespace[name] = _dispatch(real_fn, rule)
    for name in ("zeros", "ones", "empty", "rand", "randn", "full"):
        namespace[name] = _creation(name, namespace[name])
    for name in ("tensor", "as_tensor", "from_numpy"):
        namespace[name] = _data(namespace[name])
