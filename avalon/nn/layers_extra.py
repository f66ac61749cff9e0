"""More torch layers for ported models, with torch's signatures, parameter names and init:
instance norm, Bilinear, the distance layers and EmbeddingBag."""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Buffer, Tensor, as_array
from ..trace import assign
from . import functional as F
from . import init
from .layers import _layer_dtype, _place, empty
from .module import Module

__all__ = ["Bilinear", "CosineSimilarity", "EmbeddingBag", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
           "PairwiseDistance"]


class _InstanceNorm(Module):
    """Shared by InstanceNorm1d/2d/3d: per-sample, per-channel normalization over the spatial dims.
    Off by default, as in torch: `affine` (weight, bias) and `track_running_stats` (running_mean,
    running_var and num_batches_tracked, which torch registers but never advances for instance norm)."""

    _spatial = 1

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = False,
                 track_running_stats: bool = False, device: Any = None, dtype: Any = None, *,
                 bias: bool = True) -> None:
        super().__init__()
        d = _layer_dtype(type(self).__name__, dtype)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = init.ones_(empty((num_features,), d)) if affine else None
        self.bias = empty((num_features,), d) if affine and bias else None
        if track_running_stats:
            self.running_mean = empty((num_features,), d, buffer=True)
            self.running_var = init.ones_(empty((num_features,), d, buffer=True))
            self.num_batches_tracked = Buffer(np.array(0, np.int64), dtype=dt.int64)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        _place(self, device)

    def forward(self, input: Any) -> Tensor:
        x = F._t(input)
        k = self._spatial
        if x.ndim not in (k + 1, k + 2):
            raise ValueError(f"{type(self).__name__}: expected {k + 1}D or {k + 2}D input (got {x.ndim}D input)")
        c = x.shape[x.ndim - k - 1]
        if c != self.num_features:
            if self.affine:
                raise ValueError(f"expected input's size at dim={x.ndim - k - 1} to match num_features "
                                 f"({self.num_features}), but got: {c}.")
            warnings.warn(f"input's size at dim={x.ndim - k - 1} does not match num_features. You can silence this "
                          "warning by not passing in num_features, which is not used because affine=False",
                          stacklevel=2)
        unbatched = x.ndim == k + 1
        if unbatched:
            x = ops.expand_dims(x, 0)
        y = F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training or not self.track_running_stats,
                            self.momentum if self.momentum is not None else 0.0, self.eps)
        return ops.squeeze(y, 0) if unbatched else y

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class InstanceNorm1d(_InstanceNorm):
    """Instance norm over (N, C, L) or (C, L) input."""

    _spatial = 1


class InstanceNorm2d(_InstanceNorm):
    """Instance norm over (N, C, H, W) or (C, H, W) input."""

    _spatial = 2


class InstanceNorm3d(_InstanceNorm):
    """Instance norm over (N, C, D, H, W) or (C, D, H, W) input."""

    _spatial = 3


class Bilinear(Module):
    """y = x1^T W x2 + b; weight (out, in1, in2), both weight and bias ~ U(±1/sqrt(in1)), as torch."""

    def __init__(self, in1_features: int, in2_features: int, out_features: int, bias: bool = True,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        d = _layer_dtype("Bilinear", dtype)
        self.in1_features, self.in2_features, self.out_features = in1_features, in2_features, out_features
        self.weight = empty((out_features, in1_features, in2_features), d)
        self.bias = empty((out_features,), d) if bias else None
        self.reset_parameters()
        _place(self, device)

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.weight.shape[1])
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input1: Any, input2: Any) -> Tensor:
        return F.bilinear(input1, input2, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in1_features={self.in1_features}, in2_features={self.in2_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")


class CosineSimilarity(Module):
    def __init__(self, dim: int = 1, eps: float = 1e-8) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x1: Any, x2: Any) -> Tensor:
        return F.cosine_similarity(x1, x2, self.dim, self.eps)


class PairwiseDistance(Module):
    def __init__(self, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False) -> None:
        super().__init__()
        self.norm, self.eps, self.keepdim = p, eps, keepdim

    def forward(self, x1: Any, x2: Any) -> Tensor:
        return F.pairwise_distance(x1, x2, self.norm, self.eps, self.keepdim)


class EmbeddingBag(Module):
    """Sums, means or maxima of bags of embeddings without materializing the rows per bag in the
    caller; init N(0, 1) with the `padding_idx` row zeroed, as torch."""

    def __init__(self, num_embeddings: int, embedding_dim: int, max_norm: float | None = None,
                 norm_type: float = 2.0, scale_grad_by_freq: bool = False, mode: str = "mean", sparse: bool = False,
                 _weight: Any = None, include_last_offset: bool = False, padding_idx: int | None = None,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if max_norm is not None:
            raise NotImplementedError("EmbeddingBag(max_norm=...) is not supported")
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"EmbeddingBag: mode has to be one of sum, mean or max, got {mode!r}")
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError("padding_idx must be within num_embeddings")
            padding_idx %= num_embeddings
        d = _layer_dtype("EmbeddingBag", dtype)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.max_norm, self.norm_type, self.scale_grad_by_freq = max_norm, norm_type, scale_grad_by_freq
        self.mode, self.sparse, self.include_last_offset = mode, sparse, include_last_offset
        if _weight is None:
            self.weight = empty((num_embeddings, embedding_dim), d)
            self.reset_parameters()
        else:
            self.weight = Tensor(np.array(as_array(_weight), copy=True), dtype=d)
            if self.weight.shape != (num_embeddings, embedding_dim):
                raise ValueError("Shape of weight does not match num_embeddings and embedding_dim")
        _place(self, device)

    def reset_parameters(self) -> None:
        init.normal_(self.weight)
        if self.padding_idx is not None:
            arr = self.weight.numpy().copy()
            arr[self.padding_idx] = 0
            assign(self.weight, Tensor(arr, dtype=self.weight.dtype))

    @classmethod
    def from_pretrained(cls, embeddings: Any, freeze: bool = True, max_norm: float | None = None,
                        norm_type: float = 2.0, scale_grad_by_freq: bool = False, mode: str = "mean",
                        sparse: bool = False, include_last_offset: bool = False,
                        padding_idx: int | None = None) -> EmbeddingBag:
        """A bag table holding a copy of `embeddings` (`freeze` is accepted as in Embedding)."""
        w = as_array(embeddings)
        return cls(w.shape[0], w.shape[1], max_norm, norm_type, scale_grad_by_freq, mode, sparse, w,
                   include_last_offset, padding_idx)

    def forward(self, input: Any, offsets: Any = None, per_sample_weights: Any = None) -> Tensor:
        return F.embedding_bag(input, self.weight, offsets, None, self.norm_type, self.scale_grad_by_freq,
                               self.mode, self.sparse, per_sample_weights, self.include_last_offset,
                               self.padding_idx)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}"
        return s + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")
