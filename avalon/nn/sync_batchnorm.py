"""`nn.SyncBatchNorm`: batch norm whose training statistics are those of the global batch, the
union of every process's batch, as torch's SyncBatchNorm under DistributedDataParallel.

The synchronization is one `all_reduce` op (reduction "sum") in the IR, so a traced, compiled or
differentiated step carries it like the gradients' all-reduce, and autodiff needs no special rule:
the vjp of an all-reduced sum is the all-reduced sum of the cotangents, which is exactly the
all-reduce of the backward terms (torch's `sum_dy`, `sum_dy_xmu`) that SyncBatchNorm's backward
does by hand. Each process sends, per channel, n_r * mean_r and M2_r + n_r * mean_r**2 (its batch's
sum and sum of squares, with M2_r the centered sum of squares computed in the input's precision),
plus its count n_r, in float64: the global mean and variance are then formed in float64, so the
E[x^2] - E[x]^2 cancellation costs nothing in float32 training even for channels whose mean is far
larger than their spread. Counts may differ per process (a short last batch, or no samples at all).

Without a process group (none initialized, or a group of one) it is `BatchNorm`: no collective is
traced. Evaluation mode is batch norm's evaluation with the running statistics, on every process.
"""
from __future__ import annotations

from typing import Any

from .. import ops
from ..ir import dtypes as dt
from ..ir.reference.collective import collective
from ..tensor import Tensor
from ..trace import assign
from . import functional as F
from .layers import _BatchNorm


def _group_name(process_group: Any) -> str:
    """Avalon's name of the process group: only the world group exists (torch's default group)."""
    if process_group is None or process_group == "world":
        return "world"
    try:  # torch's ProcessGroup object for the world group is the default one as well
        import torch.distributed as tdist
        if tdist.is_available() and tdist.is_initialized() and process_group is tdist.group.WORLD:
            return "world"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    raise ValueError(f"SyncBatchNorm: process_group must be None or 'world' (the default group of all processes), "
                     f"got {process_group!r}; Avalon's collectives have no sub-groups")


def group_size(group: str = "world") -> int:
    """The number of processes the statistics are synchronized over (1: plain batch norm). A group
    made with torch.distributed directly counts too (`avalon.distributed` installs its hook then)."""
    hook = collective()
    if hook is None:
        from avalon.distributed.group import is_initialized
        if is_initialized():  # installs the hook for a group made with torch directly
            hook = collective()
    return 1 if hook is None else int(hook.world_size(group))


def sync_batch_norm(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Any, bias: Any,
                    momentum: float | Tensor, eps: float, group: str = "world") -> Tensor:
    """Training-mode batch norm over the global batch of `group` (see the module's docstring);
    updates the running statistics, when given, with the global mean and unbiased variance."""
    c = x.shape[1]
    axes = [0] + list(range(2, x.ndim))
    bshape = (1, c) + (1,) * (x.ndim - 2)
    n_local = x.numel() // c
    f64 = dt.float64
    if n_local > 0:
        mean_r = ops.mean(x, axes)
        centered = ops.sub(x, ops.reshape(mean_r, bshape))
        m2_r = ops.sum(ops.mul(centered, centered), axes)
        mean64 = ops.cast(mean_r, f64)
        s1 = ops.mul(mean64, float(n_local))
        s2 = ops.add(ops.cast(m2_r, f64), ops.mul(ops.mul(mean64, mean64), float(n_local)))
    else:  # this process has no samples: it still takes part in the collective
        s1 = s2 = ops.full((c,), 0.0, f64, device=x.device)
    count = ops.full((1,), float(n_local), f64, device=x.device)
    total = ops.bind("all_reduce", ops.concat([s1, s2, count]), reduction="sum", group=group)
    n = total[2 * c]
    if not n.is_traced and float(n.numpy()) <= 1:
        raise ValueError(f"SyncBatchNorm: expected more than 1 value per channel over all processes when training, "
                         f"got {int(n.numpy())} (this process's input: {x.shape})")
    if n.is_traced:  # the global count is known when the graph runs: checked then (a ValueCheckError)
        n = ops.check_values(n, ops.gt(n, 1.0), "SyncBatchNorm: expected more than 1 value per channel over all "
                             f"processes when training (this process's input: {x.shape})")
    mean = ops.div(total[:c], n)
    var = ops.maximum(ops.sub(ops.div(total[c:2 * c], n), ops.mul(mean, mean)), 0.0)  # biased, >= 0
    if running_mean is not None or running_var is not None:
        keep = 1.0 - momentum if not isinstance(momentum, Tensor) else ops.sub(1.0, momentum)
        if running_mean is not None:
            new = ops.add(ops.mul(running_mean, keep), ops.mul(ops.cast(mean, running_mean.dtype), momentum))
            assign(running_mean, ops.cast(new, running_mean.dtype))
        if running_var is not None:
            unbiased = ops.cast(ops.div(ops.mul(var, n), ops.sub(n, 1.0)), running_var.dtype)
            new = ops.add(ops.mul(running_var, keep), ops.mul(unbiased, momentum))
            assign(running_var, ops.cast(new, running_var.dtype))
    invstd = ops.cast(ops.rsqrt(ops.add(var, eps)), x.dtype)
    y = ops.mul(ops.sub(x, ops.reshape(ops.cast(mean, x.dtype), bshape)), ops.reshape(invstd, bshape))
    return F._affine(y, weight, bias, bshape)


class SyncBatchNorm(_BatchNorm):
    """torch.nn.SyncBatchNorm: batch norm over (N, C, ...) input whose training mode normalizes with
    the mean and variance of the global batch (all processes' batches together) and updates the
    running statistics with them, identically on every process; an `all_reduce` op in the IR (see
    the module's docstring). Evaluation mode, and training outside a process group of more than
    one process, are `BatchNorm`'s. `process_group`: None or "world" (the only group Avalon has)."""

    _dims = tuple(range(2, 33))  # (N, C, ...) of any rank, as torch's

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Any = None, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group
        _group_name(process_group)  # refuse a group Avalon cannot reduce over now, not at the first call

    def forward(self, input: Any) -> Tensor:
        x = F._t(input)
        if x.ndim < 2:
            raise ValueError(f"SyncBatchNorm: expected at least 2D input (got {x.ndim}D input of shape {x.shape})")
        if x.shape[1] == 0:
            raise ValueError("SyncBatchNorm: number of input channels should be non-zero")
        if x.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm({self.num_features}): input {x.shape} has {x.shape[1]} channels")
        group = _group_name(self.process_group)
        if not (self.training and group_size(group) > 1):
            return super().forward(x)  # BatchNorm's (eval mode: the running statistics, as torch's)
        factor: Any = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            count = ops.add(self.num_batches_tracked, 1)
            assign(self.num_batches_tracked, count)
            if self.momentum is None:
                factor = ops.div(1.0, ops.cast(count, x.dtype))
        running = self.track_running_stats
        return sync_batch_norm(x, self.running_mean if running else None, self.running_var if running else None,
                               self.weight, self.bias, factor, self.eps, group)

    @classmethod
    def convert_sync_batchnorm(cls, module: Any, process_group: Any = None) -> Any:
        """Replace every BatchNorm1d/2d inside `module` (attributes, lists, tuples, dicts, the
        containers) by a SyncBatchNorm holding the same parameter and buffer tensors and training
        flag; returns the converted module (a new object when `module` itself is a batch norm)."""
        return _convert(module, process_group, {})

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.process_group is None else f", process_group={self.process_group!r}")


def _converted(bn: _BatchNorm, process_group: Any) -> SyncBatchNorm:
    """A SyncBatchNorm sharing `bn`'s tensors (so optimizers built on them keep working), as torch's."""
    out = SyncBatchNorm.__new__(SyncBatchNorm)
    for k, v in vars(bn).items():
        object.__setattr__(out, k, v)
    out.process_group = process_group
    return out


def _convert(obj: Any, process_group: Any, done: dict[int, Any]) -> Any:
    from .. import tree
    if id(obj) in done:  # shared layers stay shared; cycles end
        return done[id(obj)]
    if isinstance(obj, _BatchNorm) and not isinstance(obj, SyncBatchNorm):
        done[id(obj)] = new = _converted(obj, process_group)
        return new
    done[id(obj)] = obj
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            obj[i] = _convert(v, process_group, done)
    elif isinstance(obj, dict):
        for k, v in list(obj.items()):
            obj[k] = _convert(v, process_group, done)
    elif isinstance(obj, tuple):
        items = [_convert(v, process_group, done) for v in obj]
        if any(a is not b for a, b in zip(items, obj)):
            new_tuple = type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
            done[id(obj)] = new_tuple
            return new_tuple
    elif tree.is_model(obj):
        for k, v in list(vars(obj).items()):
            if k.startswith("__"):
                continue
            new = _convert(v, process_group, done)
            if new is not v:
                object.__setattr__(obj, k, new)
    return obj


__all__ = ["SyncBatchNorm"]
