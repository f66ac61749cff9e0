"""Host steps: ops that are no kernel but run between launches on the graph's torch storage.

The factorizations (`svd`, `eigh`, `qr`, `pinv`, `eig`, `ldl_factor`, `ldl_solve`) and `bitcast` run their
reference rule (numpy.linalg, LAPACK) on host copies of the operands and copy the packed factors back
(`reference_step`): LAPACK on the CPU, as torch runs small factorizations on the CPU too (MAGMA's hybrid path).

`all_reduce` is communication, not compute: the runtime hands its step the operand's and the
result's storage, the step copies one into the other and reduces the result in place through
the process group `avalon.distributed` installed (`avalon.ir.reference.collective`):
`torch.distributed.all_reduce` on the tensor, on its device (NCCL on CUDA, gloo on the CPU).
With no process group, or one process, the step is the copy alone. `all_gather`'s step gathers
the operand's storage into the result's (`all_gather_tensor_`), a copy on one process.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from avalon.ir.core import Op
from avalon.ir.reference import evaluate
from avalon.ir.reference.collective import collective
from avalon.ir.types import TensorType


def _as(x: torch.Tensor, t: TensorType) -> torch.Tensor:
    """Storage handed to a launch (a flat buffer or arena view, or an input) seen as type `t`."""
    if tuple(x.shape) == t.shape and all(s == e for s, e, n in zip(x.stride(), t.strides(), t.shape) if n > 1):
        return x
    return torch.as_strided(x, t.shape, t.strides(), x.storage_offset())


def all_reduce_step(op: Op) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The host step of one `all_reduce` op: (operand storage, result storage) -> None."""
    xt, yt = op.operands[0].type, op.results[0].type
    reduction, group = op.attrs["reduction"], op.attrs["group"]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        xv, yv = _as(x, xt), _as(y, yt)
        if yv.data_ptr() != xv.data_ptr():
            yv.copy_(xv)
        hook = collective()
        if hook is None or hook.world_size(group) == 1 or yt.numel == 0:
            return
        if yv.is_contiguous():
            hook.all_reduce_tensor_(yv, reduction, group)
        else:
            tmp = yv.contiguous()
            hook.all_reduce_tensor_(tmp, reduction, group)
            yv.copy_(tmp)
    return step


def all_gather_step(op: Op) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The host step of one `all_gather` op: (operand storage, result storage) -> None."""
    xt, yt = op.operands[0].type, op.results[0].type
    n, group = op.attrs["world_size"], op.attrs["group"]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        xv, yv = _as(x, xt), _as(y, yt)
        hook = collective()
        have = 1 if hook is None else hook.world_size(group)
        if have != n:
            raise RuntimeError(f"all_gather: traced for a group of {n} process(es), run in one of {have}")
        if n == 1:
            if yv.data_ptr() != xv.data_ptr():
                yv.copy_(xv)
            return
        if yt.numel == 0:
            return
        out = yv if yv.is_contiguous() else torch.empty(yt.shape, dtype=yv.dtype, device=yv.device)
        hook.all_gather_tensor_(out, xv.contiguous(), group)
        if out is not yv:
            yv.copy_(out)
    return step


def reference_step(op: Op) -> Callable[..., None]:
    """The host step of an op the host computes (a factorization): its reference rule on host copies of
    the operands (one or several: ldl_solve's LD, pivots and B), the result copied into the result's storage."""
    xts, yt = [v.type for v in op.operands], op.results[0].type
    name, attrs = op.name, dict(op.attrs)

    def step(*storage: torch.Tensor) -> None:
        *xs, y = storage
        hosts = [np.ascontiguousarray(_as(x, xt).detach().cpu().numpy()) for x, xt in zip(xs, xts)]
        out = evaluate(name, attrs, hosts, yt)
        _as(y, yt).copy_(torch.from_numpy(np.ascontiguousarray(out)))
    return step
