"""`av.linalg`, torch.linalg's names for what Avalon computes from its primitives: norms. The
factorizations (svd, qr, eigh, ...) would each need a primitive of their own and are not here."""
from __future__ import annotations

from .reductions import linalg_norm as norm
from .reductions import matrix_norm, vector_norm

__all__ = ["matrix_norm", "norm", "vector_norm"]
