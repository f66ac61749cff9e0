"""Loss functions with `torch.nn.functional`'s names, signatures and math (re-exported by
`avalon.nn.functional`, where torch keeps them), written in their numerically stable forms.

Class targets are integer arrays; an out-of-range class is torch's IndexError ("Target 3 is out of
bounds.") naming the loss and the user's line when the targets' values are known (eager), and the
`one_hot` inside the loss raises when they are not (compiled), except `ignore_index` (-100 by
default), whose entries contribute nothing, as in torch. `size_average` and `reduce` are torch's
deprecated spellings of `reduction`, accepted with torch's meaning.
"""
from __future__ import annotations

import math
import sys
import warnings
from typing import Any

import numpy as np

from .. import amp, ops
from ..ir import dtypes as dt
from ..ir.reference import IndexOutOfRangeError
from ..ops.dtype_kernels import TORCH_NAMES, DTypeRuntimeError, check_kernel
from ..tensor import Tensor, values_fixed
from ..trace import _is_user_file
from .functional import _softplus1, _t, log_softmax, pairwise_distance


def _legacy_reduction(size_average: bool | None, reduce: bool | None, reduction: str,
                      elementwise_mean: bool = True) -> str:
    """torch's mapping of the deprecated `size_average`/`reduce` flags onto `reduction`; and, for the
    losses whose torch code reads `reduction` through `_Reduction.get_enum` (`elementwise_mean`), that
    function's handling of the pre-1.0 name 'elementwise_mean' (see _enum_reduction)."""
    if size_average is None and reduce is None:
        return _enum_reduction(reduction) if elementwise_mean else reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    return "mean" if size_average and reduce else ("sum" if reduce else "none")


def _enum_reduction(reduction: str) -> str:
    """torch's `_Reduction.get_enum`: 'elementwise_mean', the pre-1.0 name of 'mean', is 'mean' with
    torch's UserWarning. Losses whose torch code checks the string itself (poisson_nll_loss,
    gaussian_nll_loss, multilabel_soft_margin_loss, triplet_margin_with_distance_loss) refuse it
    with torch's ValueError instead."""
    if reduction == "elementwise_mean":
        warnings.warn("reduction='elementwise_mean' is deprecated. Please use reduction='mean' instead.",
                      UserWarning, stacklevel=_user_stacklevel())
        return "mean"
    return reduction


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
    if t.dtype not in (dt.int64, dt.uint8):  # torch's rule: int32 class indices (numpy's on Windows) are refused too
        raise ops.fail(DTypeRuntimeError(
            f"{name}: expected target dtype to be Long or Byte, but got {TORCH_NAMES[t.dtype.name]}; class targets "
            f"must be integer class indices of dtype int64 (cast them with .long())"))
    if t.dtype is not dt.int64:  # one_hot takes i32/i64
        t = ops.cast(t, dt.int64)
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
    if not w.dtype.is_float or (isinstance(weight, Tensor) and w.dtype != x.dtype
                                and not amp.is_autocast_enabled(x.device.type)):
        # torch's check, as conv's bias (an integer weight was cast in silence; a numpy array is taken as given)
        raise ops.fail(TypeError(f"{name}: expected scalar type {x.dtype.name} but found {w.dtype.name} (the class "
                                 f"weight's dtype); cast it with .to(...)"))
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
    if label_smoothing > 1.0:  # torch's check; a negative (or nan) value smooths nothing, as in torch
        raise ops.fail(RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}"))
    if not label_smoothing > 0.0:
        label_smoothing = 0.0
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
        raise ops.fail(ValueError(f"{name}: using a target size ({t.shape}) that is different to the input size "
                                  f"({x.shape}) is not supported"))


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
    check_kernel("smooth_l1_loss", "smooth_l1_cpu", "integer", input, target)
    if beta < 0:  # (the where below would pick the linear branch everywhere: a different loss, silently)
        raise ops.fail(RuntimeError(f"smooth_l1_loss does not support negative values for beta, got beta={beta}"))
    d = ops.abs(ops.sub(*_warn_size(_t(input), _t(target), "smooth_l1_loss")))
    if beta == 0.0:
        return _reduce(d, reduction)
    loss = ops.where(ops.lt(d, beta), ops.mul(ops.mul(d, d), 0.5 / beta), ops.sub(d, 0.5 * beta))
    return _reduce(loss, reduction)


def huber_loss(input: Any, target: Any, reduction: str = "mean", delta: float = 1.0, weight: Any = None) -> Tensor:
    reduction = _enum_reduction(reduction)
    check_kernel("huber_loss", "huber_cpu", "integer", input, target)
    if not delta > 0:
        raise ops.fail(RuntimeError(f"huber_loss does not support non-positive values for delta, got delta={delta}"))
    d = ops.abs(ops.sub(*_warn_size(_t(input), _t(target), "huber_loss")))
    loss = ops.where(ops.lt(d, delta), ops.mul(ops.mul(d, d), 0.5), ops.mul(ops.sub(d, 0.5 * delta), delta))
    x = _t(input)
    if loss.dtype != x.dtype and x.dtype.is_float:  # torch's huber kernel writes the input's dtype (an f64 target
        loss = ops.cast(loss, x.dtype)              # is computed with, but not promoted to)
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
    if t.dtype != x.dtype and not amp.is_autocast_enabled(x.device.type):  # torch's check (numpy promoted)
        raise ops.fail(DTypeRuntimeError(
            f"binary_cross_entropy: Found dtype {TORCH_NAMES[t.dtype.name]} but expected {TORCH_NAMES[x.dtype.name]} "
            f"(the target's dtype must be the input's); cast it with .to(input.dtype)"))
    if not values_fixed(x):  # traced: the values are checked when the graph runs
        x = ops.check_values(x, ops.logical_and(ops.ge(x, 0.0), ops.le(x, 1.0)),
                             "binary_cross_entropy: all elements of input should be between 0 and 1; for logits "
                             "(no sigmoid applied) use binary_cross_entropy_with_logits (nn.BCEWithLogitsLoss)")
    elif x.numel():
        v = x.numpy()
        bad = ~((v >= 0) & (v <= 1))
        if bad.any():
            raise ops.fail(RuntimeError(
                f"binary_cross_entropy: all elements of input should be between 0 and 1, got {v[bad].flat[0]} at "
                f"index {tuple(int(i) for i in np.argwhere(bad)[0])}; for logits (no sigmoid applied) use "
                "binary_cross_entropy_with_logits (nn.BCEWithLogitsLoss)"))
    if not values_fixed(t):  # torch checks the target too: t = 2 gives a finite, meaningless loss
        t = ops.check_values(t, ops.logical_and(ops.ge(t, 0.0), ops.le(t, 1.0)),
                             "binary_cross_entropy: all elements of target should be between 0 and 1")
    elif t.numel():
        v = t.numpy()
        bad = ~((v >= 0) & (v <= 1))
        if bad.any():
            raise ops.fail(RuntimeError(
                f"binary_cross_entropy: all elements of target should be between 0 and 1, got {v[bad].flat[0]} at "
                f"index {tuple(int(i) for i in np.argwhere(bad)[0])}"))
    one_m = ops.sub(1.0, x)
    log_x = ops.stop_gradient(ops.maximum(ops.log(x), -100.0))
    log_1mx = ops.stop_gradient(ops.maximum(ops.log(one_m), -100.0))
    loss = ops.neg(ops.add(ops.mul(t, log_x), ops.mul(ops.sub(1.0, t), log_1mx)))
    # dx in f32 for f16/bf16, where 1e-12 is 0: dx = 1/0 made the zero-valued term below 0 * inf = nan
    xg, tg = (ops.cast(x, dt.float32), ops.cast(t, dt.float32)) if x.dtype in (dt.float16, dt.bfloat16) else (x, t)
    dx = ops.div(ops.sub(xg, tg), ops.maximum(ops.mul(xg, ops.sub(1.0, xg)), 1e-12))
    corr = ops.sub(ops.mul(xg, ops.stop_gradient(dx)), ops.stop_gradient(ops.mul(xg, dx)))
    loss = ops.add(loss, corr if xg is x else ops.cast(corr, x.dtype))
    if weight is not None:
        loss = ops.mul(loss, weight)
        if loss.dtype != x.dtype:  # torch's kernel writes the input's dtype (an f64 weight promoted it)
            loss = ops.cast(loss, x.dtype)
    return _reduce(loss, _legacy_reduction(size_average, reduce, reduction))


def binary_cross_entropy_with_logits(input: Any, target: Any, weight: Any = None, size_average: bool | None = None,
                                     reduce: bool | None = None, reduction: str = "mean",
                                     pos_weight: Any = None) -> Tensor:
    """(1 - t) x + w_pos * softplus(-x), the overflow-free form of BCE(sigmoid(x), t), where
    w_pos = 1 + (pos_weight - 1) t."""
    x, t = _t(input), _t(target)
    _check_same_size(x, t, "binary_cross_entropy_with_logits")
    if not t.dtype.is_float:  # torch's error (integer 0/1 labels were promoted in silence)
        raise ops.fail(DTypeRuntimeError(
            f"binary_cross_entropy_with_logits: result type {TORCH_NAMES[x.dtype.name]} can't be cast to the desired "
            f"output type {TORCH_NAMES[t.dtype.name]}; targets must be floating point (cast them with .float())"))
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
    given, reduction = reduction, _legacy_reduction(size_average, reduce, reduction)
    # torch's warning: 'mean' is rarely the KL divergence the user means (not given for 'elementwise_mean')
    if reduction == "mean" and given != "elementwise_mean":
        warnings.warn("kl_div: reduction: 'mean' divides the total loss by both the batch size and the support size."
                      "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
                      "'mean' will be changed to behave the same as 'batchmean' in the next major release.",
                      UserWarning, stacklevel=_user_stacklevel())
    x, t = _t(input), _t(target)
    if not (x.dtype.is_float and t.dtype.is_float):  # torch's check (numpy computed in f32)
        raise ops.fail(DTypeRuntimeError("kl_div: Integral inputs not supported."))
    if log_target:
        loss = ops.mul(ops.exp(t), ops.sub(t, x))
    else:
        # torch's xlogy: 0 where t = 0, nan where t < 0 (a negative "probability" gave a finite loss)
        xlogy = ops.mul(t, ops.log(ops.where(ops.eq(t, 0), 1.0, t)))
        loss = ops.sub(xlogy, ops.mul(t, x))
    if reduction == "batchmean":
        s = ops.sum(loss)
        return ops.div(s, float(x.shape[0])) if x.ndim else s
    return _reduce(loss, reduction)


# -- margin, embedding and likelihood losses ------------------------------------------------------

def _float_target(x: Tensor, target: Any, promote: bool = False) -> Tensor:
    """A ±1 / label / count target in the input's float dtype (integers are common). With `promote`
    (the losses torch writes as plain tensor arithmetic: margin_ranking, multilabel_soft_margin,
    poisson_nll, gaussian_nll), a float target is kept, so an f64 target promotes the loss to f64
    as in torch; the others (soft_margin, hinge_embedding, ...) keep the input's dtype, as torch's."""
    t = _t(target)
    if t.dtype == x.dtype or (promote and t.dtype.is_float):
        return t
    return ops.cast(t, x.dtype)


def _clamp_min0(x: Tensor) -> Tensor:
    """torch's clamp_min(x, 0), whose gradient passes where x >= 0 (ties included)."""
    return ops.clamp(x, 0.0)


def _check_reduction(reduction: str, message: str | None = None) -> None:
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(message or f"{reduction} is not a valid value for reduction")


def margin_ranking_loss(input1: Any, input2: Any, target: Any, margin: float = 0.0, size_average: bool | None = None,
                        reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """max(0, -y (x1 - x2) + margin): y = 1 ranks x1 above x2, y = -1 below."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    a, b = _t(input1), _t(input2)
    y = _float_target(a, target, promote=True)
    if not a.ndim == b.ndim == y.ndim:
        raise ops.fail(RuntimeError(f"margin_ranking_loss : All input tensors should have same dimension but got "
                                    f"sizes: input1: {a.shape}, input2: {b.shape}, target: {y.shape} "))
    return _reduce(_clamp_min0(ops.add(ops.mul(ops.neg(y), ops.sub(a, b)), margin)), reduction)


def hinge_embedding_loss(input: Any, target: Any, margin: float = 1.0, size_average: bool | None = None,
                         reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """x where y = 1, max(0, margin - x) where y = -1 (torch's where-formula: a target that is
    neither gets both terms)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    x = _t(input)
    y = _float_target(x, target)
    hinge = ops.where(ops.ne(y, 1.0), _clamp_min0(ops.sub(margin, x)), 0.0)
    return _reduce(ops.add(hinge, ops.where(ops.ne(y, -1.0), x, 0.0)), reduction)


def soft_margin_loss(input: Any, target: Any, size_average: bool | None = None, reduce: bool | None = None,
                     reduction: str = "mean") -> Tensor:
    """log(1 + exp(-y x)), as the overflow-free softplus (torch's log1p(exp) gives inf past ~88 in f32)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    x = _t(input)
    return _reduce(_softplus1(ops.neg(ops.mul(x, _float_target(x, target)))), reduction)


def multilabel_soft_margin_loss(input: Any, target: Any, weight: Any = None, size_average: bool | None = None,
                                reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """Per-class binary logistic losses -(y log σ(x) + (1 - y) log σ(-x)), averaged over the classes
    (the last dim), one value per sample."""
    reduction = _legacy_reduction(size_average, reduce, reduction, elementwise_mean=False)
    _check_reduction(reduction, f"{reduction} is not valid")
    x = _t(input)
    if _t(target).dtype is dt.bool_:  # torch's error: 1 - y has no bool case
        raise ops.fail(DTypeRuntimeError("multilabel_soft_margin_loss: Subtraction, the `-` operator, with a bool "
                                         "tensor is not supported; cast the target with .float()"))
    y = _float_target(x, target, promote=True)
    # -log σ(x) = softplus(-x) and -log σ(-x) = softplus(x)
    loss = ops.add(ops.mul(y, _softplus1(ops.neg(x))), ops.mul(ops.sub(1.0, y), _softplus1(x)))
    if weight is not None:
        loss = ops.mul(loss, weight)
    c = x.shape[-1] if x.ndim else 1
    loss = ops.div(ops.sum(loss, x.ndim - 1) if x.ndim else loss, float(c))
    return _reduce(loss, reduction)


def cosine_embedding_loss(input1: Any, input2: Any, target: Any, margin: float = 0.0,
                          size_average: bool | None = None, reduce: bool | None = None,
                          reduction: str = "mean") -> Tensor:
    """1 - cos(x1, x2) where y = 1, max(0, cos(x1, x2) - margin) where y = -1; the cosine with
    torch's 1e-12 added to each squared norm."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    a, b = _t(input1), _t(input2)
    y = _t(target)
    if y.ndim > 1 or a.ndim != y.ndim + 1 or b.ndim != y.ndim + 1:
        raise ops.fail(RuntimeError(f"cosine_embedding_loss: expected (N, D) inputs with (N,) targets, or (D,) inputs "
                                    f"with a 0-d target; got {a.shape}, {b.shape} and {y.shape}"))
    d = y.ndim
    prod = ops.sum(ops.mul(a, b), d)
    m1 = ops.add(ops.sum(ops.mul(a, a), d), 1e-12)
    m2 = ops.add(ops.sum(ops.mul(b, b), d), 1e-12)
    cos = ops.div(prod, ops.sqrt(ops.mul(m1, m2)))
    pos = ops.where(ops.eq(y, 1), ops.sub(1.0, cos), 0.0)
    neg = ops.where(ops.eq(y, -1), _clamp_min0(ops.sub(cos, margin)), 0.0)
    return _reduce(ops.add(pos, neg), reduction)


def _margin_targets(x: Tensor, target: Any, name: str) -> Tensor:
    """multi_margin_loss's class indices: one per sample, each in [0, C) when the values are known."""
    t = _t(target)
    if t.dtype is not dt.int64:  # torch wants Long (and so refuses int32 and uint8 here, unlike cross_entropy)
        raise ops.fail(DTypeRuntimeError(f"{name}: expected scalar type Long (int64) for the integer class targets but "
                                         f"found {t.dtype.name}; cast it with .long()"))
    n = x.shape[0]
    if t.numel() != n or t.ndim > 1:
        raise ops.fail(ValueError(f"{name}: inconsistent target size: {t.shape} for input of size: {x.shape}"))
    if not t.is_traced and t.numel():
        v = t.numpy()
        bad = (v < 0) | (v >= x.shape[1])
        if bad.any():
            raise ops.fail(IndexOutOfRangeError(f"{name}: target {int(v[bad].flat[0])} is out of bounds: class index "
                                                f"out of range [0, {x.shape[1]})"))
    return ops.reshape(t, (n,))


def multi_margin_loss(input: Any, target: Any, p: int = 1, margin: float = 1.0, weight: Any = None,
                      size_average: bool | None = None, reduce: bool | None = None,
                      reduction: str = "mean") -> Tensor:
    """Multi-class hinge loss: sum over i != y of max(0, margin - x[y] + x[i])^p (times weight[y]),
    divided by the number of classes C."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    if p not in (1, 2):
        raise ValueError("only p == 1 and p == 2 supported")
    x = _t(input)
    _logits(x, "multi_margin_loss", "scores")
    if weight is not None and _t(weight).ndim != 1:
        raise ValueError("weight must be one-dimensional")
    if weight is not None and x.ndim >= 1 and _t(weight).shape[0] != (x.shape[-1] if x.ndim else 1):
        # torch's check (a longer weight was indexed by class in silence)
        raise ops.fail(ValueError(f"multi_margin_loss: inconsistent weight size, expected "
                                  f"{x.shape[-1]} but got {list(_t(weight).shape)}"))
    if x.ndim <= 1:  # (C,) or a 0-d score: one sample
        x2 = ops.reshape(x, (1, max(x.numel(), 1)))
        loss = multi_margin_loss(x2, ops.reshape(_t(target), (1,)), p, margin, weight, reduction=reduction)
        return ops.reshape(loss, ()) if reduction == "none" else loss
    if x.ndim != 2:
        raise ops.fail(ValueError(f"multi_margin_loss: expected 1-d or 2-d input, got {x.shape}"))
    c = x.shape[1]
    t = _margin_targets(x, target, "multi_margin_loss")
    hit = ops.one_hot(t, c, dtype=dt.bool_)
    xy = ops.sum(ops.where(hit, x, 0.0), 1, keepdims=True)
    z = _clamp_min0(ops.add(ops.sub(margin, xy), x))
    if p == 2:
        z = ops.mul(z, z)
    if weight is not None:
        z = ops.mul(z, ops.expand_dims(ops.take(ops.cast(_t(weight), x.dtype), t), 1))
    loss = ops.div(ops.sum(ops.where(hit, 0.0, z), 1), float(c))
    return _reduce(loss, reduction)


def multilabel_margin_loss(input: Any, target: Any, size_average: bool | None = None, reduce: bool | None = None,
                           reduction: str = "mean") -> Tensor:
    """Multi-label hinge loss: for each target class j (the target row's leading entries, up to the
    first -1) and each non-target class i, max(0, 1 - (x[j] - x[i])); summed and divided by C."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    x, t = _t(input), _t(target)
    if t.dtype.is_float or t.dtype is dt.bool_:
        raise ops.fail(TypeError(f"multilabel_margin_loss: target must be an integer array, got {t.dtype}"))
    if x.ndim <= 1:
        x2, t2 = ops.reshape(x, (1, max(x.numel(), 1))), ops.reshape(t, (1, max(t.numel(), 1)))
        loss = multilabel_margin_loss(x2, t2, reduction=reduction)
        return ops.reshape(loss, ()) if reduction == "none" else loss
    if x.ndim != 2 or t.shape != x.shape:
        raise ops.fail(ValueError(f"multilabel_margin_loss: expected input (N, C) and target of the same shape, got "
                                  f"{x.shape} and {t.shape}"))
    c = x.shape[1]
    if not t.is_traced and t.numel():
        v = t.numpy()
        bad = (v < -1) | (v >= c)
        if bad.any():
            raise ops.fail(IndexOutOfRangeError(f"multilabel_margin_loss: target {int(v[bad].flat[0])} is out of "
                                                f"bounds: class index out of range [-1, {c})"))
    valid = ops.eq(ops.cumsum(ops.cast(ops.eq(t, -1), dt.int64), 1), 0)      # (N, K): before the first -1
    hot = ops.logical_and(ops.one_hot(ops.where(valid, t, 0), c, dtype=dt.bool_), ops.expand_dims(valid, 2))
    xj = ops.sum(ops.where(hot, ops.expand_dims(x, 1), 0.0), 2)               # (N, K): x at each target
    is_target = ops.any(hot, 1)                                               # (N, C)
    z = _clamp_min0(ops.add(ops.sub(1.0, ops.expand_dims(xj, 2)), ops.expand_dims(x, 1)))  # (N, K, C)
    keep = ops.logical_and(ops.expand_dims(valid, 2), ops.expand_dims(ops.logical_not(is_target), 1))
    loss = ops.div(ops.sum(ops.where(keep, z, 0.0), (1, 2)), float(c))
    return _reduce(loss, reduction)


def triplet_margin_loss(anchor: Any, positive: Any, negative: Any, margin: float = 1.0, p: float = 2, eps: float = 1e-6,
                        swap: bool = False, size_average: bool | None = None, reduce: bool | None = None,
                        reduction: str = "mean") -> Tensor:
    """max(0, d(a, p) - d(a, n) + margin) with d the p-norm pairwise distance (`swap`: d(a, n) is
    replaced by d(p, n) when that is smaller, Balntas et al.)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if margin <= 0:
        raise ValueError(f"margin must be greater than 0, got {margin}")
    return triplet_margin_with_distance_loss(
        anchor, positive, negative, distance_function=lambda x, y: pairwise_distance(x, y, p, eps), margin=margin,
        swap=swap, reduction=reduction)


def triplet_margin_with_distance_loss(anchor: Any, positive: Any, negative: Any, *, distance_function: Any = None,
                                      margin: float = 1.0, swap: bool = False, reduction: str = "mean") -> Tensor:
    """The triplet loss with any distance (default: the Euclidean pairwise distance)."""
    _check_reduction(reduction)
    if margin <= 0:
        raise ValueError(f"margin must be greater than 0, got {margin}")
    a, pos, neg = _t(anchor), _t(positive), _t(negative)
    if not a.ndim == pos.ndim == neg.ndim:
        raise ops.fail(RuntimeError(f"The anchor, positive, and negative tensors are expected to have the same number "
                                    f"of dimensions, but got: anchor {a.ndim}D, positive {pos.ndim}D, and negative "
                                    f"{neg.ndim}D inputs"))
    dist = distance_function if distance_function is not None else pairwise_distance
    d_pos, d_neg = _t(dist(a, pos)), _t(dist(a, neg))
    if swap:
        d_neg = ops.minimum(d_neg, _t(dist(pos, neg)))
    return _reduce(_clamp_min0(ops.sub(ops.add(d_pos, margin), d_neg)), reduction)


def poisson_nll_loss(input: Any, target: Any, log_input: bool = True, full: bool = False,
                     size_average: bool | None = None, eps: float = 1e-8, reduce: bool | None = None,
                     reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of `target` under Poisson(rate): exp(x) - t x for a log rate,
    x - t log(x + eps) for a rate; `full` adds Stirling's t log t - t + log(2 pi t) / 2 where t > 1
    (its gradient with respect to a zero target is 0, where torch's is nan: 0 times log 0)."""
    reduction = _legacy_reduction(size_average, reduce, reduction, elementwise_mean=False)
    _check_reduction(reduction)
    x = _t(input)
    t = _float_target(x, target, promote=True)
    if log_input:
        loss = ops.sub(ops.exp(x), ops.mul(t, x))
    else:
        loss = ops.sub(x, ops.mul(t, ops.log(ops.add(x, eps))))
    if full:
        big = ops.gt(t, 1.0)
        ts = ops.where(big, t, 2.0)  # the masked entries stay finite, so their zero gradient is not nan
        stirling = ops.add(ops.sub(ops.mul(ts, ops.log(ts)), ts), ops.mul(ops.log(ops.mul(ts, 2 * math.pi)), 0.5))
        loss = ops.add(loss, ops.where(big, stirling, 0.0))
    return _reduce(loss, reduction)


def gaussian_nll_loss(input: Any, target: Any, var: Any, full: bool = False, eps: float = 1e-6,
                      reduction: str = "mean") -> Tensor:
    """(log max(var, eps) + (x - t)^2 / max(var, eps)) / 2 (+ log(2 pi) / 2 with `full`). As in torch,
    the clamp at eps is invisible to the gradient (torch clamps under no_grad), and `var` may be
    one per input, one per sample (the input's shape less its last dim, or a 1 there), or a float."""
    x = _t(input)
    if isinstance(var, (int, float)) and not isinstance(var, bool):
        if var < 0:
            raise ValueError("var has negative entry/entries")
        v = ops.full(x.shape, float(var), x.dtype)
    else:
        v = _t(var)
        if not values_fixed(v):  # checked when the graph runs (nan passes, as torch's any(var < 0))
            v = ops.check_values(v, ops.logical_not(ops.lt(v, 0.0)),
                                 "gaussian_nll_loss: var has negative entry/entries")
        elif v.numel() and bool((v.numpy() < 0).any()):
            raise ValueError("var has negative entry/entries")
    if v.shape != x.shape:
        if x.shape[:-1] == v.shape:
            v = ops.expand_dims(v, v.ndim)
        elif not (x.ndim == v.ndim and sum(b for a, b in zip(x.shape, v.shape) if a != b) == 1):
            raise ValueError("var is of incorrect size")
    _check_reduction(reduction, f"{reduction} is not valid")
    vc = ops.add(v, ops.stop_gradient(ops.sub(ops.maximum(v, eps), v)))  # max(v, eps), gradient as for v
    d = ops.sub(x, _float_target(x, target, promote=True))
    loss = ops.mul(ops.add(ops.log(vc), ops.div(ops.mul(d, d), vc)), 0.5)
    if full:
        loss = ops.add(loss, 0.5 * math.log(2 * math.pi))
    return _reduce(loss, reduction)


# -- connectionist temporal classification ----------------------------------------------------------

_CTC_NEG = -1e30  # log 0 for the recursion: finite, so a sum of unreachable paths is not inf - inf = nan


def _lengths(v: Any, n: int, what: str) -> Tensor:
    """Per-sample lengths (a tuple, list or tensor) as an (N,) int64 tensor."""
    t = _t(np.asarray(v, dtype=np.int64) if isinstance(v, (list, tuple, int)) else v)
    if t.dtype.is_float or t.dtype is dt.bool_:
        raise ops.fail(TypeError(f"ctc_loss: {what} must be integers, got {t.dtype}"))
    if t.numel() != n:
        raise ops.fail(RuntimeError(f"ctc_loss: {what} must have one entry per sample ({n}), got shape {t.shape}"))
    return ops.cast(ops.reshape(t, (n,)), dt.int64)


def _padded_targets(targets: Tensor, tl: Tensor, n: int, steps: int) -> Tensor:
    """(N, S) padded targets from torch's concatenated 1-d form. With the lengths' values known, S is the
    longest target; with traced lengths (crnn.pytorch's `IntTensor` lengths as a compiled step's input), row
    i gathers the targets from its offset, the exclusive running sum of the lengths, over S = min(total,
    T) entries (no target is longer than the total, and one longer than the T input steps has no alignment:
    its end position lies past the S-wide row, so its loss is torch's inf), the entries past a target's
    length clamped into range (they are padding, never reached)."""
    if tl.is_traced:
        total = targets.shape[0]
        tl = ops.check_values(tl, ops.broadcast_to(ops.eq(ops.sum(tl), total), tl.shape),
                              f"ctc_loss: target_lengths must sum to the {total} concatenated targets (torch: "
                              f"Expected tensor to have size sum(target_lengths) at dimension 0, but got size {total} "
                              f"for argument #2 'targets')")
        s = max(min(total, steps), 1)
        start = ops.sub(ops.cumsum(tl, 0), tl)
        at = ops.add(ops.expand_dims(start, 1), ops.reshape(ops.arange(s), (1, s)))
        at = ops.clamp(at, 0, max(total - 1, 0))
        if total == 0:
            return ops.full((n, s), 0, targets.dtype)
        return ops.reshape(ops.take(targets, ops.reshape(at, (n * s,)), 0), (n, s))
    lens = [int(v) for v in tl.numpy()]
    if sum(lens) != targets.shape[0]:  # (torch: fewer is refused too)
        raise ops.fail(RuntimeError(f"ctc_loss: target_lengths sum to {sum(lens)}, not the {targets.shape[0]} "
                                    f"concatenated targets (torch: Expected tensor to have size {sum(lens)} at "
                                    f"dimension 0, but got size {targets.shape[0]} for argument #2 'targets')"))
    s = max(max(lens, default=0), 1)
    rows, at = [], 0
    for n_i in lens:
        row = ops.slice_(targets, [at], [at + n_i]) if n_i else ops.full((0,), 0, targets.dtype)
        rows.append(ops.pad(row, [(0, s - n_i)]) if n_i < s else row)
        at += n_i
    return ops.stack(rows, 0) if n > 1 else ops.expand_dims(rows[0], 0)


def ctc_loss(log_probs: Any, targets: Any, input_lengths: Any, target_lengths: Any, blank: int = 0,
             reduction: str = "mean", zero_infinity: bool = False) -> Tensor:
    """The CTC loss (Graves et al. 2006): -log of the total probability of the alignments of each
    target to its input, by the forward recursion in log space. log_probs (T, N, C) or (T, C);
    targets padded (N, S) or concatenated 1-d (with traced target_lengths too); 'mean' divides
    each loss by its target length, then averages, as torch.

    The recursion is unrolled over the T time steps (about 20 ops each: fine for a few hundred steps,
    a long graph for thousands). Gradients are autodiff's, the true derivative in log_probs; torch's
    kernel returns that plus exp(log_probs) (the gradient with respect to the logits, assuming
    log_softmax), so both agree through log_softmax. An impossible alignment gives torch's inf
    (0 with `zero_infinity`) and no gradient, where torch's is nan without `zero_infinity`."""
    reduction = _enum_reduction(reduction)
    _check_reduction(reduction)
    lp = _t(log_probs)
    _logits(lp, "ctc_loss", "log-probabilities")
    if lp.ndim == 2:
        t2 = _t(targets)
        loss = ctc_loss(ops.expand_dims(lp, 1), ops.expand_dims(t2, 0) if t2.ndim == 1 else t2,
                        _lengths(input_lengths, 1, "input_lengths"), _lengths(target_lengths, 1, "target_lengths"),
                        blank, reduction, zero_infinity)
        return ops.squeeze(loss, 0) if reduction == "none" else loss
    if lp.ndim != 3:
        raise ops.fail(ValueError(f"ctc_loss: log_probs must be (T, N, C) or (T, C), got shape {lp.shape}"))
    steps, n, c = lp.shape
    if not 0 <= blank < c:
        raise ops.fail(RuntimeError(f"ctc_loss: blank must be in label range [0, {c}), got {blank}"))
    work = lp if lp.dtype in (dt.float32, dt.float64) else ops.cast(lp, dt.float32)
    il = _lengths(input_lengths, n, "input_lengths")
    tl = _lengths(target_lengths, n, "target_lengths")
    tg = ops.cast(_t(targets), dt.int64)
    concatenated = tg.ndim == 1
    if concatenated:
        tg = _padded_targets(tg, tl, n, steps)
    if tg.ndim != 2 or tg.shape[0] != n:
        raise ops.fail(RuntimeError(f"ctc_loss: targets must be (N, S) padded or 1-d concatenated, got {tg.shape}"))
    if not il.is_traced and il.numel() and (il.numpy().max() > steps or il.numpy().min() < 0):
        raise ops.fail(RuntimeError(f"ctc_loss: input_lengths must be in [0, {steps}], got {il.numpy().tolist()}"))
    if not tl.is_traced and tl.numel() and (tl.numpy().max() > tg.shape[1] or tl.numpy().min() < 0):
        raise ops.fail(RuntimeError(f"ctc_loss: target_lengths must be in [0, {tg.shape[1]}], got "
                                    f"{tl.numpy().tolist()}"))
    if il.is_traced:  # the same checks when the graph runs (lengths past the input were clamped in silence)
        il = ops.check_values(il, ops.logical_and(ops.ge(il, 0), ops.le(il, steps)),
                              f"ctc_loss: input_lengths must be in [0, {steps}] (torch: Expected input_lengths to "
                              f"have value at most {steps})")
    if tl.is_traced and concatenated:  # (a target longer than the inputs is torch's inf; the sum is checked above)
        tl = ops.check_values(tl, ops.ge(tl, 0), "ctc_loss: target_lengths must be in [0, inf) (torch: Expected "
                              "target_lengths to have value at least 0)")
    elif tl.is_traced:
        tl = ops.check_values(tl, ops.logical_and(ops.ge(tl, 0), ops.le(tl, tg.shape[1])),
                              f"ctc_loss: target_lengths must be in [0, {tg.shape[1]}] (torch: Expected tensor to "
                              f"have size at least target_lengths at dimension 1)")
    s = tg.shape[1]
    width = 2 * s + 1
    # the extended labels: blank, y1, blank, y2, ..., blank (padding entries past a target are never reached)
    tgc = ops.where(ops.logical_and(ops.ge(tg, 0), ops.lt(tg, c)), tg, blank)
    ext = ops.reshape(ops.stack([ops.full((n, s), blank, dt.int64), tgc], 2), (n, 2 * s))
    ext = ops.concat([ext, ops.full((n, 1), blank, dt.int64)], 1)                       # (N, 2S+1)
    emit = ops.take_along_dim(work, ops.expand_dims(ext, 0), 2)                          # (T, N, 2S+1)
    skip = ops.ne(ext, blank)  # the s-2 transition: into a label that differs from the one two back
    if s > 0:
        prev2 = ops.concat([ops.full((n, 2), blank, dt.int64), ops.slice_(ext, [0, 0], [n, width - 2])], 1)
        skip = ops.logical_and(skip, ops.ne(ext, prev2))
    neg = _CTC_NEG
    start = ops.lt(ops.reshape(ops.arange(width), (1, width)), 2)
    alpha = ops.where(start, _time(emit, 0, n, width), neg)
    for t in range(1, steps):
        a1 = ops.pad(ops.slice_(alpha, [0, 0], [n, width - 1]), [(0, 0), (1, 0)], neg)
        a2 = ops.where(skip, ops.pad(ops.slice_(alpha, [0, 0], [n, width - 2]), [(0, 0), (2, 0)], neg), neg) \
            if width > 2 else ops.full((n, width), neg, alpha.dtype)
        m = ops.stop_gradient(ops.maximum(ops.maximum(alpha, a1), a2))  # logsumexp's shift (no gradient)
        lse = ops.add(ops.log(ops.add(ops.add(ops.exp(ops.sub(alpha, m)), ops.exp(ops.sub(a1, m))),
                                      ops.exp(ops.sub(a2, m)))), m)
        nxt = ops.maximum(ops.add(lse, _time(emit, t, n, width)), neg)  # never below log 0
        alpha = ops.where(ops.expand_dims(ops.lt(t, il), 1), nxt, alpha)
    # the end: the last label or the blank after it (position 2 tl or 2 tl - 1)
    pos = ops.reshape(ops.arange(width), (1, width))
    last = ops.expand_dims(ops.mul(tl, 2), 1)
    ends = ops.logical_or(ops.eq(pos, last), ops.logical_and(ops.eq(pos, ops.sub(last, 1)), ops.gt(last, 0)))
    ends = ops.logical_and(ends, ops.expand_dims(ops.gt(il, 0), 1))  # an empty input aligns with nothing
    fin = ops.where(ends, alpha, neg)
    m = ops.stop_gradient(ops.amax(fin, 1))
    loss = ops.neg(ops.add(ops.log(ops.sum(ops.exp(ops.sub(fin, ops.expand_dims(m, 1))), 1)), m))
    impossible = ops.ge(loss, -neg / 2)
    loss = ops.where(impossible, 0.0 if zero_infinity else math.inf, loss)
    loss = ops.cast(loss, lp.dtype)
    if reduction == "mean":
        return ops.mean(ops.div(loss, ops.cast(ops.maximum(tl, 1), lp.dtype)))
    return _reduce(loss, reduction)


def _time(emit: Tensor, t: int, n: int, width: int) -> Tensor:
    """Row t of the (T, N, 2S+1) emissions."""
    return ops.reshape(ops.slice_(emit, [t, 0, 0], [t + 1, n, width]), (n, width))
