"""Reference rules of the factorizations (`svd`, `eigh`, `qr`, `pinv`, `eig`; `ldl_factor` / `ldl_solve` call
LAPACK's sytrf / sytrs through scipy): numpy.linalg, whose LAPACK
the numpy and cpu backends call too, packed as the ops declare (`avalon/ir/primitives.py`).

A matrix with a nan or an infinity (or one LAPACK fails to converge on) gives nan factors where torch
raises: the values of a compiled step are unknown while it is traced, and a nan spreads visibly
where an exception would stop the step half-way. Signs of singular and eigen vectors are LAPACK's
choice (numpy's OpenBLAS), which may differ from torch's (MKL): both are valid factorizations.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..primitives import qr_layout, svd_layout
from .core import rule


def _each(x: np.ndarray, out_shape: tuple[int, ...], fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """fn over the batch of matrices at once, or matrix by matrix with nan where one is not finite."""
    batch = x.shape[:-2]
    finite = np.isfinite(x).all(axis=(-2, -1))
    if finite.all():
        try:
            return fn(x)
        except np.linalg.LinAlgError:
            pass
    flat = x.reshape((-1,) + x.shape[-2:])
    out = np.full((flat.shape[0],) + out_shape, np.nan, x.dtype)
    for i, (a, ok) in enumerate(zip(flat, np.reshape(finite, -1))):
        if ok:
            try:
                out[i] = fn(a)
            except np.linalg.LinAlgError:
                pass
    return out.reshape(batch + out_shape)


@rule("svd")
def _svd(attrs: dict, x: np.ndarray) -> np.ndarray:
    m, n = x.shape[-2:]
    full = attrs["full_matrices"]
    cu, cv, w = svd_layout(m, n, full)
    k = min(m, n)

    def pack(a: np.ndarray) -> np.ndarray:
        u, s, vh = np.linalg.svd(a, full_matrices=full)
        out = np.zeros(a.shape[:-2] + (m + 1 + n, w), a.dtype)
        out[..., :m, :cu] = u
        out[..., m, :k] = s
        out[..., m + 1:, :cv] = np.swapaxes(vh, -1, -2)
        return out
    return _each(x, (m + 1 + n, w), pack)


@rule("eigh")
def _eigh(attrs: dict, x: np.ndarray) -> np.ndarray:
    n = x.shape[-1]

    def pack(a: np.ndarray) -> np.ndarray:
        lam, v = np.linalg.eigh(a, UPLO="U" if attrs["upper"] else "L")
        return np.concatenate([lam[..., None, :], v], axis=-2)
    return _each(x, (n + 1, n), pack)


@rule("eig")
def _eig(attrs: dict, x: np.ndarray) -> np.ndarray:
    n = x.shape[-1]

    def pack(a: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eig(a)
        w, v = w.astype(np.result_type(a.dtype, np.complex64)), v.astype(np.result_type(a.dtype, np.complex64))
        return np.concatenate([w.real[..., None, :], w.imag[..., None, :], v.real, v.imag], axis=-2).astype(a.dtype)
    return _each(x, (2 * n + 2, n), pack)


@rule("ldl_factor")
def _ldl_factor(attrs: dict, x: np.ndarray) -> np.ndarray:
    """LAPACK's sytrf (scipy's binding; scipy comes with scikit-learn), lower, as torch.linalg.ldl_factor_ex
    calls it: the upper triangle zeroed, the 1-based pivots and info packed below."""
    from scipy.linalg import lapack

    n = x.shape[-1]
    sytrf = lapack.dsytrf if x.dtype == np.float64 else lapack.ssytrf

    def one(a: np.ndarray) -> np.ndarray:
        if not np.isfinite(a).all():  # (nan factors, as the other factorizations give)
            return np.full((n + 2, n), np.nan, a.dtype)
        ld, piv, info = sytrf(a, lower=1)
        out = np.zeros((n + 2, n), a.dtype)
        out[:n] = np.tril(ld)
        out[n] = piv
        out[n + 1, 0] = info
        return out
    flat = x.reshape((-1, n, n))
    return np.array([one(a) for a in flat], x.dtype).reshape(x.shape[:-2] + (n + 2, n))


@rule("ldl_solve")
def _ldl_solve(attrs: dict, ld: np.ndarray, piv: np.ndarray, b: np.ndarray) -> np.ndarray:
    """LAPACK's sytrs, lower (torch.linalg.ldl_solve's, hermitian=False)."""
    from scipy.linalg import lapack

    n = ld.shape[-1]
    sytrs = lapack.dsytrs if ld.dtype == np.float64 else lapack.ssytrs
    lds, pivs, bs = ld.reshape((-1, n, n)), piv.reshape((-1, n)), b.reshape((-1,) + b.shape[-2:])
    out = np.empty(bs.shape, b.dtype)
    for i in range(lds.shape[0]):
        p = pivs[i].astype(np.int64)
        # sytrs trusts its pivots (an index out of 1..n would read outside the matrix): others give nan
        if not (np.all((p != 0) & (np.abs(p) <= n)) and np.isfinite(lds[i]).all()):
            out[i] = np.nan
        elif bs.shape[-1]:
            out[i] = sytrs(lds[i], p.astype(np.int32), bs[i], lower=1)[0]
    return out.reshape(b.shape)


@rule("qr")
def _qr(attrs: dict, x: np.ndarray) -> np.ndarray:
    m, n = x.shape[-2:]
    c, w = qr_layout(m, n, attrs["complete"])

    def pack(a: np.ndarray) -> np.ndarray:
        q, r = np.linalg.qr(a, mode="complete" if attrs["complete"] else "reduced")
        out = np.zeros(a.shape[:-2] + (m + c, w), a.dtype)
        out[..., :m, :c] = q
        out[..., m:, :n] = r
        return out
    return _each(x, (m + c, w), pack)


@rule("pinv")
def _pinv(attrs: dict, x: np.ndarray) -> np.ndarray:
    m, n = x.shape[-2:]
    atol, rtol = attrs["atol"], attrs["rtol"]

    def pinv(a: np.ndarray) -> np.ndarray:
        # numpy's pinv takes one relative cutoff; torch's takes max(atol, rtol * largest), so it is done here
        if attrs["hermitian"]:
            lam, v = np.linalg.eigh(a)
            s = np.abs(lam)
            tol = np.maximum(atol, rtol * s.max(axis=-1, keepdims=True))
            inv = np.where(s > tol, 1 / np.where(lam == 0, 1, lam), 0).astype(a.dtype)
            return (v * inv[..., None, :]) @ np.swapaxes(v, -1, -2)
        u, s, vh = np.linalg.svd(a, full_matrices=False)
        tol = np.maximum(atol, rtol * s.max(axis=-1, keepdims=True))
        inv = np.where(s > tol, 1 / np.where(s == 0, 1, s), 0).astype(a.dtype)
        return np.swapaxes(vh, -1, -2) @ (inv[..., :, None] * np.swapaxes(u, -1, -2))
    return _each(x, (n, m), pinv)
