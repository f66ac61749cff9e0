"""Tensor types: a static shape, an element type and, optionally, a memory layout."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .dtypes import DType
from .dtypes import dtype as to_dtype


@dataclass(frozen=True)
class TensorType:
    """`tensor<8x3xf32>`. `layout` is the order of dimensions in memory, outermost first
    (None means row-major, `[0, 2, 3, 1]` is channels-last for NCHW); the logical shape never changes."""

    shape: tuple[int, ...]
    dtype: DType
    layout: tuple[int, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", to_dtype(self.dtype))
        if any(s < 0 for s in self.shape):
            raise ValueError(f"negative dimension in shape {self.shape}")
        if self.layout is not None:
            lay = tuple(int(i) for i in self.layout)
            if sorted(lay) != list(range(len(self.shape))):
                raise ValueError(f"layout {list(lay)} is not a permutation of the {len(self.shape)} dims")
            object.__setattr__(self, "layout", None if lay == tuple(range(len(lay))) else lay)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def strides(self) -> tuple[int, ...]:
        """Element strides of the logical dims under this type's layout."""
        order = self.layout or tuple(range(self.rank))
        st = [0] * self.rank
        acc = 1
        for d in reversed(order):
            st[d] = acc
            acc *= self.shape[d]
        return tuple(st)

    def with_shape(self, shape) -> TensorType:
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dt) -> TensorType:
        return TensorType(self.shape, to_dtype(dt), self.layout)

    def with_layout(self, layout) -> TensorType:
        return TensorType(self.shape, self.dtype, layout)

    def __str__(self) -> str:
        dims = "".join(f"{s}x" for s in self.shape)
        lay = f", layout = [{', '.join(map(str, self.layout))}]" if self.layout else ""
        return f"tensor<{dims}{self.dtype.name}{lay}>"
