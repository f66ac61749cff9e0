"""Loss functions with `torch.nn.functional`'s names, signatures and math (re-exported by
`avalon.nn.functional`, where torch keeps them), written in their numerically stable forms.

Class targets are integer arrays; an out-of-range class is torch's IndexError ("Target 3 is out of
bounds.") naming the loss and the user's line when the targets' values are known (eager), and the
`one_hot` inside the loss raises when they are not (compiled), except `ignore_index` (-100 by
default), whose entries contribute nothing, as in torch. `size_average` and `reduce` are torch's
deprecated spellings of `reduction`, accepted with torch's meaning.
"""
from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..ir.reference import IndexOutOfRangeError
from ..tensor import Tensor
from ..trace import _is_user_file
from .functional import _softplus1, _t, log_softmax


def _legacy_reduction(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """torch's mapping of the deprecated `size_average`/`reduce` flags onto `reduction`."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    return "mean" if size_average and reduce else ("sum" if reduce else "none")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return ops.mean(loss)
    if reduction == "sum":
        return ops.sum(loss)
    raise ValueError(f"{reduction} is not a valid value for reduction")


def _logits(x: Tensor, name: str, what: str) -> None:
    """The input of a classification loss must be floating-point; integers there are usually the targets."""
    if not x.dtype.is_float:
        got = dt.PY_NAMES[x.dtype.name]
        raise ops.fail(TypeError(f"{name}: input must be floating-point {what}, got {got} — are input and target "
                                 f"swapped? (the order is {name}(input, target))"))


def _class_targets(x: Tensor, target: Any, name: str, ignore_index: int) -> Tensor:
    """Integer class indices of the shape (N, d1, ...) that input (N, C, d1, ...) needs. When their
    values are known, each must be in [0, C) or be `ignore_index`: torch's IndexError, which the
    one_hot inside the loss would report only as an internal op's index."""
    t = _t(target)
    if t.dtype.is_float or t.dtype is dt.bool_:
        raise ops.fail(TypeError(f"{name}: class targets must be an integer array, got {t.dtype}"))
    want = (x.shape[0],) + x.shape[2:]
    if t.shape != want:
        raise ops.fail(ValueError(f"{name}: input {x.shape} needs targets of shape {want}, got {t.shape}"))
    if not t.is_traced and t.numel():
        c, v = x.shape[1], t.numpy()
        bad = (v != ignore_index) & ((v < 0) | (v >= c))
        if bad.any():
            raise ops.fail(IndexOutOfRangeError(
                f"{name}: Target {int(v[bad].flat[0])} is out of bounds: class index out of range [0, {c}) for input "
                f"of shape {x.shape} (ignore_index={ignore_index} is also allowed)"))
    return t


def _class_weight(x: Tensor, weight: Any, name: str) -> Tensor | None:
    """`weight` cast to the input's dtype, after torch's check that it has one entry per class."""
    if weight is None:
        return None
    w, c = _t(weight), x.shape[1]
    if w.shape != (c,):
        raise ops.fail(ops.ArgumentError(f"{name}: weight tensor should be defined either for all {c} classes or no "
                                         f"classes but got weight tensor of shape: {list(w.shape)}"))
    return ops.cast(w, x.dtype)


def _to_class_axis(t: Tensor, ndim: int) -> Tensor:
    """Move the trailing class axis of a one-hot (N, d1.., C) to position 1, like the input."""
    return t if ndim == 2 else ops.permute(t, [0, ndim - 1] + list(range(1, ndim - 1)))


def _weight_shape(ndim: int) -> tuple[int, ...]:
    return (1, -1) + (1,) * (ndim - 2)


def nll_loss(input: Any, target: Any, weight: Any = None, size_average: bool | None = None,
             ignore_index: int = -100, reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """-input[n, target[n]] * weight[target[n]]; 'mean' divides by the summed weights of the
    non-ignored targets (torch's weighted mean)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    x = _t(input)
    _logits(x, "nll_loss", "log-probabilities")
    return _nll(x, target, weight, ignore_index, reduction, "nll_loss")


def _nll(x: Tensor, target: Any, weight: Any, ignore_index: int, reduction: str, name: str) -> Tensor:
    """nll_loss's work, named `name` (nll_loss, or the cross_entropy that calls it) in errors."""
    if x.ndim == 1:  # (C,) with a scalar target
        loss = _nll(ops.expand_dims(x, 0), ops.reshape(_t(target), (1,)), weight, ignore_index, reduction, name)
        return ops.squeeze(loss, 0) if reduction == "none" else loss
    t = _class_targets(x, target, name, ignore_index)
    wv = _class_weight(x, weight, name)
    valid = ops.ne(t, ignore_index)
    safe = ops.where(valid, t, 0)
    hit = _to_class_axis(ops.one_hot(safe, x.shape[1], dtype=dt.bool_), x.ndim)
    picked = ops.sum(ops.where(hit, x, 0.0), 1)
    if wv is None:
        w = ops.cast(valid, x.dtype)
    else:
        w = ops.where(valid, ops.take(wv, safe), 0.0)
    loss = ops.neg(ops.mul(picked, w))
    if reduction == "mean":
        return ops.div(ops.sum(loss), ops.sum(w))
    return _reduce(loss, reduction)


def cross_entropy(input: Any, target: Any, weight: Any = None, size_average: bool | None = None,
                  ignore_index: int = -100, reduce: bool | None = None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """log_softmax over the class axis (1, or 0 for unbatched input) then the NLL. Float targets of the
    input's shape are class probabilities. `label_smoothing` mixes in the uniform distribution with
    torch's exact weighting and normalization."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    x, t = _t(input), _t(target)
    _logits(x, "cross_entropy", "logits")
    if x.ndim == 1:
        t1 = ops.expand_dims(t, 0) if t.dtype.is_float else ops.reshape(t, (1,))
        loss = cross_entropy(ops.expand_dims(x, 0), t1, weight, None, ignore_index, None, reduction,
                             label_smoothing)
        return ops.squeeze(loss, 0) if reduction == "none" else loss
    c = x.shape[1]
    wv = _class_weight(x, weight, "cross_entropy")
    wb = None if wv is None else ops.reshape(wv, _weight_shape(x.ndim))
    if t.dtype.is_float and t.shape != x.shape:
        raise ops.fail(ops.ArgumentError(
            f"cross_entropy: float targets of shape {t.shape} for input of shape {x.shape}: class-index targets must "
            f"be an integer (int64) tensor of shape {(x.shape[0],) + x.shape[2:]}, and probability targets must have "
            f"the input's shape {x.shape}"))
    logp = log_softmax(x, 1)
    if t.dtype.is_float:  # class probabilities
        if label_smoothing > 0:
            t = ops.add(ops.mul(t, 1.0 - label_smoothing), label_smoothing / c)
        prod = ops.mul(logp, t) if wb is None else ops.mul(ops.mul(logp, t), wb)
        loss = ops.neg(ops.sum(prod, 1))
        if reduction == "mean":
            return ops.div(ops.sum(loss), float(x.numel() // c))
        return _reduce(loss, reduction)
    nll = _nll(logp, t, weight, ignore_index, reduction, "cross_entropy")
    if label_smoothing == 0.0:
        return nll
    t = _class_targets(x, t, "cross_entropy", ignore_index)
    valid = ops.ne(t, ignore_index)
    smooth = ops.neg(ops.sum(logp if wb is None else ops.mul(logp, wb), 1))
    smooth = ops.where(valid, smooth, 0.0)
    if reduction == "mean":
        if weight is None:
            denom = ops.sum(ops.cast(valid, x.dtype))
        else:
            denom = ops.sum(ops.where(valid, ops.take(wv, ops.where(valid, t, 0)), 0.0))
        ret = ops.div(ops.sum(smooth), denom)
    else:
        ret = _reduce(smooth, reduction)
    return ops.add(ops.mul(nll, 1.0 - label_smoothing), ops.mul(ret, label_smoothing / c))


def _check_same_size(x: Tensor, t: Tensor, name: str) -> None:
    if x.shape != t.shape:
        raise ValueError(f"{name}: using a target size ({t.shape}) that is different to the input size ({x.shape}) "
                         "is not supported")


def _user_stacklevel() -> int:
    """The `stacklevel` that attributes a warning to the user's line (the innermost frame outside
    Avalon), so the warnings module shows it once per call site, as torch's do."""
    f, level = sys._getframe(2), 2  # the frame of our caller's caller; level 1 is the caller itself
    while f is not None and not _is_user_file(f.f_code.co_filename):
        f, level = f.f_back, level + 1
    return level if f is not None else 2


def _warn_size(x: Tensor, t: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """torch's warning for a target whose shape differs from the input's: broadcasting (4, 1) against
    (4,) gives a (4, 4) loss, silently wrong."""
    if x.shape != t.shape:
        warnings.warn(f"{name}: Using a target size ({t.shape}) that is different to the input size ({x.shape}). "
                      "This will likely lead to incorrect results due to broadcasting. Please ensure they have the "
                      "same size.", UserWarning, stacklevel=_user_stacklevel())
    return x, t


def mse_loss(input: Any, target: Any, size_average: bool | None = None, reduce: bool | None = None,
             reduction: str = "mean", weight: Any = None) -> Tensor:
    d = ops.sub(*_warn_size(_t(input), _t(target), "mse_loss"))
    loss = ops.mul(d, d) if weight is None else ops.mul(ops.mul(d, d), weight)
    return _reduce(loss, _legacy_reduction(size_average, reduce, reduction))


def l1_loss(input: Any, target: Any, size_average: bool | None = None, reduce: bool | None = None,
            reduction: str = "mean", weight: Any = None) -> Tensor:
    loss = ops.abs(ops.sub(*_warn_size(_t(input), _t(target), "l1_loss")))
    loss = loss if weight is None else ops.mul(loss, weight)
    return _reduce(loss, _legacy_reduction(size_average, reduce, reduction))


def smooth_l1_loss(input: Any, target: Any, size_average: bool | None = None, reduce: bool | None = None,
                   reduction: str = "mean", beta: float = 1.0) -> Tensor:
    reduction = _legacy_reduction(size_average, reduce, reduction)
    d = ops.abs(ops.sub(*_warn_size(_t(input), _t(target), "smooth_l1_loss")))
    if beta == 0.0:
        return _reduce(d, reduction)
    loss = ops.where(ops.lt(d, beta), ops.mul(ops.mul(d, d), 0.5 / beta), ops.sub(d, 0.5 * beta))
    return _reduce(loss, reduction)


def huber_loss(input: Any, target: Any, reduction: str = "mean", delta: float = 1.0, weight: Any = None) -> Tensor:
    d = ops.abs(ops.sub(*_warn_size(_t(input), _t(target), "huber_loss")))
    loss = ops.where(ops.lt(d, delta), ops.mul(ops.mul(d, d), 0.5), ops.mul(ops.sub(d, 0.5 * delta), delta))
    return _reduce(loss if weight is None else ops.mul(loss, weight), reduction)


def binary_cross_entropy(input: Any, target: Any, weight: Any = None, size_average: bool | None = None,
                         reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """-(t log x + (1 - t) log(1 - x)) with each log clamped at -100, and torch's gradients: in x,
    torch's hand-written (x - t) / max(x (1 - x), 1e-12) (finite at x = 0 and 1); in t, -(log x - log(1 - x))
    of the clamped logs (±100 where torch's unclamped ones give ±inf).

    The x-gradient dx is attached as x * stop_gradient(dx) - stop_gradient(x * dx), which adds exactly
    zero to the value, and the logs are stop_gradient'ed: differentiating the clamped logs would cost
    a dozen passes over the input (selects guarding log 0, maximum's tie rule) where torch's formula
    takes four, and would give 0 rather than torch's value where x is exactly 0 or 1."""
    x, t = _t(input), _t(target)
    _check_same_size(x, t, "binary_cross_entropy")
    if not x.is_traced and x.numel():  # (traced, the values are unknown: out-of-range inputs give nan)
        v = x.numpy()
        bad = ~((v >= 0) & (v <= 1))
        if bad.any():
            raise ops.fail(RuntimeError(
                f"binary_cross_entropy: all elements of input should be between 0 and 1, got {v[bad].flat[0]} at "
                f"index {tuple(int(i) for i in np.argwhere(bad)[0])}; for logits (no sigmoid applied) use "
                "binary_cross_entropy_with_logits (nn.BCEWithLogitsLoss)"))
    one_m = ops.sub(1.0, x)
    log_x = ops.stop_gradient(ops.maximum(ops.log(x), -100.0))
    log_1mx = ops.stop_gradient(ops.maximum(ops.log(one_m), -100.0))
    loss = ops.neg(ops.add(ops.mul(t, log_x), ops.mul(ops.sub(1.0, t), log_1mx)))
    dx = ops.div(ops.sub(x, t), ops.maximum(ops.mul(x, one_m), 1e-12))
    loss = ops.add(loss, ops.sub(ops.mul(x, ops.stop_gradient(dx)), ops.stop_gradient(ops.mul(x, dx))))
    if weight is not None:
        loss = ops.mul(loss, weight)
    return _reduce(loss, _legacy_reduction(size_average, reduce, reduction))


def binary_cross_entropy_with_logits(input: Any, target: Any, weight: Any = None, size_average: bool | None = None,
                                     reduce: bool | None = None, reduction: str = "mean",
                                     pos_weight: Any = None) -> Tensor:
    """(1 - t) x + w_pos * softplus(-x), the overflow-free form of BCE(sigmoid(x), t), where
    w_pos = 1 + (pos_weight - 1) t."""
    x, t = _t(input), _t(target)
    _check_same_size(x, t, "binary_cross_entropy_with_logits")
    sp = _softplus1(ops.neg(x))
    if pos_weight is not None:
        sp = ops.mul(sp, ops.add(ops.mul(ops.sub(pos_weight, 1.0), t), 1.0))
    loss = ops.add(ops.mul(ops.sub(1.0, t), x), sp)
    if weight is not None:
        loss = ops.mul(loss, weight)
    return _reduce(loss, _legacy_reduction(size_average, reduce, reduction))


def kl_div(input: Any, target: Any, size_average: bool | None = None, reduce: bool | None = None,
           reduction: str = "mean", log_target: bool = False) -> Tensor:
    """Pointwise KL(target || exp(input)) with `input` in log space: t (log t - input), with
    0 log 0 = 0; `log_target=True` takes log t. 'batchmean' divides the sum by the batch size (the
    true KL divergence per sample); 'mean' divides by the element count, as torch."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    x, t = _t(input), _t(target)
    if log_target:
        loss = ops.mul(ops.exp(t), ops.sub(t, x))
    else:
        xlogy = ops.mul(t, ops.log(ops.where(ops.gt(t, 0), t, 1.0)))
        loss = ops.sub(xlogy, ops.mul(t, x))
    if reduction == "batchmean":
        s = ops.sum(loss)
        return ops.div(s, float(x.shape[0])) if x.ndim else s
    return _reduce(loss, reduction)
