"""The torch.* forms of nn.functional's ops, which torch code calls directly (`torch.conv2d`,
`torch.layer_norm`, `torch.batch_norm`, `torch.dropout(x, p, train)`, `torch.kl_div`, ...), exported
as `av.X`.

Where torch.X takes F.X's arguments, `av.X` is `F.X` itself. Where it does not, a wrapper here takes
torch.X's (ATen's) signature and calls F's op: torch.layer_norm/group_norm's trailing `cudnn_enable(d)`;
torch.batch_norm/instance_norm's positional (weight, bias, running_mean, running_var, training,
momentum, eps, cudnn_enabled); torch.embedding(weight, indices, padding_idx=-1) with its operands
swapped; torch.embedding_bag's int `mode` and 4 results; torch.dropout(input, p, train); the losses'
`reduction` as ATen's int (0 none, 1 mean, 2 sum: `torch.kl_div(x, y, 2)`; a string is torch's
TypeError there), whose default from Python is 0, unreduced (torch 2.13's bindings give
`torch.kl_div(x, y)` the elementwise loss, though ATen's schemas say Mean); torch.adaptive_max_pool1d's
(values, indices); torch.rrelu's `generator=`; torch.constant_pad_nd. The wrappers look F's functions
up when called, so autocast's policies apply."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import ops
from .. import random as _rng
from ..ir import dtypes as dt
from ..tensor import Tensor
from . import functional as F
from .functional import (
    adaptive_avg_pool1d,
    avg_pool1d,
    bilinear,
    celu,
    celu_,
    channel_shuffle,
    conv1d,
    conv2d,
    conv3d,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
    cosine_similarity,
    max_pool1d,
    max_pool2d,
    max_pool3d,
    pairwise_distance,
    pdist,
    pixel_shuffle,
    pixel_unshuffle,
    rms_norm,
    selu,
    selu_,
    threshold,
    threshold_,
)

_REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}


def _reduction(fn: str, reduction: Any) -> str:
    """ATen's int reduction (anything but 1 and 2 leaves the loss unreduced, as ATen's)."""
    if isinstance(reduction, bool) or not isinstance(reduction, int):
        hint = f" (torch.{fn} takes ATen's int: 0 'none', 1 'mean', 2 'sum'; F.{fn} takes the string)" \
            if isinstance(reduction, str) else ""
        raise TypeError(f"{fn}(): argument 'reduction' must be int, not {type(reduction).__name__}{hint}")
    return _REDUCTIONS.get(reduction, "none")


# -- normalization --------------------------------------------------------------------------------

def layer_norm(input: Any, normalized_shape: int | Sequence[int], weight: Any = None, bias: Any = None,
               eps: float = 1e-5, cudnn_enable: bool = True) -> Tensor:
    """torch.layer_norm: F.layer_norm (`cudnn_enable` has no meaning here)."""
    return F.layer_norm(input, normalized_shape, weight, bias, eps)


def group_norm(input: Any, num_groups: int, weight: Any = None, bias: Any = None, eps: float = 1e-5,
               cudnn_enabled: bool = True) -> Tensor:
    """torch.group_norm: F.group_norm (`cudnn_enabled` has no meaning here)."""
    return F.group_norm(input, num_groups, weight, bias, eps)


def batch_norm(input: Any, weight: Any, bias: Any, running_mean: Tensor | None, running_var: Tensor | None,
               training: bool, momentum: float, eps: float, cudnn_enabled: bool) -> Tensor:
    """torch.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps,
    cudnn_enabled): F.batch_norm, running statistics updated in place in training."""
    return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


def instance_norm(input: Any, weight: Any, bias: Any, running_mean: Tensor | None, running_var: Tensor | None,
                  use_input_stats: bool, momentum: float, eps: float, cudnn_enabled: bool) -> Tensor:
    """torch.instance_norm(input, weight, bias, running_mean, running_var, use_input_stats, momentum,
    eps, cudnn_enabled): F.instance_norm."""
    return F.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)


# -- lookups ----------------------------------------------------------------------------------------

def embedding(weight: Any, indices: Any, padding_idx: int = -1, scale_grad_by_freq: bool = False,
              sparse: bool = False) -> Tensor:
    """torch.embedding(weight, indices, padding_idx=-1): F.embedding with the operands swapped; a
    negative padding_idx is none (the `padding_idx` row gets no gradient)."""
    pad = None if padding_idx is None or int(padding_idx) < 0 else int(padding_idx)
    return F.embedding(indices, weight, pad, None, 2.0, scale_grad_by_freq, sparse)


_BAG_MODES = {0: "sum", 1: "mean", 2: "max"}


def embedding_bag(weight: Any, indices: Any, offsets: Any, scale_grad_by_freq: bool = False, mode: int = 0,
                  sparse: bool = False, per_sample_weights: Any = None, include_last_offset: bool = False,
                  padding_idx: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torch.embedding_bag: (output, offset2bag, bag_size, max_indices), `mode` 0 sum, 1 mean, 2 max.
    The output is F.embedding_bag's; offset2bag is each index's bag, bag_size the number of
    (non-padding) indices per bag, max_indices, for mode 2, the weight row each maximum came from
    (else bag_size, as torch's; 0 for an empty bag). torch's CPU kernel leaves offset2bag empty in sum
    mode; here it is always filled. `indices` is 1-d, as ATen's (F.embedding_bag takes a 2-d batch)."""
    if mode not in _BAG_MODES:
        raise ValueError(f"embedding_bag: mode has to be 0 (sum), 1 (mean) or 2 (max), got {mode!r}")
    idx, w = F._t(indices), F._t(weight)
    if idx.ndim != 1 or offsets is None:
        raise ValueError(f"torch.embedding_bag takes 1-d indices and 1-d offsets (got indices of shape {idx.shape}"
                         f"{' and no offsets' if offsets is None else ''}); F.embedding_bag takes a 2-d batch of bags")
    pad = None if padding_idx is None or int(padding_idx) < 0 else int(padding_idx)
    out = F.embedding_bag(idx, w, offsets, None, 2, scale_grad_by_freq, _BAG_MODES[mode], sparse,
                          per_sample_weights, include_last_offset, pad)
    off = ops.cast(F._t(offsets), dt.int64)
    starts = off[:-1] if include_last_offset else off
    pos = ops.iota((starts.shape[0], idx.shape[0]), 1, dt.int64)
    after = ops.ge(pos, ops.expand_dims(starts, 1))  # (bags, positions): position at or after the bag's start
    offset2bag = ops.sub(ops.sum(ops.cast(after, dt.int64), 0), 1)
    bag = ops.eq(ops.expand_dims(offset2bag, 0), ops.iota(pos.shape, 0, dt.int64))
    if include_last_offset:
        bag = ops.logical_and(bag, ops.lt(pos, ops.expand_dims(off[1:], 1)))
    if pad is not None:
        bag = ops.logical_and(bag, ops.ne(idx, pad))
    bag_size = ops.sum(ops.cast(bag, dt.int64), 1)
    if mode != 2:
        return out, offset2bag, bag_size, bag_size
    rows = ops.take(w, idx, axis=0)  # (positions, D)
    low = ops.full((), float("-inf"), w.dtype)
    cand = ops.where(ops.expand_dims(bag, -1), ops.expand_dims(rows, 0), low)  # (bags, positions, D)
    at = ops.argmax(cand, 1)  # (bags, D): the first maximum's position
    max_indices = ops.where(ops.expand_dims(ops.gt(bag_size, 0), -1), ops.take(idx, at, axis=0), 0)
    return out, offset2bag, bag_size, max_indices


# -- pooling, padding -------------------------------------------------------------------------------

def adaptive_max_pool1d(input: Any, output_size: Any) -> tuple[Tensor, Tensor]:
    """torch.adaptive_max_pool1d: (values, indices), always both, of a (C, L) or (N, C, L) input.
    Window i covers [floor(i L / out), ceil((i + 1) L / out)); its index is the first maximum's,
    found over an (out, L) membership mask built from iotas, and the values are read there (so the
    gradient goes to that element, as torch's)."""
    x = F._t(input)
    if x.ndim not in (2, 3):
        raise ValueError(f"adaptive_max_pool1d: expected a 2-d (C, L) or 3-d (N, C, L) input, got shape {x.shape}")
    out = output_size[0] if isinstance(output_size, (tuple, list)) else output_size
    out, n = int(out), x.shape[-1]
    if out <= 0 or n == 0:
        raise ops.fail(RuntimeError(f"adaptive_max_pool1d: elements of output_size must be greater than or equal to 1 "
                                    f"and the input's length nonzero, got output_size={out}, input shape {x.shape}"))
    i, pos = ops.iota((out, n), 0, dt.int64), ops.iota((out, n), 1, dt.int64)
    start = ops.floor_divide(ops.mul(i, n), out)
    end = ops.floor_divide(ops.add(ops.mul(ops.add(i, 1), n), out - 1), out)
    inside = ops.logical_and(ops.ge(pos, start), ops.lt(pos, end))
    low = ops.full((), float("-inf"), x.dtype) if x.dtype.is_float else ops.full((), dt.int_range(x.dtype)[0], x.dtype)
    cand = ops.where(inside, ops.expand_dims(x, -2), low)  # (..., out, L)
    idx = ops.argmax(cand, -1)
    return ops.take_along_dim(x, idx, -1), idx


def constant_pad_nd(input: Any, pad: Sequence[int], value: Any = 0) -> Tensor:
    """torch.constant_pad_nd: F.pad(input, pad, 'constant', value) (negative amounts crop)."""
    return F.pad(input, pad, "constant", value)


# -- dropout and random activations -------------------------------------------------------------------

def dropout(input: Any, p: float, train: bool) -> Tensor:
    """torch.dropout(input, p, train): F.dropout(input, p, train)."""
    return F.dropout(input, p, train)


def dropout_(input: Tensor, p: float, train: bool) -> Tensor:
    return F.dropout(input, p, train, inplace=True)


def feature_dropout(input: Any, p: float, train: bool) -> Tensor:
    """torch.feature_dropout: whole channels of an (N, C, ...) input zeroed (one draw per sample and
    channel), the rest scaled by 1 / (1 - p)."""
    x = F._t(input)
    if x.ndim < 2:
        raise ops.fail(RuntimeError("Feature dropout requires at least 2 dimensions in the input"))
    return F._feature_dropout(x, p, train)


def feature_dropout_(input: Tensor, p: float, train: bool) -> Tensor:
    return F._inplace(input, feature_dropout(input, p, train), True, "feature_dropout_")


def alpha_dropout(input: Any, p: float, train: bool) -> Tensor:
    """torch.alpha_dropout(input, p, train): F.alpha_dropout."""
    return F.alpha_dropout(input, p, train)


def alpha_dropout_(input: Tensor, p: float, train: bool) -> Tensor:
    return F.alpha_dropout(input, p, train, inplace=True)


def feature_alpha_dropout(input: Any, p: float, train: bool) -> Tensor:
    """torch.feature_alpha_dropout(input, p, train): F.feature_alpha_dropout."""
    return F.feature_alpha_dropout(input, p, train)


def feature_alpha_dropout_(input: Tensor, p: float, train: bool) -> Tensor:
    return F.feature_alpha_dropout(input, p, train, inplace=True)


def rrelu(input: Any, lower: float = 1.0 / 8, upper: float = 1.0 / 3, training: bool = False,
          generator: Any = None) -> Tensor:
    """torch.rrelu: F.rrelu, the training slopes drawn from `generator` (an av.Generator) if given."""
    with _rng.using(generator, "rrelu"):
        return F.rrelu(input, lower, upper, training)


def rrelu_(input: Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3, training: bool = False,
           generator: Any = None) -> Tensor:
    with _rng.using(generator, "rrelu_"):
        return F.rrelu(input, lower, upper, training, inplace=True)


# -- losses: reduction as ATen's int ------------------------------------------------------------------

def kl_div(input: Any, target: Any, reduction: int = 0, *, log_target: bool = False) -> Tensor:
    """torch.kl_div: F.kl_div, unreduced by default; reduction 1 is the mean over ALL elements (F's 'mean',
    not 'batchmean'); without F.kl_div's warning about 'mean', which torch.kl_div does not give either."""
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="kl_div: reduction: 'mean'")
        return F.kl_div(input, target, reduction=_reduction("kl_div", reduction), log_target=log_target)


def binary_cross_entropy_with_logits(input: Any, target: Any, weight: Any = None, pos_weight: Any = None,
                                     reduction: int = 0) -> Tensor:
    """torch.binary_cross_entropy_with_logits: note `pos_weight` before `reduction`, as ATen's."""
    return F.binary_cross_entropy_with_logits(input, target, weight,
                                              reduction=_reduction("binary_cross_entropy_with_logits", reduction),
                                              pos_weight=pos_weight)


def cosine_embedding_loss(input1: Any, input2: Any, target: Any, margin: float = 0.0, reduction: int = 0) -> Tensor:
    return F.cosine_embedding_loss(input1, input2, target, margin,
                                   reduction=_reduction("cosine_embedding_loss", reduction))


def margin_ranking_loss(input1: Any, input2: Any, target: Any, margin: float = 0.0, reduction: int = 0) -> Tensor:
    return F.margin_ranking_loss(input1, input2, target, margin, reduction=_reduction("margin_ranking_loss", reduction))


def hinge_embedding_loss(input: Any, target: Any, margin: float = 1.0, reduction: int = 0) -> Tensor:
    return F.hinge_embedding_loss(input, target, margin, reduction=_reduction("hinge_embedding_loss", reduction))


def triplet_margin_loss(anchor: Any, positive: Any, negative: Any, margin: float = 1.0, p: float = 2.0,
                        eps: float = 1e-6, swap: bool = False, reduction: int = 0) -> Tensor:
    return F.triplet_margin_loss(anchor, positive, negative, margin, p, eps, swap,
                                 reduction=_reduction("triplet_margin_loss", reduction))


def poisson_nll_loss(input: Any, target: Any, log_input: bool, full: bool, eps: float, reduction: int) -> Tensor:
    """torch.poisson_nll_loss(input, target, log_input, full, eps, reduction): every argument required."""
    return F.poisson_nll_loss(input, target, log_input, full, eps=eps,
                              reduction=_reduction("poisson_nll_loss", reduction))


def ctc_loss(log_probs: Any, targets: Any, input_lengths: Any, target_lengths: Any, blank: int = 0,
             reduction: int = 0, zero_infinity: bool = False) -> Tensor:
    """torch.ctc_loss: F.ctc_loss; reduction 1 divides each loss by its target length, then averages."""
    return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank, _reduction("ctc_loss", reduction),
                      zero_infinity)


__all__ = [
    "adaptive_avg_pool1d", "adaptive_max_pool1d", "alpha_dropout", "alpha_dropout_", "avg_pool1d", "batch_norm",
    "bilinear", "binary_cross_entropy_with_logits", "celu", "celu_", "channel_shuffle", "constant_pad_nd", "conv1d",
    "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "cosine_embedding_loss", "cosine_similarity",
    "ctc_loss", "dropout", "dropout_", "embedding", "embedding_bag", "feature_alpha_dropout", "feature_alpha_dropout_",
    "feature_dropout", "feature_dropout_", "group_norm", "hinge_embedding_loss", "instance_norm", "kl_div",
    "layer_norm", "margin_ranking_loss", "max_pool1d", "max_pool2d", "pairwise_distance", "pdist", "pixel_shuffle",
    "pixel_unshuffle", "poisson_nll_loss", "rms_norm", "rrelu", "rrelu_", "selu", "selu_", "threshold", "threshold_",
    "triplet_margin_loss", "conv_transpose3d", "max_pool3d",
]
