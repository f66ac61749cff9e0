"""`av.linalg`, torch.linalg's names for what Avalon computes from its primitives: norms, and the
small-matrix algebra of `matrices` (inverse, determinants, solves, powers, exponentials, cross
products). The spectral factorizations (svd, qr, eigh, ...) would each need a primitive of their
own and are not here."""
from __future__ import annotations

from typing import Any

from ..tensor import Tensor
from .core import mul
from .core import sum as _sum
from .matrices import chain_matmul as multi_dot
from .matrices import cross as _cross
from .matrices import det, inverse, matrix_exp, matrix_power, slogdet, solve
from .reductions import linalg_norm as norm
from .reductions import matrix_norm, vector_norm

inv = inverse


def cross(input: Any, other: Any, *, dim: int = -1) -> Tensor:
    """torch.linalg.cross: the cross product along `dim` (default the last)."""
    return _cross(input, other, dim)


def vecdot(x: Any, y: Any, *, dim: int = -1) -> Tensor:
    """torch.linalg.vecdot: sum(x * y) along `dim`, the operands broadcast."""
    return _sum(mul(x, y), dim)


__all__ = ["cross", "det", "inv", "matrix_exp", "matrix_norm", "matrix_power", "multi_dot", "norm", "slogdet", "solve",
           "vecdot", "vector_norm"]
