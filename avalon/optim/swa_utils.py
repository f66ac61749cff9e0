"""`torch.optim.swa_utils`: weight averaging (SWA, EMA) with torch's names, signatures and arithmetic.

    swa_model = swa_utils.AveragedModel(model)            # or multi_avg_fn=get_ema_multi_avg_fn(0.999)
    swa_sched = swa_utils.SWALR(opt, swa_lr=0.05)
    ...                                                   # after swa_start: each epoch
    swa_model.update_parameters(model); swa_sched.step()
    swa_utils.update_bn(loader, swa_model)                # batch norm statistics of the averaged weights

The running averages are the `AveragedModel`'s own tensors (`.module`, a deep copy of the model, and the
int64 `n_averaged` buffer), written with `avalon.trace.assign` (or the in-place methods a custom
`multi_avg_fn` uses), so `update_parameters` also runs inside a compiled training step that takes the
`AveragedModel` as an argument: its tensors are inputs and the averages come back as state updates.
torch's "the first call copies the model" is a Python branch on `n_averaged`; under a trace, where that
count is an input, it is a select instead (`where(n_averaged == 0, model, average)`), so one traced
step serves the first call and every later one.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from copy import deepcopy
from typing import Any, Literal

import numpy as np

from .. import ops
from ..grad_mode import no_grad
from ..ir import dtypes as dt
from ..nn.layers import _BatchNorm
from ..nn.module import Module, buffers, named_modules, parameters, train
from ..tensor import Buffer, Tensor
from ..trace import assign, current_trace
from ..tree import to_device
from . import Optimizer
from .lr_scheduler import LRScheduler, _check_optimizer, _format_param, _warn_get_lr_called_within_step

__all__ = ["SWALR", "AveragedModel", "get_ema_avg_fn", "get_ema_multi_avg_fn", "get_swa_avg_fn",
           "get_swa_multi_avg_fn", "update_bn"]

ParamList = Sequence[Tensor]


def _check_decay(decay: float) -> None:
    if decay < 0.0 or decay > 1.0:
        raise ValueError(f"Invalid decay value {decay} provided. Please provide a value in [0,1] range.")


def _write(target: Tensor, value: Tensor) -> None:
    """`target.detach().copy_(value)`: an in-place write (a state update under a trace), cast to the
    target's dtype as copy_ casts (float to integer truncates toward zero)."""
    if value.dtype != target.dtype:
        value = ops.cast(value, target.dtype)
    assign(target, value)


def get_ema_multi_avg_fn(decay: float = 0.999) -> Callable[[ParamList, ParamList, Any], None]:
    """The EMA W <- decay W + (1 - decay) W_model over lists of tensors, in place: torch's
    `_foreach_lerp_` (lerp's two formulas) for floating-point tensors, a truncating copy for integer ones."""
    _check_decay(decay)

    def ema_update(ema_param_list: ParamList, current_param_list: ParamList, _: Any) -> None:
        with no_grad():
            if ema_param_list[0].dtype.is_float:
                for p_ema, p_model in zip(ema_param_list, current_param_list, strict=True):
                    _write(p_ema, ops.lerp(p_ema, p_model, 1 - decay))
            else:
                for p_ema, p_model in zip(ema_param_list, current_param_list, strict=True):
                    _write(p_ema, p_ema * decay + p_model * (1 - decay))

    return ema_update


def get_swa_multi_avg_fn() -> Callable[[ParamList, ParamList, Any], None]:
    """The running mean W <- W + (W_model - W) / (n + 1) over lists of tensors, in place, as torch's
    `lerp(W, W_model, 1 / (n + 1))`, whose weight for a tensor `n` is in the default float dtype
    (float32 unless `av.set_default_dtype` says otherwise), as torch's `1 / (n + 1)` is."""

    def swa_update(averaged_param_list: ParamList, current_param_list: ParamList, num_averaged: Any) -> None:
        with no_grad():
            if not averaged_param_list[0].dtype.is_float:
                # torch's integer branch calls addcdiv_ (Tensor n) or add_ with a float alpha (int n): both raise
                raise RuntimeError("Integer division with addcdiv is no longer supported (torch's get_swa_multi_avg_fn "
                                   "cannot average integer tensors such as num_batches_tracked; use the default "
                                   "averaging, avg_fn=get_swa_avg_fn(), or use_buffers=False)")
            weight = 1 / (num_averaged + 1)
            for p_avg, p_model in zip(averaged_param_list, current_param_list, strict=True):
                w = ops.cast(weight, p_avg.dtype) if isinstance(weight, Tensor) else weight
                _write(p_avg, ops.lerp(p_avg, p_model, w))

    return swa_update


def get_ema_avg_fn(decay: float = 0.999) -> Callable[[Tensor, Tensor, Any], Tensor]:
    """The EMA of one tensor: decay * W + (1 - decay) * W_model (returned, not written)."""
    _check_decay(decay)

    def ema_update(ema_param: Tensor, current_param: Tensor, num_averaged: Any) -> Tensor:
        return decay * ema_param + (1 - decay) * current_param

    return ema_update


def get_swa_avg_fn() -> Callable[[Tensor, Tensor, Any], Tensor]:
    """The running mean of one tensor: W + (W_model - W) / (n + 1) (returned, not written)."""

    def swa_update(averaged_param: Tensor, current_param: Tensor, num_averaged: Any) -> Tensor:
        return averaged_param + (current_param - averaged_param) / (num_averaged + 1)

    return swa_update


def _to(t: Tensor, device: Any) -> Tensor:
    return t if t.device == device else t.to(device)


class AveragedModel(Module):
    """torch's AveragedModel: a deep copy of `model` in `.module` whose parameters (and buffers, with
    `use_buffers=True`) `update_parameters(model)` averages; `n_averaged` counts the calls. The first
    call copies the model; later ones apply `avg_fn` (per tensor, returning the average),
    `multi_avg_fn` (per list of tensors of one device and dtype, in place) or the equal-weight mean.
    Without `use_buffers` the buffers are copied from `model` at every call. `model` may be an
    `avalon.nn.Module` or a plain object holding tensors (walked as everywhere in Avalon); the state
    dict is torch's: `n_averaged`, then `module.<name>`.

    Inside a compiled step, pass the AveragedModel as an argument (`step(model, ema, opt, x, y)`) so that
    its tensors are inputs the step updates; one captured from the enclosing scope would be baked in."""

    n_averaged: Tensor

    def __init__(self, model: Any, device: Any = None, avg_fn: Callable[[Tensor, Tensor, Any], Tensor] | None = None,
                 multi_avg_fn: Callable[[ParamList, ParamList, Any], None] | None = None,
                 use_buffers: bool = False) -> None:
        super().__init__()
        if avg_fn is not None and multi_avg_fn is not None:
            raise AssertionError("Only one of avg_fn and multi_avg_fn should be provided")
        if current_trace() is not None:
            raise RuntimeError("AveragedModel(model) copies the model: build it outside the traced function")
        self.module = deepcopy(model)
        if device is not None:
            to_device(self.module, device)
        self.register_buffer("n_averaged", Buffer(np.array(0, np.int64), dtype=dt.int64, device=device))
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = use_buffers

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def _first_call(self) -> Tensor | bool:
        """Whether `n_averaged` is 0: a Python bool eagerly, a traced boolean when the count is an
        input of the running trace (the copy then becomes a select)."""
        n, tr = self.n_averaged, current_trace()
        if tr is None:
            return int(n) == 0
        if n.is_traced or id(n) in tr.leaves:
            return ops.eq(n, 0)
        raise RuntimeError("AveragedModel.update_parameters inside a traced function needs the AveragedModel as an "
                           "argument of that function (its average and n_averaged are state the step updates); "
                           "one captured from the enclosing scope would have its count baked in")

    def update_parameters(self, model: Any) -> None:
        """Average `model`'s current parameters (and buffers, with `use_buffers`) into this copy."""
        with no_grad():
            self._update(model)

    def _update(self, model: Any) -> None:
        if self.use_buffers:
            mine = [*parameters(self.module), *buffers(self.module)]
            theirs = [*parameters(model), *buffers(model)]
        else:
            mine, theirs = list(parameters(self.module)), list(parameters(model))
        pairs = [(p, _to(q.detach(), p.device)) for p, q in zip(mine, theirs)]  # strict=False, as torch
        first = self._first_call()
        n = self.n_averaged
        if first is True:
            for p_avg, p_model in pairs:
                _write(p_avg, p_model)
        if first is not True:
            if self.multi_avg_fn is not None or self.avg_fn is None:
                groups: dict[tuple[str, str], list[tuple[Tensor, Tensor]]] = {}
                for p_avg, p_model in pairs:
                    groups.setdefault((str(p_avg.device), p_avg.dtype.name), []).append((p_avg, p_model))
                for group in groups.values():
                    if self.multi_avg_fn is not None:
                        dev = group[0][0].device
                        self.multi_avg_fn([a for a, _ in group], [m for _, m in group], _to(n, dev))
                    else:  # torch's CPU path: the running mean tensor by tensor
                        avg_fn = get_swa_avg_fn()
                        for p_avg, p_model in group:
                            _write(p_avg, avg_fn(p_avg, p_model, _to(n, p_avg.device)))
            else:
                for p_avg, p_model in pairs:
                    _write(p_avg, self.avg_fn(p_avg.detach(), p_model, _to(n, p_avg.device)))
            if first is not False:  # traced: the first call's copy, as a select on the count
                for p_avg, p_model in pairs:
                    _write(p_avg, ops.where(first, ops.cast(p_model, p_avg.dtype), p_avg))
        if not self.use_buffers:  # the buffers follow the source model
            for b_swa, b_model in zip(buffers(self.module), buffers(model), strict=True):
                _write(b_swa, _to(b_model.detach(), b_swa.device))
        assign(n, ops.add(n, 1))


def update_bn(loader: Iterable[Any], model: Any, device: Any = None) -> None:
    """Recompute the batch norm running statistics of `model` with one pass over `loader` (each batch a
    tensor, or a list/tuple whose first element is the input): statistics reset, momentum None (the
    cumulative average, weighting every batch equally), in training mode; afterwards the momenta are
    restored and the model is put back in its mode (for a plain-object model without `training`, each
    module back in its own)."""
    momenta: dict[_BatchNorm, float | None] = {}
    for _, m in named_modules(model):
        if isinstance(m, _BatchNorm):
            m.reset_running_stats()
            momenta[m] = m.momentum
    if not momenta:
        return
    was_training = getattr(model, "training", None)
    modes = None if isinstance(was_training, bool) else [(m, m.training) for _, m in named_modules(model)]
    train(model, True)
    for m in momenta:
        m.momentum = None
    with no_grad():
        for input in loader:
            if isinstance(input, (list, tuple)):
                input = input[0]
            if device is not None:
                input = input.to(device)
            model(input)
    for m, momentum in momenta.items():
        m.momentum = momentum
    if modes is None:
        train(model, was_training)
    else:
        for m, mode in modes:
            m.training = mode


class SWALR(LRScheduler):
    """torch's SWALR: anneal each group's lr to its `swa_lr` (one for all groups, or a list, one per
    group) over `anneal_epochs` steps, by cosine ('cos') or linearly ('linear'), then hold it there.
    Its arithmetic is torch's chainable form, so the rates match torch's to the last bit."""

    def __init__(self, optimizer: Optimizer, swa_lr: float | list[float], anneal_epochs: int = 10,
                 anneal_strategy: Literal["cos", "linear"] = "cos", last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        swa_lrs = _format_param("swa_lr", optimizer, swa_lr)
        for lr, group in zip(swa_lrs, optimizer.param_groups, strict=True):
            group["swa_lr"] = lr
        if anneal_strategy not in ["cos", "linear"]:
            raise ValueError(f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}")
        self._set_anneal_func(anneal_strategy)
        if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
            raise ValueError(f"anneal_epochs must be equal or greater than 0, got {anneal_epochs}")
        self.anneal_epochs = anneal_epochs
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _linear_anneal(t: float) -> float:
        return t

    @staticmethod
    def _cosine_anneal(t: float) -> float:
        return (1 - math.cos(math.pi * t)) / 2

    @staticmethod
    def _get_initial_lr(lr: float, swa_lr: float, alpha: float) -> float:
        if alpha == 1:
            return swa_lr
        return (lr - alpha * swa_lr) / (1 - alpha)

    def get_lr(self) -> list[float]:
        """The next rates: the previous step's starting lr recovered from the current one, then
        interpolated towards swa_lr (torch's formula)."""
        _warn_get_lr_called_within_step(self)
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        prev_t = max(0, min(1, (step - 1) / max(1, self.anneal_epochs)))
        prev_alpha = self.anneal_func(prev_t)
        prev_lrs = [self._get_initial_lr(group["lr"], group["swa_lr"], prev_alpha)
                    for group in self.optimizer.param_groups]
        t = max(0, min(1, step / max(1, self.anneal_epochs)))
        alpha = self.anneal_func(t)
        return [group["swa_lr"] * alpha + lr * (1 - alpha)
                for group, lr in zip(self.optimizer.param_groups, prev_lrs, strict=True)]

    def _set_anneal_func(self, anneal_strategy: Literal["cos", "linear"]) -> None:
        self._anneal_strategy = anneal_strategy
        self.anneal_func = self._cosine_anneal if anneal_strategy == "cos" else self._linear_anneal

    def state_dict(self) -> dict[str, Any]:
        """The attributes but the optimizer and the anneal function (restored from its name)."""
        return {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "anneal_func")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
        self._set_anneal_func(self._anneal_strategy)

