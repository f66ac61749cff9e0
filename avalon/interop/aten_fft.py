"""ATen's FFT ops and complex values for `av.from_torch` (HF's FNet mixes tokens by `fftn(x).real`):
`_fft_r2c`, `_fft_c2r`, `_fft_c2c` on `avalon.fft`, `view_as_real`/`view_as_complex`, and the
elementwise and shape rules taking `ComplexTensor` operands (avalon/complex.py)."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import fft, ops
from ..complex import _RULES, ComplexTensor, _lift, angle, complex_dtype, polar, view_as_complex, view_as_real
from ..complex import complex as make_complex
from .aten import ATEN, rule


def _scale(x: Any, sizes: list[int], normalization: int) -> Any:
    """ATen's normalization: 0 none, 1 by 1/sqrt(n), 2 by 1/n (n: the transformed sizes' product)."""
    n = math.prod(sizes)
    return x if normalization == 0 else x * (1 / math.sqrt(n) if normalization == 1 else 1 / n)


@rule("aten._fft_c2c.default")
def fft_c2c(x: Any, dim: list[int], normalization: int, forward: bool) -> ComplexTensor:
    z = _lift(x)
    for d in dim:
        z = fft.fft(z, dim=d) if forward else fft.ifft(z, dim=d, norm="forward")  # unscaled both ways
    return _scale(z, [x.shape[d] for d in dim], normalization)


@rule("aten._fft_r2c.default")
def fft_r2c(x: Any, dim: list[int], normalization: int, onesided: bool) -> ComplexTensor:
    z = fft.rfft(x, dim=dim[-1]) if onesided else fft.fft(x, dim=dim[-1])
    for d in dim[:-1]:
        z = fft.fft(z, dim=d)
    return _scale(z, [x.shape[d] for d in dim], normalization)


@rule("aten._fft_c2r.default")
def fft_c2r(x: Any, dim: list[int], normalization: int, last_dim_size: int) -> Any:
    z = _lift(x)
    for d in dim[:-1]:
        z = fft.ifft(z, dim=d, norm="forward")
    y = fft.irfft(z, n=int(last_dim_size), dim=dim[-1], norm="forward")
    return _scale(y, [x.shape[d] for d in dim[:-1]] + [int(last_dim_size)], normalization)


ATEN["aten.view_as_real.default"] = view_as_real


@rule("aten.linalg_eig.default")
def linalg_eig(a: Any) -> tuple:
    """linalg.eig / eigvals' op: (complex eigenvalues, complex eigenvectors), LAPACK geev's as torch's."""
    return tuple(ops.linalg.eig(a))


ATEN["aten.view_as_complex.default"] = view_as_complex


def _complex_aware(name: str, method: Callable[..., Any]) -> None:
    """The rule for `name` unless an operand is complex, then `method` (ComplexTensor's)."""
    real_rule = ATEN.get(name)

    def either(*args: Any, **kw: Any) -> Any:
        if any(isinstance(a, ComplexTensor) for a in args) or (
                args and isinstance(args[0], (list, tuple)) and any(isinstance(a, ComplexTensor) for a in args[0])):
            return method(*args, **kw)
        if real_rule is None:
            raise NotImplementedError(f"{name} has no rule for real operands")
        return real_rule(*args, **kw)
    either._complex_rule = True  # type: ignore[attr-defined]  # its errors on complex operands are its own
    ATEN[name] = either


for _name, _method in {
    "aten.mul.Tensor": lambda a, b: _lift(a) * b if isinstance(a, ComplexTensor) else a * b,
    "aten.add.Tensor": lambda a, b, alpha=1: _lift(a) + (b if alpha == 1 else b * alpha),
    "aten.sub.Tensor": lambda a, b, alpha=1: _lift(a) - (b if alpha == 1 else b * alpha),
    "aten.div.Tensor": lambda a, b: _lift(a) / b,
    "aten.neg.default": lambda a: -a,
    "aten.exp.default": lambda a: a.exp(),
    "aten.abs.default": lambda a: a.abs(),
    "aten.conj.default": lambda a: a.conj(),
    "aten._conj.default": lambda a: a.conj(),
    "aten._conj_physical.default": lambda a: a.conj(),
    "aten.conj_physical.default": lambda a: a.conj(),
    "aten.resolve_conj.default": lambda a: a,
    "aten.clone.default": lambda a, **kw: a.clone(),
    "aten.view.default": lambda a, shape: a.reshape(*shape),
    "aten._unsafe_view.default": lambda a, shape: a.reshape(*shape),
    "aten.reshape.default": lambda a, shape: a.reshape(*shape),
    "aten.permute.default": lambda a, dims: a.permute(*dims),
    "aten.transpose.int": lambda a, d0, d1: a.transpose(d0, d1),
    "aten.unsqueeze.default": lambda a, d: a.unsqueeze(d),
    "aten.squeeze.dim": lambda a, d: a.squeeze(d),
    "aten.squeeze.dims": lambda a, dims: ComplexTensor(*(ops.squeeze(p, [d for d in dims if a.shape[d] == 1])
                                                         for p in (a.real, a.imag))),
    "aten.expand.default": lambda a, shape: a.expand(*shape),
    "aten.select.int": lambda a, d, i: a.select(d, i),
    "aten.slice.Tensor": lambda a, d=0, start=None, end=None, step=1: a.narrow(
        d, *_span(a.shape[d], start, end)) if step == 1 else ComplexTensor(*(
            p[(slice(None),) * (d % a.ndim) + (slice(start, end, step),)] for p in (a.real, a.imag))),
    "aten.sum.dim_IntList": lambda a, dims, keepdim=False: a.sum(dims, keepdim),
    "aten.mean.dim": lambda a, dims, keepdim=False: a.mean(dims, keepdim),
    # complex forms avalon/complex.py already has (these were "no complex rule" errors)
    "aten.sqrt.default": lambda a: _lift(a).sqrt(),
    "aten.log.default": lambda a: _lift(a).log(),
    "aten.reciprocal.default": lambda a: _lift(a).reciprocal(),
    "aten.pow.Tensor_Scalar": lambda a, p: _RULES["pow"](a, p),
    "aten.mm.default": lambda a, b: _RULES["mm"](a, b),
    "aten.bmm.default": lambda a, b: _RULES["bmm"](a, b),
    "aten.cat.default": lambda xs, dim=0: _RULES["cat"](list(xs), dim),
    "aten.flip.default": lambda a, dims: _lift(a).flip(dims),
    "aten.eq.Tensor": lambda a, b: _lift(a) == b,
    "aten.ne.Tensor": lambda a, b: _lift(a) != b,
}.items():
    _complex_aware(_name, _method)


_real_copy = ATEN["aten._to_copy.default"]


def _to_copy(x: Any, **kw: Any) -> Any:
    """A conversion to a complex dtype (torch's ifft2 of a real input) or of a complex value."""
    c = complex_dtype(kw.get("dtype"))
    if c is None and not isinstance(x, ComplexTensor):
        return _real_copy(x, **kw)
    return _lift(x).to(kw["dtype"]) if kw.get("dtype") is not None else _lift(x).clone()


ATEN["aten._to_copy.default"] = _to_copy
ATEN["aten.polar.default"] = polar
ATEN["aten.complex.default"] = make_complex
ATEN["aten.angle.default"] = angle  # of a real tensor too: 0, or pi where negative
for _name in ("aten._fft_c2c.default", "aten._fft_r2c.default", "aten._fft_c2r.default", "aten.view_as_real.default",
              "aten.view_as_complex.default", "aten._to_copy.default", "aten.polar.default",
              "aten.complex.default", "aten.angle.default"):
    ATEN[_name]._complex_rule = True  # type: ignore[attr-defined]


def _span(size: int, start: Any, end: Any) -> tuple[int, int]:
    """(start, length) of a slice's range, as narrow takes it."""
    s, e, _ = slice(start, end).indices(size)
    return s, max(e - s, 0)
