"""`torch.nn.parallel`'s wrappers, so training scripts port with their `model = DDP(model, ...)` line.

`DistributedDataParallel` is what torch's is, written with Avalon's gradients as values: at
construction every process takes rank 0's parameters and buffers; in `forward` the wrapped module
reads each parameter through an identity whose gradient is the mean of that gradient over the
processes (`_AverageGradient`, an `autograd.Function` whose backward is one `all_reduce` op), so
`av.value_and_grad(loss)(ddp_model, ...)` returns the averaged gradients that torch's hooks leave in
`.grad`, and a compiled step carries the all-reduces in its IR (the `bucket-all-reduce` pass fuses
them). With `broadcast_buffers` (torch's default) the buffers are rank 0's at the start of every
forward, as torch broadcasts them. Under `no_sync()` the gradients are this rank's own (gradient
accumulation: see `no_sync`). Without a process group, or in a group of one, it is the module.

`DataParallel` (one process over the GPUs of a machine in torch) is the module: Avalon runs a model
on one device. Both keep torch's `module.` prefix in `state_dict`, so checkpoints saved from a wrapped
torch model load.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from ..autograd import Function
from ..ir.reference.collective import collective
from .module import Module, named_buffers, named_parameters


def _world() -> int:
    hook = collective()
    return 1 if hook is None else int(hook.world_size("world"))


class _AverageGradient(Function):
    """The identity, whose gradient is averaged over the processes."""

    @staticmethod
    def forward(ctx: Any, x: Any) -> Any:
        return x

    @staticmethod
    def backward(ctx: Any, g: Any) -> Any:
        from ..distributed import all_reduce
        return all_reduce(g, "mean")


class DistributedDataParallel(Module):
    """torch.nn.parallel.DistributedDataParallel over the default group (module docstring). Device and
    bucketing arguments are accepted for porting (buckets are the `bucket-all-reduce` pass's)."""

    def __init__(self, module: Any, device_ids: Any = None, output_device: Any = None, dim: int = 0,
                 broadcast_buffers: bool = True, process_group: Any = None, bucket_cap_mb: Any = None,
                 find_unused_parameters: bool = False, check_reduction: bool = False,
                 gradient_as_bucket_view: bool = False, static_graph: bool = False, **kwargs: Any) -> None:
        super().__init__()
        if process_group is not None:
            raise NotImplementedError("DistributedDataParallel: only the default process group is supported "
                                      "(avalon.distributed.init()); process_group must be None")
        if not any(p.requires_grad for _, p in named_parameters(module)):
            raise RuntimeError("DistributedDataParallel is not needed when a module doesn't have any parameter "
                               "that requires a gradient.")  # torch's words
        self.module = module
        self.broadcast_buffers = bool(broadcast_buffers)
        self.device_ids, self.output_device, self.dim = device_ids, output_device, dim
        self.find_unused_parameters = bool(find_unused_parameters)
        self.require_backward_grad_sync = True  # torch's flag, which `no_sync` clears
        self._unsynced = False  # a forward ran under no_sync since the last synchronized one
        from ..distributed import broadcast_parameters, is_initialized, require_group
        require_group("DistributedDataParallel")  # under a launcher, the group must be up (torch's error)
        if is_initialized():
            broadcast_parameters(module)

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        if _world() == 1:
            return self.module(*inputs, **kwargs)
        if self.broadcast_buffers:
            self._broadcast_buffers()
        if not self.require_backward_grad_sync:  # under no_sync: this rank's own gradients
            self._unsynced = True
            return self.module(*inputs, **kwargs)
        if self._unsynced and self.training:  # (an evaluation forward is not a training step)
            self._unsynced = False
            warnings.warn("DistributedDataParallel: a synchronized forward after forwards under no_sync(); torch "
                          "averages the .grad accumulated under no_sync at this backward, but Avalon's gradients "
                          "are values: this step averages its own gradient only, and adding the unsynchronized "
                          "ones to it leaves the ranks' parameters different. Run every accumulation step under "
                          "no_sync() and average their sum once with avalon.distributed.all_reduce(grads).",
                          RuntimeWarning, stacklevel=2)
        from ..func import functional_call
        params = {name: _AverageGradient.apply(p) if p.requires_grad else p
                  for name, p in named_parameters(self.module)}
        return functional_call(self.module, params, inputs, kwargs)

    def _broadcast_buffers(self) -> None:
        """Rank 0's buffers on every process, every dtype bit for bit (an attention mask's -inf, a bool
        flag): `avalon.distributed.broadcast`, an `all_gather` op and rank 0's rows when traced."""
        from ..distributed import broadcast
        for _, b in named_buffers(self.module):
            broadcast(b, 0)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """torch's context for gradient accumulation without communication: the gradients of the forwards
        run inside are this rank's own (no all_reduce op). Avalon's gradients are values, so the port of
        torch's accumulation sums the micro-batches' gradients, each computed under `no_sync`, and
        averages the sum once, which is what torch's synchronized backward does to the accumulated
        `.grad` (a synchronized forward right after unsynchronized ones warns: it would average its own
        gradient only)::

            with ddp.no_sync():
                _, g = step(ddp, x, y)
            acc = g if acc is None else {k: acc[k] + g[k] for k in acc}
            ...
            opt.step(avalon.distributed.all_reduce(acc))   # torch's .grad after the last backward
        """
        old = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old


class DataParallel(Module):
    """torch.nn.DataParallel: the module on one device (module docstring), under `module.`."""

    def __init__(self, module: Any, device_ids: Any = None, output_device: Any = None, dim: int = 0) -> None:
        super().__init__()
        self.module = module
        self.device_ids, self.output_device, self.dim = device_ids, output_device, dim

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        return self.module(*inputs, **kwargs)


__all__ = ["DataParallel", "DistributedDataParallel"]
