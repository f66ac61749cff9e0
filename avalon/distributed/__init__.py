"""Data parallelism over torch.distributed, launched with torchrun (DESIGN.md §1b).

    import avalon.distributed as dist
    dist.init()                                    # gloo on CPUs, NCCL on CUDA; reads torchrun's environment
    history = av.fit(model, X, Y, loss_fn)         # each rank trains on its shard; gradients averaged
    dist.save(model, "ckpt.safetensors")           # rank 0 writes, the others wait

`av.fit` under an initialized group does everything (see `avalon.train`). Custom loops use
`all_reduce(grads)`: inside a traced or compiled step it records one `all_reduce` op per tensor (the
`bucket-all-reduce` pass fuses them into a few flat buffers), so the communication is in the IR
between the gradient and the optimizer update; eagerly it reduces all tensors of a dtype in one
collective. Torch is communication only: no torch compute runs on Avalon's path.

For batch norm over the global batch, convert the model with `nn.SyncBatchNorm.convert_sync_batchnorm`
(its statistics are one `all_reduce` op per layer); for each rank's part of a dataset in a custom
loop, `avalon.utils.data.DistributedSampler` (torch's, `set_epoch` every epoch).

torch.distributed's functional surface is here under torch's names (`avalon.distributed.collectives`):
`ReduceOp`, `init_process_group`, `destroy_process_group`, `get_rank`, `get_world_size`, `barrier`,
`broadcast`, `all_gather`, `all_gather_into_tensor`, `reduce_scatter_tensor`, `reduce`, `gather`, `scatter`,
the `*_object` functions; `avalon.distributed.nn.all_gather` (differentiable, the CLIP/SimCLR feature gather) and
`avalon.distributed.optim.ZeroRedundancyOptimizer`. Traced, each is `all_gather`/`all_reduce` ops.

`all_reduce` has two forms. torch's: `all_reduce(t)` or `all_reduce(t, op=ReduceOp.X)` on one Tensor
reduces it IN PLACE, SUM by default, and returns None. Avalon's: `all_reduce(tree, op="mean")` on a
tree (a grads dict, a list) or with an op string ("mean", "sum") returns a NEW tree, the MEAN by
default. So `dist.all_reduce(grads)` averages gradients, as before, while `dist.all_reduce(t)` on a
tensor sums it into `t`, as torch's does.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from avalon.compiler.gradients import Grads
from avalon.ops.core import bind
from avalon.tensor import Tensor, as_array
from avalon.trace import assign
from avalon.tree import named_tensors

from .checkpoint import load, save
from .collectives import (
    ReduceOp,
    all_gather,
    all_gather_into_tensor,
    all_gather_object,
    all_reduce_,
    broadcast,
    broadcast_object_list,
    destroy_process_group,
    gather,
    gather_object,
    get_backend,
    get_rank,
    get_world_size,
    init_process_group,
    is_available,
    reduce,
    reduce_scatter_tensor,
    scatter,
)
from .collectives import barrier as _torch_barrier
from .group import (
    DistributedError,
    broadcast_arrays,
    collective,
    init,
    is_initialized,
    local_rank,
    rank,
    require_group,
    shutdown,
    timeout_s,
    world_size,
)

__all__ = ["DistributedError", "ReduceOp", "all_gather", "all_gather_into_tensor", "all_gather_object", "all_reduce",
           "barrier", "broadcast", "broadcast_object_list", "broadcast_parameters", "destroy_process_group",
           "gather", "gather_object", "get_backend", "get_rank", "get_world_size", "init", "init_process_group",
           "is_available", "is_initialized", "load", "local_rank", "rank", "reduce", "reduce_scatter_tensor", "save",
           "scatter", "shutdown", "timeout_s", "world_size"]

_OPS = ("mean", "sum")


def _leaves(tree: Any, out: list) -> Any:
    """The structure of `tree` with each leaf replaced by its index in `out`."""
    if isinstance(tree, Mapping):
        return {k: _leaves(v, out) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_leaves(v, out) for v in tree)
    if tree is None:
        return None
    out.append(tree)
    return len(out) - 1


def _rebuild(shape: Any, values: list, like: Any = None) -> Any:
    """The tree again, with `values` as leaves; av.grad's `Grads` stays `Grads` (the tensor of each
    name, which optimizers built on bare tensors match gradients by)."""
    if isinstance(like, Grads):
        return Grads(_rebuild(shape, values), like.params)
    if isinstance(shape, Mapping):
        return {k: _rebuild(v, values) for k, v in shape.items()}
    if isinstance(shape, (list, tuple)):
        return type(shape)(_rebuild(v, values) for v in shape)
    return None if shape is None else values[shape]


_UNSET: Any = object()


def barrier(group: Any = None, async_op: bool = False, device_ids: Any = None) -> Any:
    """Wait until every process arrives (torch.distributed.barrier), at most the group's timeout; on
    gloo a rank that does not arrive is named in the error. Nothing to wait for in one process."""
    return _torch_barrier(group, async_op, device_ids)


def all_reduce(tree: Any, op: Any = _UNSET, group: Any = None, async_op: bool = False) -> Any:
    """Two forms (see the module docstring).

    torch's, `all_reduce(tensor)` / `all_reduce(tensor, op=ReduceOp.SUM)`: one Tensor reduced over the
    processes IN PLACE (SUM by default), returning None (a completed work object with `async_op`).

    Avalon's, `all_reduce(tree, op="mean")`: the mean (or sum) over all processes of every tensor in
    `tree` (an array, or dicts, lists and tuples of Tensors and arrays: a grads dict; or a Tensor with
    an op string), as a NEW tree of Tensors of the same structure.

    Traced (inside `av.compile`, `av.grad`): an `all_reduce` op per tensor, fused into buckets by
    the `bucket-all-reduce` pass. Eager: one collective per dtype. One process: the values as
    they are."""
    if isinstance(tree, Tensor) and (op is _UNSET or isinstance(op, ReduceOp) or group is not None or async_op):
        return all_reduce_(tree, ReduceOp.SUM if op is _UNSET else op, group, async_op)
    require_group("avalon.distributed.all_reduce")
    if op is _UNSET:
        op = "mean"
    if isinstance(op, ReduceOp):
        op = op.value
    if op not in _OPS:
        raise ValueError(f"all_reduce: op must be one of {', '.join(_OPS)}, got {op!r}")
    leaves: list = []
    shape = _leaves(tree, leaves)
    tensors = [x if isinstance(x, Tensor) else Tensor(as_array(x)) for x in leaves]
    if any(t.is_traced for t in tensors):
        return _rebuild(shape, [bind("all_reduce", t, reduction=op, group="world") for t in tensors], tree)
    hook = collective() if is_initialized() else None
    if hook is None or world_size() == 1:
        return _rebuild(shape, tensors, tree)
    out: list[Tensor | None] = [None] * len(tensors)
    by_dtype: dict[Any, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    for dtype, idx in by_dtype.items():
        arrays = [np.asarray(as_array(tensors[i], dtype)) for i in idx]
        flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
        reduced = hook.all_reduce_array(flat, op, "world")
        pos = 0
        for i, a in zip(idx, arrays):
            piece = reduced[pos:pos + a.size].reshape(a.shape)
            pos += a.size
            res = Tensor(piece, dtype=dtype)
            out[i] = res if tensors[i].device == res.device else res.to(tensors[i].device)
    return _rebuild(shape, out, tree)


def broadcast_parameters(model: Any, src: int = 0) -> None:
    """Give every process rank `src`'s parameters and buffers (in place), as `av.fit` does first."""
    if world_size() == 1:
        return
    named = list(named_tensors(model))
    arrays = broadcast_arrays([np.asarray(as_array(t)) for _, t in named], src)
    for (_, t), a in zip(named, arrays):
        assign(t, Tensor(a, dtype=t.dtype))


from . import nn, optim  # noqa: E402  (torch.distributed.nn and .optim; after the names they use)
