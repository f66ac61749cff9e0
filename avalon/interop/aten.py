"""Core ATen ops as Avalon ops: one rule per ATen overload, keyed by its name (`aten.add.Tensor`).

A rule takes the node's arguments with graph values already replaced by Avalon tensors (and
`torch.dtype`s by Avalon dtypes) and returns what the ATen op returns (a tuple for multi-output ops).
The table is keyed by foreign op names, so it is a plain dict, not a registry table of Avalon ops.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..nn import functional as F
from ..nn.attention import scaled_dot_product_attention
from ..nn.functional_spatial import _resize_axis
from ..random import next_seed
from ..tensor import Tensor
from .model import UnsupportedOp
from .nnops import conv, pairs, pool

AtenRule = Callable[..., Any]
ATEN: dict[str, AtenRule] = {}
"""ATen overload name -> rule."""

_IGNORED = ("device", "layout", "pin_memory", "memory_format", "non_blocking", "requires_grad")


def rule(*names: str) -> Callable[[AtenRule], AtenRule]:
    def deco(fn: AtenRule) -> AtenRule:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **{k: v for k, v in kwargs.items() if k not in _IGNORED})
        wrapped.__name__ = wrapped.__qualname__ = fn.__name__
        wrapped.__doc__ = fn.__doc__
        for n in names:
            ATEN[n] = wrapped
        return fn
    return deco


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else ops.full((), x)


# -- elementwise -------------------------------------------------------------------------------

@rule("aten.add.Tensor", "aten.add.Scalar")
def add(a: Any, b: Any, alpha: Any = 1) -> Tensor:
    return ops.add(a, b if alpha == 1 else ops.mul(b, alpha))


@rule("aten.sub.Tensor", "aten.sub.Scalar")
def sub(a: Any, b: Any, alpha: Any = 1) -> Tensor:
    return ops.sub(a, b if alpha == 1 else ops.mul(b, alpha))


@rule("aten.rsub.Scalar", "aten.rsub.Tensor")
def rsub(a: Any, b: Any, alpha: Any = 1) -> Tensor:
    return ops.sub(b, a if alpha == 1 else ops.mul(a, alpha))


for _n, _f in (("mul", ops.mul), ("maximum", ops.maximum), ("minimum", ops.minimum), ("eq", ops.eq),
               ("ne", ops.ne), ("lt", ops.lt), ("le", ops.le), ("gt", ops.gt), ("ge", ops.ge),
               ("logical_and", ops.logical_and), ("logical_or", ops.logical_or), ("logical_xor", ops.logical_xor)):
    rule(f"aten.{_n}.Tensor", f"aten.{_n}.Scalar", f"aten.{_n}.default")(_f)


@rule("aten.div.Tensor", "aten.div.Scalar")
def div(a: Any, b: Any) -> Tensor:
    return ops.div(a, b)


@rule("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def div_mode(a: Any, b: Any, rounding_mode: str | None = None) -> Tensor:
    q = ops.div(a, b)
    if rounding_mode is None:
        return q
    out = ops.floor(q) if rounding_mode == "floor" else ops.mul(ops.sign(q), ops.floor(ops.abs(q)))
    d = ops.result_dtype(_t(a), _t(b))
    return out if d.is_float else ops.cast(out, d)


@rule("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar")
def pow_(a: Any, b: Any) -> Tensor:
    return ops.pow(a, b)


for _n in ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "sigmoid", "tanh", "erf", "sin", "cos", "relu", "sign",
           "reciprocal", "logical_not", "floor"):
    rule(f"aten.{_n}.default")(getattr(ops, _n))


@rule("aten.ceil.default")
def ceil(x: Tensor) -> Tensor:
    """-floor(-x); integers are their own ceiling (DeBERTa's log-bucket positions)."""
    return ops.neg(ops.floor(ops.neg(x))) if x.dtype.is_float else x


@rule("aten.fmod.Tensor", "aten.fmod.Scalar")
def fmod(a: Any, b: Any) -> Tensor:
    """C's fmod: the sign of the dividend (torch.roll's decomposition wraps indices with it)."""
    return ops.fmod(a, b)


@rule("aten.remainder.Tensor", "aten.remainder.Scalar")
def remainder(a: Any, b: Any) -> Tensor:
    """Python's `%`: the sign of the divisor."""
    return ops.remainder(a, b)


@rule("aten.bitwise_not.default")
def bitwise_not(x: Tensor) -> Tensor:
    return ops.bitwise_not(x)


def _bitwise(name: str) -> AtenRule:
    """`&`, `|`, `^` with torch's meaning: logical on booleans (HF's causal and padding masks),
    bitwise on integers (hashing, packed flags)."""
    op = getattr(ops, f"bitwise_{name}")

    def fn(a: Any, b: Any) -> Tensor:
        return op(a, b)
    fn.__name__ = f"bitwise_{name}"
    return fn


for _n in ("and", "or", "xor"):
    rule(f"aten.bitwise_{_n}.Tensor", f"aten.bitwise_{_n}.Scalar", f"aten.bitwise_{_n}.Scalar_Tensor")(_bitwise(_n))
for _n, _f in (("left", ops.bitwise_left_shift), ("right", ops.bitwise_right_shift)):
    rule(f"aten.bitwise_{_n}_shift.Tensor", f"aten.bitwise_{_n}_shift.Tensor_Scalar",
         f"aten.bitwise_{_n}_shift.Scalar_Tensor", f"aten.__{_n[0]}shift__.Tensor", f"aten.__{_n[0]}shift__.Scalar")(_f)


# -- math with torch's own signature: the aten op is the Avalon function of the same name ----------

for _n in ("acos", "acosh", "asin", "asinh", "atan", "atanh", "cosh", "sinh", "tan", "digamma", "lgamma", "erfinv",
           "erfc", "expm1", "log1p", "log10", "log2", "exp2", "i0", "trunc", "signbit", "isnan", "isinf", "sgn",
           "hypot", "atan2", "fmax", "fmin", "nextafter", "gcd", "lcm", "logcumsumexp", "flip", "diagonal",
           "histc"):
    rule(f"aten.{_n}.default")(getattr(ops, _n))
for _n in ("copysign", "ldexp", "heaviside", "searchsorted", "bucketize"):
    rule(f"aten.{_n}.Tensor", f"aten.{_n}.Scalar", f"aten.{_n}.default")(getattr(ops, _n))


@rule("aten.round.default", "aten.round.decimals")
def round_(x: Tensor, *, decimals: int = 0) -> Tensor:
    return ops.round(x, decimals=decimals)


@rule("aten.frexp.Tensor")
def frexp(x: Tensor) -> tuple:
    return tuple(ops.frexp(x))


@rule("aten.cumprod.default")
def cumprod(x: Tensor, dim: int, dtype: Any = None) -> Tensor:
    return ops.cumprod(x, dim, dtype=dtype)


for _n, _f in (("cummax", ops.cummax), ("cummin", ops.cummin), ("kthvalue", ops.kthvalue), ("mode", ops.mode)):
    rule(f"aten.{_n}.default")(lambda *a, _f=_f, **k: tuple(_f(*a, **k)))
rule("aten.median.dim")(lambda x, dim, keepdim=False: tuple(ops.median(x, dim, keepdim)))
rule("aten.median.default")(lambda x: ops.median(x))


@rule("aten.prod.default", "aten.prod.dim_int")
def prod(x: Tensor, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Tensor:
    return ops.prod(x, dim, keepdim, dtype=dtype)


@rule("aten.linalg_vector_norm.default")
def vector_norm(x: Tensor, ord: Any = 2, dim: Any = None, keepdim: bool = False, *,  # noqa: A002
                dtype: Any = None) -> Tensor:
    return ops.linalg.vector_norm(x, ord, dim, keepdim, dtype=dtype)


@rule("aten._cdist_forward.default")
def cdist(x1: Tensor, x2: Tensor, p: float, compute_mode: Any = None) -> Tensor:
    return ops.cdist(x1, x2, p)


@rule("aten.linalg_matrix_exp.default")
def matrix_exp(a: Tensor) -> Tensor:
    return ops.matrix_exp(a)


@rule("aten._linalg_det.default")
def linalg_det(a: Tensor) -> tuple:
    """(det, LU, pivots): the factorization is LAPACK's by-product, which no model reads; it is None here."""
    return ops.det(a), None, None


@rule("aten._linalg_slogdet.default")
def linalg_slogdet(a: Tensor) -> tuple:
    sign, logabsdet = ops.slogdet(a)
    return sign, logabsdet, None, None


@rule("aten.linalg_inv_ex.default")
def linalg_inv_ex(a: Tensor, check_errors: bool = False) -> tuple:
    """(inverse, info): LAPACK's info is 0 for every matrix Avalon inverts."""
    return ops.inverse(a), ops.zeros(a.shape[:-2], dtype=dt.int32)


@rule("aten.linalg_cholesky_ex.default")
def linalg_cholesky_ex(a: Tensor, *, upper: bool = False, check_errors: bool = False) -> tuple:
    """torch.linalg.cholesky's op: (factor, info)."""
    return tuple(ops.linalg.cholesky_ex(a, upper=bool(upper), check_errors=bool(check_errors)))


@rule("aten.cholesky.default")
def cholesky(a: Tensor, upper: bool = False) -> Tensor:
    return ops.linalg.cholesky(a, upper=bool(upper))


@rule("aten.cholesky_solve.default")
def cholesky_solve(b: Tensor, factor: Tensor, upper: bool = False) -> Tensor:
    return ops.linalg.cholesky_solve(b, factor, bool(upper))


@rule("aten.cholesky_inverse.default")
def cholesky_inverse(factor: Tensor, upper: bool = False) -> Tensor:
    return ops.linalg.cholesky_inverse(factor, bool(upper))


@rule("aten._linalg_solve_ex.default")
def linalg_solve_ex(a: Tensor, b: Tensor, *, left: bool = True, check_errors: bool = False) -> tuple:
    """torch.linalg.solve's op: (result, LU, pivots, info); LU and pivots (LAPACK's, which torch's
    backward reuses) are not Avalon's: None, as the unused outputs of the other linalg rules."""
    return ops.linalg.solve(a, b, left=bool(left)), None, None, ops.zeros(a.shape[:-2], dtype=dt.int32)


@rule("aten.linalg_lu.default")
def linalg_lu(a: Tensor, pivot: bool = True) -> tuple:
    return tuple(ops.linalg.lu(a, pivot=bool(pivot)))


@rule("aten.linalg_lu_factor_ex.default")
def linalg_lu_factor_ex(a: Tensor, pivot: bool = True, check_errors: bool = False) -> tuple:
    """linalg.lu_factor's op: (LU, pivots, info); the check of `info` is `_linalg_check_errors` (ignored)."""
    return tuple(ops.linalg.lu_factor_ex(a, pivot=bool(pivot), check_errors=bool(check_errors)))


@rule("aten.linalg_ldl_factor_ex.default")
def linalg_ldl_factor_ex(a: Tensor, hermitian: bool = False, check_errors: bool = False) -> tuple:
    """linalg.ldl_factor's op: (LD, pivots, info); ldl_factor's check of `info` is `_linalg_check_errors`."""
    return tuple(ops.linalg.ldl_factor_ex(a, hermitian=bool(hermitian), check_errors=bool(check_errors)))


@rule("aten.linalg_ldl_solve.default")
def linalg_ldl_solve(ld: Tensor, pivots: Tensor, b: Tensor, hermitian: bool = False) -> Tensor:
    return ops.linalg.ldl_solve(ld, pivots, b, hermitian=bool(hermitian))


@rule("aten.linalg_lu_solve.default")
def linalg_lu_solve(lu: Tensor, pivots: Tensor, b: Tensor, left: bool = True, adjoint: bool = False) -> Tensor:
    return ops.linalg.lu_solve(lu, pivots, b, left=bool(left), adjoint=bool(adjoint))


@rule("aten.lu_unpack.default")
def lu_unpack(lu: Tensor, pivots: Tensor, unpack_data: bool = True, unpack_pivots: bool = True) -> tuple:
    return tuple(ops.linalg.lu_unpack(lu, pivots, bool(unpack_data), bool(unpack_pivots)))


@rule("aten.bincount.default")
def bincount(x: Tensor, weights: Any = None, minlength: int = 0) -> Tensor:
    """torch.bincount: its length is data-dependent unless the values are known or `minlength` bounds them
    (ops.bincount says which, clearly)."""
    return ops.bincount(x, weights, int(minlength))


@rule("aten.linalg_householder_product.default")
def linalg_householder_product(a: Tensor, tau: Tensor) -> Tensor:
    return ops.linalg.householder_product(a, tau)


@rule("aten.igamma.default")
def igamma(a: Tensor, x: Tensor) -> Tensor:
    from .. import special
    return special.gammainc(a, x)


@rule("aten.igammac.default")
def igammac(a: Tensor, x: Tensor) -> Tensor:
    from .. import special
    return special.gammaincc(a, x)


@rule("aten.linalg_svd.default")
def linalg_svd(a: Tensor, full_matrices: bool = True, *, driver: Any = None) -> tuple:
    return tuple(ops.linalg.svd(a, full_matrices))


@rule("aten._linalg_svd.default")
def linalg_svd_(a: Tensor, full_matrices: bool = False, compute_uv: bool = True, *, driver: Any = None) -> tuple:
    """(U, S, Vh); without compute_uv, U and Vh are empty as torch's."""
    if not compute_uv:
        empty = ops.zeros((0,), dtype=a.dtype)
        return empty, ops.linalg.svdvals(a), empty
    return tuple(ops.linalg.svd(a, full_matrices))


@rule("aten.svd.default")
def torch_svd(a: Tensor, some: bool = True, compute_uv: bool = True) -> tuple:
    return tuple(ops.svd(a, some, compute_uv))


@rule("aten.linalg_svdvals.default")
def linalg_svdvals(a: Tensor, driver: Any = None) -> Tensor:
    return ops.linalg.svdvals(a)


@rule("aten.linalg_eigh.default", "aten._linalg_eigh.default")
def linalg_eigh(a: Tensor, UPLO: str = "L", compute_v: bool = True) -> tuple:  # noqa: N803 (torch's name)
    lam, v = ops.linalg.eigh(a, UPLO)
    return lam, (v if compute_v else ops.zeros((0,), dtype=a.dtype))


@rule("aten.linalg_eigvalsh.default")
def linalg_eigvalsh(a: Tensor, UPLO: str = "L") -> Tensor:  # noqa: N803
    return ops.linalg.eigvalsh(a, UPLO)


@rule("aten.linalg_qr.default")
def linalg_qr(a: Tensor, mode: str = "reduced") -> tuple:
    return tuple(ops.linalg.qr(a, mode))


@rule("aten.linalg_pinv.atol_rtol_tensor", "aten.linalg_pinv.atol_rtol_float")
def linalg_pinv(a: Tensor, atol: Any = None, rtol: Any = None, hermitian: bool = False) -> Tensor:
    return ops.linalg.pinv(a, atol=atol, rtol=rtol, hermitian=hermitian)


@rule("aten.linalg_matrix_rank.atol_rtol_tensor", "aten.linalg_matrix_rank.atol_rtol_float")
def linalg_matrix_rank(a: Tensor, atol: Any = None, rtol: Any = None, hermitian: bool = False) -> Tensor:
    return ops.linalg.matrix_rank(a, atol=atol, rtol=rtol, hermitian=hermitian)


@rule("aten.linalg_matrix_norm.str_ord", "aten.linalg_matrix_norm.default")
def linalg_matrix_norm(a: Tensor, ord: Any = "fro", dim: Any = (-2, -1), keepdim: bool = False, *,  # noqa: A002
                       dtype: Any = None) -> Tensor:
    return ops.linalg.matrix_norm(a, ord, dim, keepdim, dtype=dtype)


_CHECKS = ("aten._linalg_check_errors.default",)
"""Effectful ops that only raise on LAPACK's info (a singular matrix): torch threads them through
effect tokens; Avalon's linear algebra has no info to check."""


@rule("with_effects")
def with_effects(token: Any, op: Any, *args: Any, **kwargs: Any) -> tuple:
    """torch.export's effect-ordered call `(token, *outputs) = with_effects(token, op, ...)`: the op
    itself (Avalon runs ops in program order, so the token carries nothing)."""
    name = str(op)
    if name in _CHECKS:
        return (token,)
    inner = ATEN.get(name)
    if inner is None:
        raise UnsupportedOp(f"{name} (called with effects) is not supported (no rule)")
    out = inner(*args, **kwargs)
    return (token, *out) if isinstance(out, tuple) else (token, out)


@rule("aten.clamp.default", "aten.clamp.Tensor")
def clamp(x: Tensor, min: Any = None, max: Any = None) -> Tensor:  # noqa: A002
    return ops.clamp(x, min, max)


@rule("aten.clamp_min.default", "aten.clamp_min.Tensor")
def clamp_min(x: Tensor, min: Any) -> Tensor:  # noqa: A002
    return ops.maximum(x, min)


@rule("aten.clamp_max.default", "aten.clamp_max.Tensor")
def clamp_max(x: Tensor, max: Any) -> Tensor:  # noqa: A002
    return ops.minimum(x, max)


@rule("aten.hardtanh.default")
def hardtanh(x: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    return ops.clamp(x, min_val, max_val)


@rule("aten.gelu.default")
def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    return F.gelu(x, approximate)


@rule("aten.leaky_relu.default")
def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    return ops.where(ops.gt(x, 0), x, ops.mul(x, negative_slope))


@rule("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar")
def where(c: Any, a: Any, b: Any) -> Tensor:
    return ops.where(c, a, b)


@rule("aten._to_copy.default", "aten.clone.default", "aten.alias.default", "aten.lift_fresh_copy.default",
      "aten.detach.default", "aten.contiguous.default")
def to_copy(x: Tensor, dtype: Any = None, **_: Any) -> Tensor:
    return ops.cast(x, dtype) if dtype is not None else x


# -- reductions -------------------------------------------------------------------------------

@rule("aten.sum.dim_IntList", "aten.sum.default")
def sum_(x: Tensor, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Tensor:
    return ops.sum(x, dim if dim else None, keepdim, dtype)


@rule("aten.mean.dim", "aten.mean.default")
def mean(x: Tensor, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Tensor:
    return ops.mean(x, dim if dim else None, keepdim, dtype=dtype)


@rule("aten.max.default")
def max_all(x: Tensor) -> Tensor:
    """x.max() / x.min() with no dim: the whole tensor's (an integer tensor's too)."""
    return ops.amax(x, None, False)


@rule("aten.min.default")
def min_all(x: Tensor) -> Tensor:
    return ops.amin(x, None, False)


@rule("aten.elu.default")
def elu(x: Tensor, alpha: Any = 1.0, scale: Any = 1.0, input_scale: Any = 1.0) -> Tensor:
    """F.elu (and celu/selu, which torch writes as elu with a scale): scale * (x if x > 0 else
    alpha * (exp(x * input_scale) - 1))."""
    neg = ops.mul(ops.expm1(ops.mul(x, float(input_scale))), float(alpha))
    return ops.mul(ops.where(ops.gt(x, 0.0), x, neg), float(scale))


@rule("aten.unfold.default")
def unfold(x: Tensor, dimension: int, size: int, step: int) -> Tensor:
    return ops.unfold(x, dimension, size, step)


@rule("aten.repeat_interleave.Tensor")
def repeat_interleave_counts(repeats: Tensor, output_size: Any = None) -> Tensor:
    """The indices `x.repeat_interleave(repeats, dim)` gathers by: each i repeated repeats[i] times. The
    output's length is the counts' sum, so they must be known when the model is imported (a constant)."""
    if isinstance(repeats, Tensor) and repeats.is_traced:
        raise UnsupportedOp("repeat_interleave with run-time repeat counts (its output size depends on their values)")
    counts = np.asarray(repeats.numpy() if isinstance(repeats, Tensor) else repeats).reshape(-1)
    return Tensor(np.repeat(np.arange(len(counts), dtype=np.int64), counts))


@rule("aten.addmv.default")
def addmv(x: Tensor, mat: Tensor, vec: Tensor, beta: Any = 1, alpha: Any = 1) -> Tensor:
    return ops.addmv(x, mat, vec, beta=beta, alpha=alpha)


@rule("aten.addbmm.default")
def addbmm(x: Tensor, b1: Tensor, b2: Tensor, beta: Any = 1, alpha: Any = 1) -> Tensor:
    return ops.addbmm(x, b1, b2, beta=beta, alpha=alpha)


@rule("aten.adaptive_max_pool2d.default")
def adaptive_max_pool2d(x: Tensor, size: Any) -> tuple:
    return F.adaptive_max_pool2d(x, list(size), return_indices=True)


@rule("aten.rrelu_with_noise_functional.default")
def rrelu_eval(x: Tensor, noise: Tensor, lower: float = 1 / 8, upper: float = 1 / 3, training: bool = False,
               generator: Any = None) -> tuple:
    """F.rrelu: in eval mode a leaky relu of slope (lower + upper) / 2 (training draws random slopes)."""
    if training:
        raise UnsupportedOp("rrelu in training mode draws random slopes torch's generator picks")
    return F.leaky_relu(x, (float(lower) + float(upper)) / 2), noise


@rule("aten.nanmedian.default")
def nanmedian(x: Tensor) -> Tensor:
    return ops.nanmedian(x)


@rule("aten.linalg_solve_triangular.default")
def solve_triangular(a: Tensor, b: Tensor, *, upper: bool, left: bool = True, unitriangular: bool = False) -> Tensor:
    from .. import linalg
    return linalg.solve_triangular(a, b, upper=upper, left=left, unitriangular=unitriangular)


@rule("aten._pdist_forward.default")
def pdist(x: Tensor, p: float = 2.0) -> Tensor:
    return F.pdist(x, p)


@rule("aten.multilabel_margin_loss.default")
def multilabel_margin_loss(x: Tensor, target: Tensor, reduction: int = 1) -> Tensor:
    """Kept whole by torch_import (torch's decomposition is wrong); reduction as ATen's int."""
    return F.multilabel_margin_loss(x, target, reduction=("none", "mean", "sum")[int(reduction)])


@rule("aten.polygamma.default")
def polygamma(n: int, x: Tensor) -> Tensor:
    return ops.polygamma(int(n), x)


@rule("aten._trilinear.default")
def trilinear(i1: Tensor, i2: Tensor, i3: Tensor, expand1: Any, expand2: Any, expand3: Any, sumdim: Any,
              unroll_dim: int = 1) -> Tensor:
    """F.bilinear's (nn.Bilinear's) op: each input unsqueezed at its `expand` dims, the three multiplied
    and summed over `sumdim`; as one einsum (`unroll_dim` only picks torch's loop order)."""
    total = i1.ndim + len(expand1)
    letters = "abcdefghijklmnopqrstuvwxyz"[:total]

    def sub(expand: Any) -> str:
        return "".join(c for i, c in enumerate(letters) if i not in set(expand))
    out = "".join(c for i, c in enumerate(letters) if i not in set(sumdim))
    return ops.einsum(f"{sub(expand1)},{sub(expand2)},{sub(expand3)}->{out}", i1, i2, i3)


def _special(name: str) -> AtenRule:
    def fn(x: Tensor) -> Tensor:
        from .. import special
        return getattr(special, name)(x)
    fn.__name__ = name
    return fn


for _n in ("erfcx", "i1", "i1e", "i0e", "ndtri"):
    ATEN[f"aten.special_{_n}.default"] = _special(_n)


def _special2(name: str) -> AtenRule:
    def fn(*args: Any) -> Tensor:
        from .. import special
        return getattr(special, name)(*args)
    fn.__name__ = name
    return fn


# torch.special's Bessel functions, orthogonal polynomials (a tensor or scalar x and n) and zeta: were "no rule"
for _n in ("airy_ai", "bessel_j0", "bessel_j1", "bessel_y0", "bessel_y1", "modified_bessel_i0", "modified_bessel_i1",
           "modified_bessel_k0", "modified_bessel_k1", "scaled_modified_bessel_k0", "scaled_modified_bessel_k1",
           "spherical_bessel_j0", "zeta", "chebyshev_polynomial_t", "chebyshev_polynomial_u", "chebyshev_polynomial_v",
           "chebyshev_polynomial_w", "shifted_chebyshev_polynomial_t", "shifted_chebyshev_polynomial_u",
           "shifted_chebyshev_polynomial_v", "shifted_chebyshev_polynomial_w", "hermite_polynomial_h",
           "hermite_polynomial_he", "laguerre_polynomial_l", "legendre_polynomial_p"):
    for _o in ("default", "x_scalar", "n_scalar", "self_scalar", "other_scalar"):
        ATEN[f"aten.special_{_n}.{_o}"] = _special2(_n)


@rule("aten.amax.default")
def amax(x: Tensor, dim: Any = (), keepdim: bool = False) -> Tensor:
    return ops.amax(x, list(dim) or None, keepdim)


@rule("aten.amin.default")
def amin(x: Tensor, dim: Any = (), keepdim: bool = False) -> Tensor:
    return ops.amin(x, list(dim) or None, keepdim)


@rule("aten.max.dim")
def max_dim(x: Tensor, dim: int, keepdim: bool = False) -> tuple:
    return tuple(ops.max(x, dim, keepdim))


@rule("aten.min.dim")
def min_dim(x: Tensor, dim: int, keepdim: bool = False) -> tuple:
    return tuple(ops.min(x, dim, keepdim))


@rule("aten.sort.default", "aten.sort.stable")
def sort(x: Tensor, dim: int = -1, descending: bool = False, *, stable: Any = None) -> tuple:
    """Always stable (torch's unstable sort may order ties either way)."""
    return tuple(ops.sort(x, dim, descending))


@rule("aten.argsort.default", "aten.argsort.stable")
def argsort(x: Tensor, dim: int = -1, descending: bool = False, *, stable: Any = None) -> Tensor:
    return ops.argsort(x, dim, descending)


@rule("aten.topk.default")
def topk(x: Tensor, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> tuple:  # noqa: A002
    return tuple(ops.topk(x, k, dim, largest, sorted))


@rule("aten.argmax.default")
def argmax(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    return ops.argmax(x, dim, keepdim)


@rule("aten.argmin.default")
def argmin(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    return ops.argmin(x, dim, keepdim)


@rule("aten.var.correction", "aten.var.dim")
def var(x: Tensor, dim: Any = None, correction: Any = None, keepdim: bool = False, unbiased: Any = None) -> Tensor:
    c = 1 if correction is None and unbiased is not False else (correction or 0)
    return ops.var(x, list(dim) if dim else None, keepdim=keepdim, correction=float(c))


@rule("aten.var_mean.correction")
def var_mean(x: Tensor, dim: Any = None, correction: Any = None, keepdim: bool = False) -> tuple:
    return var(x, dim, correction, keepdim), ops.mean(x, list(dim) if dim else None, keepdim)


@rule("aten.any.dim", "aten.any.dims", "aten.any.default")
def any_(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    return ops.gt(ops.sum(ops.cast(x, dt.int64), dim if dim != [] else None, keepdim), 0)


@rule("aten.all.dim", "aten.all.dims", "aten.all.default")
def all_(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    return ops.logical_not(any_(ops.logical_not(ops.ne(x, 0) if x.dtype is not dt.bool_ else x), dim, keepdim))


@rule("aten._softmax.default")
def softmax(x: Tensor, dim: int, half_to_float: bool = False) -> Tensor:
    return F.softmax(x, dim)


@rule("aten._log_softmax.default")
def log_softmax(x: Tensor, dim: int, half_to_float: bool = False) -> Tensor:
    return F.log_softmax(x, dim)


@rule("aten.cumsum.default")
def cumsum(x: Tensor, dim: int, dtype: Any = None) -> Tensor:
    """torch sums integers and booleans in int64 unless told a dtype (RoBERTa's position ids are
    the cumsum of an int32 mask)."""
    if dtype is None and not x.dtype.is_float:
        dtype = dt.int64
    return ops.cumsum(x, dim, dtype=dtype)  # (cast first, then summed in `dtype`: int32 stays int32)


# -- shapes -----------------------------------------------------------------------------------

@rule("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default")
def view(x: Tensor, shape: Any) -> Tensor:
    return ops.reshape(x, list(shape))


@rule("aten.permute.default")
def permute(x: Tensor, dims: Any) -> Tensor:
    return ops.permute(x, list(dims))


@rule("aten.t.default")
def t(x: Tensor) -> Tensor:
    return ops.t(x)


@rule("aten.transpose.int")
def transpose(x: Tensor, a: int, b: int) -> Tensor:
    return ops.transpose(x, a, b)


@rule("aten.expand.default")
def expand(x: Tensor, size: Any, implicit: bool = False) -> Tensor:
    size = list(size)
    lead = len(size) - x.ndim
    shape = [x.shape[i - lead] if s == -1 else s for i, s in enumerate(size)]
    return ops.broadcast_to(x, shape)


@rule("aten.unsqueeze.default")
def unsqueeze(x: Tensor, dim: int) -> Tensor:
    return ops.unsqueeze(x, dim)


@rule("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def squeeze(x: Tensor, dim: Any = None) -> Tensor:
    return ops.squeeze(x, dim)


@rule("aten.cat.default")
def cat(xs: list, dim: int = 0) -> Tensor:
    xs = [x for x in xs if not (x.ndim == 1 and x.shape[0] == 0)] or xs[:1]  # torch skips empty 1-d tensors
    return ops.cat(xs, dim)


@rule("aten.slice.Tensor")
def slice_(x: Tensor, dim: int = 0, start: Any = None, end: Any = None, step: int = 1) -> Tensor:
    dim %= x.ndim
    n = x.shape[dim]
    s, e, _ = slice(start, end, step).indices(n)
    e = max(e, s)
    lo, hi = [0] * x.ndim, list(x.shape)
    lo[dim], hi[dim] = s, e
    st = [1] * x.ndim
    st[dim] = step
    return ops.slice_(x, lo, hi, st)


@rule("aten.select.int")
def select(x: Tensor, dim: int, index: int) -> Tensor:
    dim %= x.ndim
    index %= x.shape[dim]
    return ops.squeeze(slice_(x, dim, index, index + 1), dim)


@rule("aten.split_with_sizes.default", "aten.split.Tensor", "aten.split_with_sizes_copy.default",
      "aten.split.sizes")
def split(x: Tensor, sizes: Any, dim: int = 0) -> tuple:
    return tuple(ops.split(x, sizes if isinstance(sizes, int) else list(sizes), dim))


@rule("aten.unbind.int")
def unbind(x: Tensor, dim: int = 0) -> tuple:
    return tuple(select(x, dim, i) for i in range(x.shape[dim % x.ndim]))


@rule("aten.repeat.default")
def repeat(x: Tensor, repeats: Any) -> Tensor:
    """Tensor.repeat (tiling; extra leading counts add dims): Whisper's and GPT-J's position ids."""
    return ops.repeat(x, *[int(r) for r in repeats])


@rule("aten.gather.default")
def gather(x: Tensor, dim: int, index: Tensor, sparse_grad: bool = False) -> Tensor:
    """torch.gather (DeBERTa's relative-position attention, GPT-J's rotary tables)."""
    return ops.gather(x, dim, index)


@rule("aten.scatter.src", "aten.scatter.value")
def scatter(x: Tensor, dim: int, index: Tensor, src: Any) -> Tensor:
    """torch.scatter with a tensor or a number (a dense top-k routing table of a mixture of
    experts). With repeated indices the last write wins and only it receives a gradient (torch's
    own backward hands one to every overwritten entry too)."""
    if isinstance(src, Tensor):
        return ops.scatter(x, dim, index, src)
    return ops.scatter(x, dim, index, value=src)


@rule("aten.scatter_add.default")
def scatter_add(x: Tensor, dim: int, index: Tensor, src: Tensor) -> Tensor:
    return ops.scatter_add(x, dim, index, src)


@rule("aten.scatter_reduce.two")
def scatter_reduce(x: Tensor, dim: int, index: Tensor, src: Tensor, reduce: str, include_self: bool = True) -> Tensor:
    return ops.scatter_reduce(x, dim, index, src, reduce, include_self=include_self)


@rule("aten.index_put.default")
def index_put(x: Tensor, indices: list, values: Any, accumulate: bool = False) -> Tensor:
    """`x[i, j] = v` (`+=` with accumulate; torch.export's form of index_copy_ and index_add_ too: a
    static KV cache's write). Leading `None`s (`x[:, i] = v`) are taken by moving the indexed dims
    first, with the values laid out as torch's `x[:, i]` would be; `None`s after the last index
    are trailing full slices."""
    idx = list(indices)
    while idx and idx[-1] is None:
        idx.pop()
    if not any(i is None for i in idx):
        return ops.index_put(x, idx, values, accumulate)
    used = [d for d, i in enumerate(idx) if i is not None]
    if used != list(range(used[0], used[-1] + 1)):
        raise UnsupportedOp("aten.index_put with index tensors on dims that are not adjacent is not supported")
    d0, k = used[0], len(used)
    target = index(x, idx)  # torch's x[:, i] (shape and layout of the written values)
    v = ops.broadcast_to(ops.cast(_t(values), x.dtype), list(target.shape))
    nb = target.ndim - (x.ndim - k)  # the broadcast index dims, at d0 in `target`
    order = list(range(d0, x.ndim)) + list(range(d0))
    moved = ops.permute(x, order)
    v = ops.permute(v, list(range(d0, d0 + nb)) + list(range(d0 + nb, target.ndim)) + list(range(d0)))
    out = ops.index_put(moved, [idx[d] for d in used], v, accumulate)
    return ops.permute(out, [order.index(d) for d in range(x.ndim)])


@rule("aten.copy.default")
def copy(x: Tensor, src: Any, non_blocking: bool = False) -> Tensor:
    """The functional form of `x.copy_(src)` (what torch.export makes of an in-place write to a
    view, before the matching `slice_scatter`): `src` broadcast to `x`'s shape, in `x`'s dtype."""
    return ops.broadcast_to(ops.cast(_t(src), x.dtype), list(x.shape))


@rule("aten.slice_scatter.default")
def slice_scatter(x: Tensor, src: Tensor, dim: int = 0, start: Any = None, end: Any = None,
                  step: int = 1) -> Tensor:
    """`x` with `x[..., start:end:step, ...] = src` along `dim` (torch.export's form of slice
    assignment: Swin's shifted-window mask, HF's causal-mask padding). A contiguous slice is a
    concatenation; a strided one gathers src's rows into place and selects them."""
    dim %= x.ndim
    n = x.shape[dim]
    s, e, _ = slice(start, end, step).indices(n)
    rows = list(range(s, max(e, s), step))
    src = ops.cast(src, x.dtype)
    want = x.shape[:dim] + (len(rows),) + x.shape[dim + 1:]
    if tuple(src.shape) != want:
        src = ops.broadcast_to(src, list(want))
    if not rows:
        return x
    if step == 1:
        parts = [slice_(x, dim, 0, s), src, slice_(x, dim, rows[-1] + 1, n)]
        return ops.cat([p for p in parts if p.shape[dim] > 0], dim)
    pick = np.zeros(n, np.int64)
    hit = np.zeros(n, bool)
    pick[rows], hit[rows] = np.arange(len(rows)), True
    shape = [1] * x.ndim
    shape[dim] = n
    spread = ops.take(src, Tensor(pick), dim)
    return ops.where(Tensor(hit.reshape(shape)), spread, x)


@rule("aten.select_scatter.default")
def select_scatter(x: Tensor, src: Tensor, dim: int, index: int) -> Tensor:
    """`x` with `x.select(dim, index) = src`."""
    dim %= x.ndim
    index %= x.shape[dim]
    return slice_scatter(x, ops.unsqueeze(_t(src), dim), dim, index, index + 1)


@rule("aten.as_strided.default", "aten.as_strided_copy.default")
def as_strided(x: Tensor, size: Any, stride: Any, storage_offset: Any = None) -> Tensor:
    """A strided view of `x`'s elements read in row-major order: the importer checks that torch's
    input was contiguous (its storage order is then the logical order). torch's decompositions
    make it of a fresh result (adaptive_avg_pool1d restrides the size-1 dims of its mean); a view
    of the same elements in the same order is a reshape, any other a gather from the flat `x`."""
    size, stride, off = [int(v) for v in size], [int(v) for v in stride], int(storage_offset or 0)
    dense = [math.prod(size[i + 1:]) for i in range(len(size))]
    if off == 0 and math.prod(size) == x.numel() and all(n == 1 or a == b for n, a, b in zip(size, stride, dense)):
        return ops.reshape(x, size)
    pos = np.full(size, off, np.int64)
    for d, (n, st) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[d] = n
        pos = pos + (np.arange(n, dtype=np.int64) * st).reshape(shape)
    if pos.size and (pos.min() < 0 or pos.max() >= x.numel()):
        raise UnsupportedOp(f"aten.as_strided: size {size}, stride {stride}, offset {off} reads outside the "
                            f"{x.numel()} elements of its input")
    return ops.reshape(ops.take(ops.reshape(x, [-1]), Tensor(pos.reshape(-1)), 0), size)


@rule("aten.embedding_renorm.default")
def embedding_renorm(weight: Tensor, indices: Tensor, max_norm: float, norm_type: float) -> Tensor:
    """nn.Embedding(max_norm=...)'s in-place renorm, functionalized: a renormed copy of the weight (the
    importer writes it back to the parameter and lets later reads differentiate to it, as torch's)."""
    out = ops.mul(weight, 1.0)  # a fresh tensor: F's renorm writes in place
    F._embedding_renorm(out, indices, float(max_norm), float(norm_type))
    return out


@rule("aten.as_strided_scatter.default")
def as_strided_scatter(x: Tensor, src: Tensor, size: Any, stride: Any, storage_offset: Any = None) -> Tensor:
    """`x` with its as_strided(size, stride, offset) positions holding `src` (Tensor.fill_diagonal_, a
    diagonal's in-place write); torch's storage order is the logical one (the importer checks)."""
    return ops.as_strided_scatter(x, src, [int(v) for v in size], [int(v) for v in stride],
                                  int(storage_offset or 0))


@rule("aten.masked_scatter.default")
def masked_scatter(x: Tensor, mask: Tensor, source: Tensor) -> Tensor:
    return ops.masked_scatter(x, mask, source)


@rule("aten.view.dtype")
def view_dtype(x: Tensor, dtype: Any) -> Tensor:
    """`x.view(dtype)`: the same dtype is `x`; a bit reinterpretation is Avalon's clear refusal."""
    return x.view(dtype)


@rule("aten.conv_tbc.default")
def conv_tbc(x: Tensor, w: Tensor, b: Tensor, pad: int = 0) -> Tensor:
    """A (time, batch, channels) 1-d convolution, weight (kernel, in, out)."""
    return F.conv_tbc(x, w, b, int(pad))


@rule("aten.constant_pad_nd.default")
def constant_pad(x: Tensor, pad: Any, value: float = 0.0) -> Tensor:
    pad = list(pad)
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    if any(a < 0 or b < 0 for a, b in widths):
        lo = [max(-a, 0) for a, _ in widths]
        hi = [s - max(-b, 0) for s, (_, b) in zip(x.shape, widths)]
        x = ops.slice_(x, lo, hi)
        widths = [(max(a, 0), max(b, 0)) for a, b in widths]
    return ops.pad(x, widths, value)


@rule("aten.index_select.default")
def index_select(x: Tensor, dim: int, index: Tensor) -> Tensor:
    """Not wrapped: torch.index_select (like embedding) rejects negative indices, and so does `take`."""
    return ops.take(x, index, dim)


def _wrap(i: Tensor, size: int) -> Tensor:
    """torch's advanced indexing counts negative indices from the end; `take` does not wrap them."""
    i = i if i.dtype is dt.int64 else ops.cast(i, dt.int64)
    return ops.where(ops.lt(i, 0), ops.add(i, size), i)


def _mask_indices(m: Tensor) -> list[Tensor]:
    """A boolean index as one integer index per dim it covers; its values must be known now."""
    if m.is_traced:
        raise UnsupportedOp("aten.index.Tensor with a boolean mask whose values are only known at run time (an "
                            "input, a buffer or a computed tensor): the result's shape depends on them; use "
                            "torch.where / masked_fill, or a constant mask")
    return [Tensor(n.astype(np.int64)) for n in np.nonzero(m.numpy())]


# data-dependent shapes: eager only (ops.dynamic says so, clearly, under av.compile / av.grad)
@rule("aten.nonzero.default")
def nonzero(x: Tensor) -> Tensor:
    return ops.nonzero(x)


@rule("aten.masked_select.default")
def masked_select(x: Tensor, mask: Tensor) -> Tensor:
    return ops.masked_select(x, mask)


@rule("aten._unique2.default")
def unique2(x: Tensor, sorted: bool = True, return_inverse: bool = False, return_counts: bool = False) -> tuple:  # noqa: A002
    """torch.unique's op: (values, inverse, counts), the ones not asked for empty, as torch's."""
    vals, inv, cnt = ops.unique(x, bool(sorted), True, True)
    empty = ops.zeros((0,), dtype=dt.int64)
    return vals, inv if return_inverse else empty, cnt if return_counts else empty


@rule("aten.unique_dim.default")
def unique_dim(x: Tensor, dim: int, sorted: bool = True, return_inverse: bool = False,  # noqa: A002
               return_counts: bool = False) -> tuple:
    """torch.unique(dim=...)'s op: all three, asked for or not, as torch's."""
    return tuple(ops.unique(x, bool(sorted), True, True, int(dim)))


@rule("aten.index.Tensor")
def index(x: Tensor, indices: list) -> Tensor:
    """`x[i, j]`, `x[:, i]`, `x[i, :, j]`: the index tensors broadcast together and gather one
    element (row) per position, as a `take` from `x` with the indexed dims merged into one. When
    the indexed dims are not adjacent, torch puts the broadcast dims first: permuted so here too."""
    idx: list[Tensor | None] = []
    for i in indices:
        idx.extend(_mask_indices(i) if i is not None and i.dtype is dt.bool_ else [i])
    if len(idx) > x.ndim:
        raise IndexError(f"aten.index.Tensor: {len(idx)} indices for a tensor of {x.ndim} dims")
    idx += [None] * (x.ndim - len(idx))
    used = [d for d, i in enumerate(idx) if i is not None]
    if not used:
        return x
    if used != list(range(used[0], used[-1] + 1)):
        x = ops.permute(x, used + [d for d in range(x.ndim) if d not in used])
        idx = [idx[d] for d in used] + [None] * (x.ndim - len(used))
        used = list(range(len(used)))
    d0, d1 = used[0], used[-1]
    sizes = x.shape[d0:d1 + 1]
    flat: Tensor | None = None
    for k, d in enumerate(used):
        i = idx[d]
        assert i is not None
        term = _wrap(i, sizes[k])
        stride = math.prod(sizes[k + 1:])
        term = term if stride == 1 else ops.mul(term, stride)
        flat = term if flat is None else ops.add(flat, term)
    assert flat is not None
    if d0 != d1:
        x = ops.reshape(x, x.shape[:d0] + (math.prod(sizes),) + x.shape[d1 + 1:])
    return ops.take(x, flat, d0)


@rule("aten.embedding.default")
def embedding(weight: Tensor, indices: Tensor, padding_idx: int = -1, scale_grad: bool = False,
              sparse: bool = False) -> Tensor:
    return F.embedding(indices, weight, None if padding_idx == -1 else padding_idx, scale_grad_by_freq=scale_grad)


@rule("aten._embedding_bag.default", "aten._embedding_bag_forward_only.default", "aten.embedding_bag.default",
      "aten.embedding_bag.padding_idx")
def embedding_bag(weight: Tensor, indices: Tensor, offsets: Tensor, scale_grad_by_freq: bool = False, mode: int = 0,
                  sparse: bool = False, per_sample_weights: Tensor | None = None, include_last_offset: bool = False,
                  padding_idx: int | None = -1) -> tuple:
    """nn.EmbeddingBag / F.embedding_bag (decomposed to `_embedding_bag`): (output, offset2bag, bag_size,
    max_indices); mode 0 sum, 1 mean, 2 max; a negative (or absent) padding_idx is none."""
    from ..nn.torch_functions import embedding_bag as bag
    return bag(weight, indices, offsets, scale_grad_by_freq, mode, sparse, per_sample_weights, include_last_offset,
               padding_idx)


# -- creation ---------------------------------------------------------------------------------

def _dtype(d: Any, default: Any) -> Any:
    return d if d is not None else default


@rule("aten.tril_indices.default")
def tril_indices(row: int, col: int, offset: int = 0, *, dtype: Any = None, **_: Any) -> Tensor:
    return ops.tril_indices(int(row), int(col), int(offset), dtype=_dtype(dtype, dt.int64))


@rule("aten.triu_indices.default")
def triu_indices(row: int, col: int, offset: int = 0, *, dtype: Any = None, **_: Any) -> Tensor:
    return ops.triu_indices(int(row), int(col), int(offset), dtype=_dtype(dtype, dt.int64))


@rule("aten.full.default")
def full(size: Any, value: Any, dtype: Any = None) -> Tensor:
    return ops.full(list(size), value, dtype)


@rule("aten.full_like.default")
def full_like(x: Tensor, value: Any, dtype: Any = None) -> Tensor:
    return ops.full(list(x.shape), value, _dtype(dtype, x.dtype))


@rule("aten.zeros_like.default", "aten.empty_like.default")
def zeros_like(x: Tensor, dtype: Any = None) -> Tensor:
    return ops.full(list(x.shape), 0, _dtype(dtype, x.dtype))


@rule("aten.ones_like.default")
def ones_like(x: Tensor, dtype: Any = None) -> Tensor:
    return ops.full(list(x.shape), 1, _dtype(dtype, x.dtype))


@rule("aten.zeros.default", "aten.empty.memory_format", "aten.new_zeros.default", "aten.new_empty.default",
      "aten.empty_permuted.default")
def zeros(*args: Any, dtype: Any = None) -> Tensor:
    size = args[-1] if not isinstance(args[-1], Tensor) else args[0].shape
    if len(args) == 2 and isinstance(args[0], Tensor) and not isinstance(args[1], (list, tuple)):
        size = args[0].shape
    elif len(args) == 2 and isinstance(args[0], Tensor):
        dtype = _dtype(dtype, args[0].dtype)
    if len(args) == 2 and isinstance(args[0], (list, tuple)):  # empty_permuted(size, physical_layout)
        size = args[0]
    return ops.full(list(size), 0, _dtype(dtype, dt.float32))


@rule("aten.ones.default", "aten.new_ones.default")
def ones(*args: Any, dtype: Any = None) -> Tensor:
    size = args[-1]
    if isinstance(args[0], Tensor):
        dtype = _dtype(dtype, args[0].dtype)
    return ops.full(list(size), 1, _dtype(dtype, dt.float32))


@rule("aten.scalar_tensor.default")
def scalar_tensor(v: Any, dtype: Any = None) -> Tensor:
    return ops.full((), v, _dtype(dtype, dt.float32))


@rule("aten.arange.start_step", "aten.arange.default", "aten.arange.start")
def arange(*args: Any, dtype: Any = None) -> Tensor:
    return ops.arange(*args, dtype=dtype)


# -- contractions, convolution, pooling -------------------------------------------------------

@rule("aten.addmm.default")
def addmm(bias: Tensor, a: Tensor, b: Tensor, beta: Any = 1, alpha: Any = 1) -> Tensor:
    ab = ops.matmul(a, b)
    ab = ab if alpha == 1 else ops.mul(ab, alpha)
    return ops.add(ab, bias if beta == 1 else ops.mul(bias, beta))


@rule("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def mm(a: Tensor, b: Tensor) -> Tensor:
    return ops.matmul(a, b)


@rule("aten.baddbmm.default")
def baddbmm(c: Tensor, a: Tensor, b: Tensor, beta: Any = 1, alpha: Any = 1) -> Tensor:
    return ops.baddbmm(c, a, b, beta=beta, alpha=alpha)  # beta = 0 ignores c (its nan too), as torch


def _repeat_heads(x: Tensor, heads: int) -> Tensor:
    """(..., Hkv, S, E) -> (..., heads, S, E), each head repeated in place (torch's GQA: query head
    h reads key/value head h // (heads / Hkv))."""
    hkv = x.shape[-3]
    if heads % hkv:
        raise ValueError(f"scaled_dot_product_attention: {heads} query heads are not a multiple of {hkv} "
                         "key/value heads")
    r = heads // hkv
    y = ops.broadcast_to(ops.unsqueeze(x, -3), x.shape[:-2] + (r,) + x.shape[-2:])
    return ops.reshape(y, x.shape[:-3] + (heads,) + x.shape[-2:])


@rule("aten.scaled_dot_product_attention.default")
def sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
         is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Tensor:
    """Kept whole by the importer (not decomposed), so Avalon's attention fusion sees it. A query row
    whose every key the mask removes is zeros, as in torch's op (F.scaled_dot_product_attention's rule)."""
    if enable_gqa and q.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        k, v = _repeat_heads(k, q.shape[-3]), _repeat_heads(v, q.shape[-3])
    return scaled_dot_product_attention(q, k, v, attn_mask, float(dropout_p), bool(is_causal), scale)


@rule("aten.convolution.default")
def convolution(x: Tensor, w: Tensor, b: Tensor | None, stride: Any, padding: Any, dilation: Any,
                transposed: bool, output_padding: Any, groups: int) -> Tensor:
    n = x.ndim - 2
    p = pairs(padding, n)
    return conv(x, w, b, pairs(stride, n), p, p, pairs(dilation, n), groups, transposed,
                pairs(output_padding, n))


@rule("aten.max_pool2d_with_indices.default", "aten.max_pool1d_with_indices.default")
def max_pool_indices(x: Tensor, kernel: Any, stride: Any = (), padding: Any = 0, dilation: Any = 1,
                     ceil_mode: bool = False) -> tuple:
    n = x.ndim - 2
    k = pairs(kernel, n)
    s = pairs(stride, n) if stride else k
    p = pairs(padding, n)
    d = pairs(dilation, n)
    f = F.max_pool1d if n == 1 else F.max_pool2d
    if any(v != 1 for v in d):  # the pooling primitive has no dilation: F's strided windows do it
        return f(x, k, s, p, d, ceil_mode, return_indices=True)
    values = pool("max", x, k, s, p, p, ceil_mode, dilation=d)
    # the indices (MaxUnpool's, SegNet's; unused ones are dead code a compiled graph drops) were None
    # here, which failed later as "cannot make a tensor of None" in whatever read them
    return values, f(x, k, s, p, d, ceil_mode, return_indices=True)[1]


@rule("aten.max_pool2d.default")
def max_pool(x: Tensor, kernel: Any, stride: Any = (), padding: Any = 0, dilation: Any = 1,
             ceil_mode: bool = False) -> Tensor:
    n = x.ndim - 2
    k = pairs(kernel, n)
    p = pairs(padding, n)
    s, d = (pairs(stride, n) if stride else k), pairs(dilation, n)
    if any(v != 1 for v in d):  # (was an UnsupportedOp: the pooling primitive has no dilation)
        return (F.max_pool1d if n == 1 else F.max_pool2d)(x, k, s, p, d, ceil_mode)
    return pool("max", x, k, s, p, p, ceil_mode, dilation=d)


@rule("aten.avg_pool2d.default", "aten.avg_pool1d.default")
def avg_pool(x: Tensor, kernel: Any, stride: Any = (), padding: Any = 0, ceil_mode: bool = False,
             count_include_pad: bool = True, divisor_override: Any = None) -> Tensor:
    n = x.ndim - 2
    k = pairs(kernel, n)
    s = pairs(stride, n) if stride else k
    p = pairs(padding, n)
    if divisor_override is not None:  # (was an UnsupportedOp; only avg_pool2d has it)
        return F.avg_pool2d(x, k, s, p, ceil_mode, count_include_pad, int(divisor_override))
    return pool("avg", x, k, s, p, p, ceil_mode, count_include_pad)


@rule("aten.avg_pool3d.default")
def avg_pool3d(x: Tensor, kernel: Any, stride: Any = (), padding: Any = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Any = None) -> Tensor:
    """F.avg_pool3d (and F.local_response_norm, which torch decomposes to it) on avalon's 3-d pool."""
    from ..nn.functional_3d import avg_pool3d as pool3d
    return pool3d(x, list(kernel), list(stride) or None, list(padding) if isinstance(padding, (list, tuple))
                  else padding, ceil_mode, count_include_pad, divisor_override)


@rule("aten.max_pool3d_with_indices.default")
def max_pool3d_indices(x: Tensor, kernel: Any, stride: Any = (), padding: Any = 0, dilation: Any = 1,
                       ceil_mode: bool = False) -> tuple:
    from ..nn.functional_3d import max_pool3d_with_indices
    return max_pool3d_with_indices(x, list(kernel), list(stride) or None, padding, dilation, ceil_mode)


@rule("aten.fractional_max_pool2d.default", "aten.fractional_max_pool3d.default")
def fractional_max_pool(x: Tensor, kernel: Any, output_size: Any, random_samples: Tensor) -> tuple:
    """(values, indices), the regions torch's from the same samples (a module's `_random_samples`, or
    the graph's own draw)."""
    from ..nn import torch_surface as ts
    f = ts.fractional_max_pool2d_with_indices if len(kernel) == 2 else ts.fractional_max_pool3d_with_indices
    return f(x, list(kernel), list(output_size), _random_samples=random_samples)


@rule("aten.adaptive_max_pool3d.default")
def adaptive_max_pool3d(x: Tensor, size: Any) -> tuple:
    from ..nn.functional_3d import adaptive_max_pool3d_with_indices
    return adaptive_max_pool3d_with_indices(x, list(size))


@rule("aten._adaptive_avg_pool3d.default", "aten.adaptive_avg_pool3d.default")
def adaptive_avg_pool3d(x: Tensor, size: Any) -> Tensor:
    from ..nn.functional_3d import adaptive_avg_pool3d as pool3d
    return pool3d(x, list(size))


@rule("aten.grid_sampler_2d.default", "aten.grid_sampler_3d.default")
def grid_sampler_2d(x: Tensor, grid: Tensor, interpolation_mode: int, padding_mode: int, align_corners: bool) -> Tensor:
    """F.grid_sample's ATen ops (4-d and 5-d input): the modes as ints (0 bilinear, 1 nearest, 2 bicubic;
    0 zeros, 1 border, 2 reflection)."""
    from ..nn.torch_surface import grid_sampler
    return grid_sampler(x, grid, interpolation_mode, padding_mode, align_corners)


@rule("aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool2d.default")
def adaptive_avg_pool(x: Tensor, size: Any) -> Tensor:
    return F.adaptive_avg_pool2d(x, list(size))


def _upsample(mode: str, k: int, antialias: bool = False) -> AtenRule:
    """F.interpolate's ATen ops (SegFormer's bilinear decode head, DETR's nearest mask): `.vec` takes an
    output size or a list of scale factors, the plain overload an output size and optional per-axis scales
    (torch then computes source indices from the scale, not the sizes); one axis at a time, as F.interpolate."""
    interpolating = mode not in ("nearest", "nearest-exact")
    names = ("scales",) if k == 1 else ("scales_d", "scales_h", "scales_w")[3 - k:]

    def fn(x: Tensor, output_size: Any, *args: Any, **kw: Any) -> Tensor:
        align = False
        if interpolating:
            align, args = bool(args[0] if args else kw.pop("align_corners")), args[1:]
        if "scale_factors" in kw:
            args = (kw["scale_factors"],)
        if args and (isinstance(args[0], (list, tuple)) or len(args) == 1 and args[0] is None
                     and not any(n in kw for n in names)):  # .vec's scale_factors
            scales = list(args[0] or [None] * k)
        else:
            scales = list(args) + [kw.get(n) for n in names[len(args):]]
        if x.ndim != k + 2 or len(scales) != k:
            raise UnsupportedOp(f"upsample ({mode}): {k}-d op on input of shape {x.shape} with scales {scales}")
        outs = ([int(s) for s in output_size] if output_size is not None else
                [int(math.floor(n * float(s))) for n, s in zip(x.shape[2:], scales)])
        if antialias:  # _upsample_{bilinear,bicubic}2d_aa: F.interpolate(..., antialias=True)
            from ..nn.functional_spatial import _resize_aa
            return _resize_aa(x, outs, [float(s) if s is not None and s > 0 else None for s in scales], mode, align)
        for j in range(k):
            s = scales[j]
            x = _resize_axis(x, 2 + j, outs[j], float(s) if s is not None and s > 0 else None, mode, align)
        return x
    return fn


for _k, _modes in ((1, (("nearest", "upsample_nearest1d"), ("nearest-exact", "_upsample_nearest_exact1d"),
                        ("linear", "upsample_linear1d"))),
                   (2, (("nearest", "upsample_nearest2d"), ("nearest-exact", "_upsample_nearest_exact2d"),
                        ("bilinear", "upsample_bilinear2d"), ("bicubic", "upsample_bicubic2d"))),
                   (3, (("nearest", "upsample_nearest3d"), ("nearest-exact", "_upsample_nearest_exact3d"),
                        ("trilinear", "upsample_trilinear3d")))):
    for _mode, _op in _modes:
        rule(f"aten.{_op}.vec", f"aten.{_op}.default")(_upsample(_mode, _k))
for _mode in ("bilinear", "bicubic"):
    rule(f"aten._upsample_{_mode}2d_aa.vec", f"aten._upsample_{_mode}2d_aa.default")(_upsample(_mode, 2, True))


# -- normalization and randomness -------------------------------------------------------------

def _bshape(x: Tensor) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _affine(y: Tensor, w: Tensor | None, b: Tensor | None, shape: tuple[int, ...]) -> Tensor:
    if w is not None:
        y = ops.mul(y, ops.reshape(w, shape))
    if b is not None:
        y = ops.add(y, ops.reshape(b, shape))
    return y


@rule("aten._native_batch_norm_legit_no_training.default")
def batch_norm_eval(x: Tensor, w: Tensor | None, b: Tensor | None, rm: Tensor, rv: Tensor, momentum: float,
                    eps: float) -> tuple:
    return F.batch_norm(x, rm, rv, w, b, False, momentum, eps), None, None


@rule("aten._native_batch_norm_legit.no_stats")
def batch_norm_no_stats(x: Tensor, w: Tensor | None, b: Tensor | None, training: bool, momentum: float,
                        eps: float) -> tuple:
    """F.batch_norm(x, None, None, training=True): no running statistics in the schema, so its
    (training, momentum, eps) would land on (rm, rv, training) of the full rule (BiT's weight
    standardization ran with eps 1e-5 instead of its 1e-6)."""
    return batch_norm(x, w, b, None, None, training, momentum, eps)[:3]


@rule("aten._native_batch_norm_legit_functional.default", "aten._native_batch_norm_legit.default",
      "aten.native_batch_norm.default")
def batch_norm(x: Tensor, w: Tensor | None, b: Tensor | None, rm: Tensor | None, rv: Tensor | None,
               training: bool = True, momentum: float = 0.1, eps: float = 1e-5) -> tuple:
    """Returns (out, mean, rstd, new running mean, new running var): torch.export turns the running
    statistics' in-place update into outputs, which the importer assigns back."""
    if not training:
        return batch_norm_eval(x, w, b, rm, rv, momentum, eps) + (rm, rv)
    c = x.shape[1]
    axes = [0] + list(range(2, x.ndim))
    n = x.numel() // c
    mean = ops.mean(x, axes, keepdims=True)
    centered = ops.sub(x, mean)
    var = ops.mean(ops.mul(centered, centered), axes, keepdims=True)
    rstd = ops.rsqrt(ops.add(var, eps))
    y = _affine(ops.mul(centered, rstd), w, b, _bshape(x))
    new_rm = new_rv = None
    if rm is not None:
        new_rm = ops.add(ops.mul(rm, 1.0 - momentum), ops.mul(ops.reshape(mean, (c,)), momentum))
    if rv is not None:
        unbiased = ops.mul(ops.reshape(var, (c,)), n / max(n - 1, 1))
        new_rv = ops.add(ops.mul(rv, 1.0 - momentum), ops.mul(unbiased, momentum))
    return y, ops.reshape(mean, (c,)), ops.reshape(rstd, (c,)), new_rm, new_rv


@rule("aten.native_layer_norm.default")
def layer_norm(x: Tensor, shape: Any, w: Tensor | None, b: Tensor | None, eps: float) -> tuple:
    axes = list(range(x.ndim - len(shape), x.ndim))
    mean = ops.mean(x, axes, keepdims=True)
    centered = ops.sub(x, mean)
    rstd = ops.rsqrt(ops.add(ops.mean(ops.mul(centered, centered), axes, keepdims=True), eps))
    y = ops.mul(centered, rstd)
    if w is not None:
        y = ops.mul(y, w)
    if b is not None:
        y = ops.add(y, b)
    return y, mean, rstd


@rule("aten.native_group_norm.default")
def group_norm(x: Tensor, w: Tensor | None, b: Tensor | None, n: int, c: int, hw: int, groups: int,
               eps: float) -> tuple:
    return F.group_norm(x, groups, w, b, eps), None, None


@rule("aten.native_dropout.default")
def native_dropout(x: Tensor, p: float, train: bool | None) -> tuple:
    if not train or p == 0.0:
        return x, ops.full(list(x.shape), True, dt.bool_)
    keep = ops.ge(ops.random(next_seed(), x.shape, "uniform"), p)
    return ops.where(keep, ops.mul(x, 1.0 / (1.0 - p)), 0.0), keep


@rule("aten.bernoulli.p", "aten.bernoulli.default")
def bernoulli(x: Tensor, p: Any = None, generator: Any = None) -> Tensor:
    prob = x if p is None else p
    u = ops.random(next_seed(), x.shape, "uniform")
    return ops.cast(ops.lt(u, prob), x.dtype)


@rule("aten.randn.default")
def randn(size: Any, *, dtype: Any = None, generator: Any = None, **_: Any) -> Tensor:
    """torch.randn inside forward (a VAE's or a diffusion step's noise): Avalon's generator, so the
    values are not torch's (as randn_like's)."""
    return ops.random(next_seed(), [int(d) for d in size], "normal", _dtype(dtype, dt.float32))


@rule("aten.rand.default")
def rand(size: Any, *, dtype: Any = None, generator: Any = None, **_: Any) -> Tensor:
    return ops.random(next_seed(), [int(d) for d in size], "uniform", _dtype(dtype, dt.float32))


@rule("aten.randint.low", "aten.randint.default")
def randint(*args: Any, dtype: Any = None, generator: Any = None, **_: Any) -> Tensor:
    low, high, size = args if len(args) == 3 else (0, *args)
    u = ops.random(next_seed(), [int(d) for d in size], "uniform", dt.float64)
    r = ops.add(ops.floor(ops.mul(u, float(high - low))), float(low))
    return ops.cast(r, _dtype(dtype, dt.int64))


@rule("aten.rand_like.default")
def rand_like(x: Tensor, dtype: Any = None) -> Tensor:
    return ops.random(next_seed(), x.shape, "uniform", _dtype(dtype, x.dtype))


@rule("aten.randn_like.default")
def randn_like(x: Tensor, dtype: Any = None) -> Tensor:
    return ops.random(next_seed(), x.shape, "normal", _dtype(dtype, x.dtype))


# -- checks and python-level nodes ------------------------------------------------------------

@rule("aten._assert_tensor_metadata.default", "aten.sym_constrain_range_for_size.default",
      "aten.sym_constrain_range.default")
def check_only(*args: Any, **kwargs: Any) -> None:
    """torch.export's checks of dtype/device (`.to(...)`) and of symbolic sizes: nothing to compute
    (shapes are static, and the importer checks the inputs' shapes and dtypes)."""
    return None


@rule("aten._assert_scalar.default")
def assert_scalar(cond: Any, msg: str = "") -> None:
    """A run-time assertion on sizes; with static shapes `cond` is a Python bool, checked here."""
    if cond is False:
        raise ValueError(f"torch.export's run-time assertion failed: {msg}")


@rule("aten._assert_async.msg", "aten._assert_async.default")
def assert_async(cond: Any, msg: str = "") -> None:
    """A run-time assertion on a tensor (F.one_hot's class range): checked when the value is known
    (an eager call); inside a trace or compiled step the graph has no op to fail with, so it is skipped."""
    if isinstance(cond, Tensor) and cond.is_traced:
        return None
    if not bool(np.asarray(cond.numpy() if isinstance(cond, Tensor) else cond).all()):
        raise ValueError(f"torch.export's run-time assertion failed: {msg or 'assertion'}")


@rule("cond")
def higher_order_cond(pred: Any, true_fn: Any, false_fn: Any, operands: Any) -> tuple:
    """torch.cond: the branches are subgraphs (functions here); `av.cond` runs the one a known
    predicate picks, or both and selects (avalon/control_flow.py)."""
    from ..control_flow import cond
    return cond(pred, true_fn, false_fn, tuple(operands))


@rule("while_loop")
def higher_order_while_loop(cond_fn: Any, body_fn: Any, carried: Any, additional: Any = ()) -> tuple:
    """torch.while_loop: both functions take the carried values, then the additional inputs."""
    from ..control_flow import while_loop
    extra = tuple(additional)
    return while_loop(lambda *c: cond_fn(*c, *extra)[0], lambda *c: body_fn(*c, *extra), tuple(carried))


@rule("scan")
def higher_order_scan(combine_fn: Any, init: Any, xs: Any, additional: Any = ()) -> tuple:
    """torch's scan (torch._higher_order_ops.scan) over dim 0 of `xs`, unrolled (a trace is straight-line
    code): combine_fn(*carry, *slices, *additional) gives the next carry, then this step's outputs,
    which are stacked. torch.export has moved the user's `dim` to 0 and flipped `reverse` already."""
    carry, extra, xs = list(init), tuple(additional), list(xs)
    n = xs[0].shape[0] if xs else 0
    if n == 0:
        raise UnsupportedOp("scan over an empty dimension is not supported (its outputs' shapes come from no step)")
    steps = []
    for i in range(n):
        out = combine_fn(*carry, *(x[i] for x in xs), *extra)
        carry, ys = list(out[:len(carry)]), out[len(carry):]
        steps.append(ys)
    return (*carry, *(ops.stack([s[j] for s in steps]) for j in range(len(steps[0]))))


@rule("map_impl")
def higher_order_map(body_fn: Any, xs: Any, additional: Any = ()) -> tuple:
    """torch's map (torch._higher_order_ops.map) over dim 0 of `xs`, unrolled like `scan`:
    body_fn(*slices, *additional) gives one step's outputs, which are stacked along a new dim 0."""
    extra, xs = tuple(additional), list(xs)
    n = xs[0].shape[0] if xs else 0
    if n == 0:
        raise UnsupportedOp("map over an empty dimension is not supported (its outputs' shapes come from no step)")
    steps = [body_fn(*(x[i] for x in xs), *extra) for i in range(n)]
    return tuple(ops.stack([s[j] for s in steps]) for j in range(len(steps[0])))


ATEN["<built-in function getitem>"] = operator.getitem
for _f in (operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod, operator.neg,
           operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge):
    ATEN[str(_f)] = _f  # arithmetic on sizes (SymInts), which are plain ints here
ATEN["aten.sym_size.int"] = lambda x, d: x.shape[d]
ATEN["aten.sym_numel.default"] = lambda x: math.prod(x.shape)
