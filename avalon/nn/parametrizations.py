"""`torch.nn.utils.parametrizations`: weight norm, spectral norm and orthogonal matrices, as
parametrizations (`avalon.nn.utils.parametrize`), with torch's state-dict names and numbers.

Spectral norm's power iteration writes its `_u`/`_v` buffers in place (`trace.assign`) on every
training-mode access of the weight, as batch norm writes its running statistics, so it runs
eagerly, under `av.value_and_grad` and inside compiled training steps alike. The orthogonal maps
are all three of torch's (`matrix_exp`, `cayley`, `householder`); their initializations (QR of
the weight) are computed eagerly with numpy, so assigning to an orthogonal weight inside a
compiled function is an error.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import ops
from ..grad_mode import no_grad
from ..ops.linalg import householder_product
from ..tensor import Tensor
from ..trace import assign
from . import functional as F
from . import parametrize
from .module import Module

__all__ = ["orthogonal", "spectral_norm", "weight_norm"]


# -- weight norm ----------------------------------------------------------------------------------

def norm_except_dim(v: Tensor, pow: float = 2, dim: int = 0) -> Tensor:  # noqa: A002 - torch's name
    """torch.norm_except_dim: the `pow`-norm over every dim but `dim`, kept as size-1 dims; over the
    whole tensor (a 0-d result) when dim is -1, as torch reads -1 (weight_norm's `dim=None`)."""
    if dim == -1:
        return ops.pow(ops.sum(ops.pow(ops.abs(v), pow)), 1.0 / pow) if pow != 2 else ops.sqrt(ops.sum(v * v))
    d = dim % v.ndim
    axes = tuple(i for i in range(v.ndim) if i != d)
    if not axes:  # a 1-d v: the norm of each element (an empty dim list would be every dim)
        return ops.abs(v)
    if pow == 2:
        return ops.sqrt(ops.sum(v * v, axes, keepdims=True))
    return ops.pow(ops.sum(ops.pow(ops.abs(v), pow), axes, keepdims=True), 1.0 / pow)


def _weight_norm(v: Tensor, g: Tensor, dim: int) -> Tensor:
    """torch._weight_norm: v * (g / ||v||), the norm taken over every dim but `dim`."""
    return v * (g / norm_except_dim(v, 2, dim))


class _WeightNorm(Module):
    def __init__(self, dim: int | None = 0) -> None:
        super().__init__()
        self.dim = -1 if dim is None else dim

    def forward(self, weight_g: Tensor, weight_v: Tensor) -> Tensor:
        return _weight_norm(weight_v, weight_g, self.dim)

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        return norm_except_dim(weight, 2, self.dim), weight


def weight_norm(module: Any, name: str = "weight", dim: int | None = 0) -> Any:
    """torch's `parametrizations.weight_norm`: `name` = g * v / ||v||, the magnitude g in
    `parametrizations.<name>.original0` and the direction v in `original1` (the norm over every
    dim but `dim`; over the whole tensor with `dim=None`)."""
    parametrize.register_parametrization(module, name, _WeightNorm(dim), unsafe=True)
    return module


# -- spectral norm --------------------------------------------------------------------------------

def _is_conv_transpose(module: Any) -> bool:
    from .conv_transpose import ConvTranspose2d
    from .layers_more import ConvTranspose1d
    return isinstance(module, (ConvTranspose1d, ConvTranspose2d)) or "ConvTranspose" in type(module).__name__


class _SpectralNorm(Module):
    def __init__(self, weight: Tensor, n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12) -> None:
        super().__init__()
        ndim = weight.ndim
        if dim >= ndim or dim < -ndim:
            raise IndexError(f"Dimension out of range (expected to be in range of [-{ndim}, {ndim - 1}] but got {dim})")
        if n_power_iterations <= 0:
            raise ValueError(f"Expected n_power_iterations to be positive, but got n_power_iterations="
                             f"{n_power_iterations}")
        self.dim = dim if dim >= 0 else dim + ndim
        self.eps = eps
        if ndim > 1:
            self.n_power_iterations = n_power_iterations
            weight_mat = self._reshape_weight_to_matrix(weight.detach())
            h, w = weight_mat.shape
            u = ops.randn(h, dtype=weight.dtype)  # Avalon's generator: torch's state dict brings torch's
            v = ops.randn(w, dtype=weight.dtype)
            self.register_buffer("_u", F.normalize(u, dim=0, eps=self.eps))
            self.register_buffer("_v", F.normalize(v, dim=0, eps=self.eps))
            self._power_method(weight_mat, 15)

    def _reshape_weight_to_matrix(self, weight: Tensor) -> Tensor:
        if self.dim != 0:
            weight = weight.permute(self.dim, *(d for d in range(weight.ndim) if d != self.dim))
        return weight.flatten(1)

    def _power_method(self, weight_mat: Tensor, n_power_iterations: int) -> None:
        """u <- W v / |W v|, v <- W^T u / |W^T u|, written into the buffers (state updates when traced),
        without gradient, as torch's no_grad power method with `out=`."""
        with no_grad():
            w = weight_mat.detach()
            for _ in range(n_power_iterations):
                assign(self._u, F.normalize(ops.mv(w, self._v), dim=0, eps=self.eps))
                assign(self._v, F.normalize(ops.mv(w.mT, self._u), dim=0, eps=self.eps))

    def forward(self, weight: Tensor) -> Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        weight_mat = self._reshape_weight_to_matrix(weight)
        if self.training:
            self._power_method(weight_mat, self.n_power_iterations)
        sigma = ops.vdot(self._u, ops.mv(weight_mat, self._v))  # (the buffers' values now: no gradient)
        return weight / sigma

    def right_inverse(self, value: Tensor) -> Tensor:
        return value


def spectral_norm(module: Any, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12,
                  dim: int | None = None) -> Any:
    """torch's `parametrizations.spectral_norm`: `name` = W / sigma(W), sigma estimated by power
    iteration on the buffers `parametrizations.<name>.0._u` / `_v`, one step (`n_power_iterations`)
    per access of the weight in training mode, none in eval mode. `dim` defaults to 0 (1 for
    transposed convolutions)."""
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"Module '{type(module).__name__}' has no parameter or buffer with name '{name}'")
    if dim is None:
        dim = 1 if _is_conv_transpose(module) else 0
    parametrize.register_parametrization(module, name, _SpectralNorm(weight, n_power_iterations, dim, eps))
    return module


# -- orthogonal -----------------------------------------------------------------------------------

_MAPS = ("matrix_exp", "cayley", "householder")


def _numpy(x: Tensor, what: str) -> np.ndarray:
    if x.is_traced:
        raise RuntimeError(f"orthogonal: {what} computes a QR decomposition eagerly (numpy); assign to an "
                           "orthogonal weight outside compiled or differentiated functions")
    return x.detach().numpy()


def _is_orthogonal(q: np.ndarray) -> bool:
    n, k = q.shape[-2], q.shape[-1]
    eps = 10.0 * n * np.finfo(q.dtype).eps
    return bool(np.allclose(np.swapaxes(q, -1, -2) @ q, np.eye(k, dtype=q.dtype), atol=eps))


def _make_orthogonal(a: np.ndarray) -> np.ndarray:
    """The Q of A = QR with R's diagonal non-negative (torch's geqrf + householder_product + sign)."""
    q, r = np.linalg.qr(a)
    return q * np.expand_dims(np.sign(np.diagonal(r, axis1=-2, axis2=-1)), -2)


def _geqrf(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """torch.geqrf (LAPACK's compact QR: R above the diagonal, the reflectors below, and tau)."""
    batch = a.shape[:-2]
    out, taus = np.empty_like(a), np.empty(batch + (min(a.shape[-2:]),), a.dtype)
    for idx in np.ndindex(*batch):
        h, tau = np.linalg.qr(a[idx], mode="raw")
        out[idx], taus[idx] = h.T, tau
    return out, taus


class _Orthogonal(Module):
    def __init__(self, weight: Tensor, orthogonal_map: str, *, use_trivialization: bool = True) -> None:
        super().__init__()
        self.shape = tuple(weight.shape)
        self.orthogonal_map = orthogonal_map  # a string, not torch's enum: walked as a plain value
        if use_trivialization:
            self.register_buffer("base", None)

    def forward(self, X: Tensor) -> Tensor:  # noqa: N803 - torch's names
        n, k = X.shape[-2], X.shape[-1]
        transposed = n < k
        if transposed:
            X = X.mT
            n, k = k, n
        if self.orthogonal_map in ("matrix_exp", "cayley"):
            X = X.tril()
            if n != k:
                X = ops.cat([X, ops.zeros(*X.shape[:-2], n, n - k, dtype=X.dtype, device=X.device)], -1)
            A = X - X.mT
            if self.orthogonal_map == "matrix_exp":
                Q = ops.matrix_exp(A)
            else:
                eye = ops.eye(n, dtype=A.dtype, device=A.device)
                Q = ops.solve(eye - 0.5 * A, eye + 0.5 * A)
            if n != k:
                Q = Q[..., :k]
        else:
            A = X.tril(-1)
            tau = 2.0 / (1.0 + (A * A).sum(-2))
            Q = householder_product(A, tau)
            Q = Q * ops.expand_dims(ops.cast(X.diagonal(dim1=-2, dim2=-1), "int32"), -2)
        if hasattr(self, "base"):
            Q = ops.matmul(self.base, Q)
        if transposed:
            Q = Q.mT
        return Q

    def right_inverse(self, Q: Tensor) -> Tensor:  # noqa: N803
        if tuple(Q.shape) != self.shape:
            raise ValueError(f"Expected a matrix or batch of matrices of shape {self.shape}. "
                             f"Got a tensor of shape {tuple(Q.shape)}.")
        q = _numpy(Q, "right_inverse")
        n, k = q.shape[-2], q.shape[-1]
        transpose = n < k
        if transpose:
            q = np.swapaxes(q, -1, -2)
            n, k = k, n
        if not hasattr(self, "base"):
            if self.orthogonal_map in ("matrix_exp", "cayley"):
                raise NotImplementedError("It is not possible to assign to the matrix exponential or the Cayley "
                                          "parametrizations when use_trivialization=False.")
            a, tau = _geqrf(q)
            diag = np.diagonal(a, axis1=-2, axis2=-1)
            sign = np.where(tau == 0.0, -np.sign(diag), np.sign(diag))
            idx = np.arange(min(n, k))
            a[..., idx, idx] = sign
            out = np.swapaxes(a, -1, -2) if transpose else a
            return Tensor(np.ascontiguousarray(out), dtype=Q.dtype)
        if n == k:
            q = _make_orthogonal(q) if not _is_orthogonal(q) else q.copy()
        else:  # completed to a square matrix by random columns (Avalon's generator)
            extra = ops.randn(*q.shape[:-2], n, n - k, dtype=Q.dtype).numpy()
            q = _make_orthogonal(np.concatenate([q, extra], -1))
        base = Tensor(np.ascontiguousarray(q), dtype=Q.dtype)
        if isinstance(self.base, Tensor) and tuple(self.base.shape) == base.shape:
            assign(self.base, base)
        else:
            self.base = base
        neg_id = np.zeros(self.shape, dtype=q.dtype)
        idx = np.arange(min(self.shape[-2:]))
        neg_id[..., idx, idx] = -1.0
        return Tensor(neg_id, dtype=Q.dtype)


def orthogonal(module: Any, name: str = "weight", orthogonal_map: str | None = None, *,
               use_trivialization: bool = True) -> Any:
    """torch's `parametrizations.orthogonal`: `name` (a matrix or a batch of them) kept orthogonal
    (orthonormal columns, or rows when wide) through `orthogonal_map`, "matrix_exp" (the default
    for square matrices), "cayley" or "householder" (the default otherwise); with
    `use_trivialization` the starting point is stored in `parametrizations.<name>.0.base`."""
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"Module '{type(module).__name__}' has no parameter or buffer with name '{name}'")
    if weight.ndim < 2:
        raise ValueError(f"Expected a matrix or batch of matrices. Got a tensor of {weight.ndim} dimensions.")
    if not weight.dtype.is_float:
        raise ValueError(f"orthogonal needs a floating-point tensor, got {weight.dtype}")
    if orthogonal_map is None:
        orthogonal_map = "matrix_exp" if weight.shape[-2] == weight.shape[-1] else "householder"
    if orthogonal_map not in _MAPS:
        raise ValueError('orthogonal_map has to be one of "matrix_exp", "cayley", "householder". '
                         f"Got: {orthogonal_map}")
    orth = _Orthogonal(weight, orthogonal_map, use_trivialization=use_trivialization)
    parametrize.register_parametrization(module, name, orth, unsafe=True)
    return module
