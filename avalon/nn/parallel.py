"""`torch.nn.parallel`'s wrappers, so training scripts port with their `model = DDP(model, ...)` line.

`DistributedDataParallel` is what torch's is, written with Avalon's gradients as values: at
construction every process takes rank 0's parameters and buffers; in `forward` the wrapped module
reads each parameter through an identity whose gradient is the mean of that gradient over the
processes (`_AverageGradient`, an `autograd.Function` whose backward is one `all_reduce` op), so
`av.value_and_grad(loss)(ddp_model, ...)` returns the averaged gradients that torch's hooks leave in
`.grad`, and a compiled step carries the all-reduces in its IR (the `bucket-all-reduce` pass fuses
them). With `broadcast_buffers` (torch's default) the buffers are rank 0's at the start of every
forward, as torch broadcasts them. Without a process group, or in a group of one, it is the module.

`DataParallel` (one process over the GPUs of a machine in torch) is the module: Avalon runs a model
on one device. Both keep torch's `module.` prefix in `state_dict`, so checkpoints saved from a wrapped
torch model load.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .. import ops
from ..autograd import Function
from ..ir.reference.collective import collective
from ..trace import assign
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
        self.module = module
        self.broadcast_buffers = bool(broadcast_buffers)
        self.device_ids, self.output_device, self.dim = device_ids, output_device, dim
        from ..distributed import broadcast_parameters, is_initialized
        if is_initialized():
            broadcast_parameters(module)

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        if _world() == 1:
            return self.module(*inputs, **kwargs)
        if self.broadcast_buffers:
            self._broadcast_buffers()
        from ..func import functional_call
        params = {name: _AverageGradient.apply(p) for name, p in named_parameters(self.module)}
        return functional_call(self.module, params, inputs, kwargs)

    def _broadcast_buffers(self) -> None:
        """Rank 0's buffers on every process: a sum over the processes of the buffer on rank 0 and
        zeros elsewhere (one all_reduce op each, traced like the gradients')."""
        from ..distributed import all_reduce, rank
        keep = 1 if rank() == 0 else 0
        for _, b in named_buffers(self.module):
            if b.dtype.is_float or b.dtype.is_int:
                assign(b, all_reduce(ops.mul(b, keep), "sum"))

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """torch's gradient accumulation without communication has no equivalent here (the averaging is
        part of the traced gradient): accumulate the gradients of the unsynchronized steps of the bare
        module (`ddp.module`) and average them once with `avalon.distributed.all_reduce`."""
        raise NotImplementedError("DistributedDataParallel.no_sync: differentiate `ddp.module` for the "
                                  "accumulation steps and average the summed gradients once with "
                                  "avalon.distributed.all_reduce(grads)")
        yield  # (unreachable: a generator, as a context manager must be)


class DataParallel(Module):
    """torch.nn.DataParallel: the module on one device (module docstring), under `module.`."""

    def __init__(self, module: Any, device_ids: Any = None, output_device: Any = None, dim: int = 0) -> None:
        super().__init__()
        self.module = module
        self.device_ids, self.output_device, self.dim = device_ids, output_device, dim

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        return self.module(*inputs, **kwargs)


__all__ = ["DataParallel", "DistributedDataParallel"]
