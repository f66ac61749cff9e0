"""torch.distributed.nn.functional: collectives that are differentiable, returning new tensors.

    feats = torch.cat(dist.nn.all_gather(z), dim=0)   # every rank's features; gradients flow back

`all_gather(tensor)` is one `all_gather` op (eagerly through the process group) split into each
rank's rows; its gradient is torch's (the sum over ranks of this rank's rows of the cotangents: an
all_reduce and this rank's slice, the op's VJP rule), so a contrastive loss over the gathered
features (CLIP, SimCLR) trains as under torch. `all_reduce(tensor, op=ReduceOp.SUM)` returns the
reduced tensor; its gradient is the all_reduce of the cotangent, as torch's.
"""
from __future__ import annotations

from typing import Any

from avalon.ops import core as ops
from avalon.ops.core import bind
from avalon.tensor import Tensor

from ..collectives import ReduceOp, _check_group, _gather, _n, _rows

__all__ = ["all_gather", "all_reduce"]


def all_gather(tensor: Tensor, group: Any = None) -> tuple[Tensor, ...]:
    """Every rank's `tensor` (same shape on every rank), in rank order, differentiable."""
    _check_group(group, "nn.all_gather")
    if not isinstance(tensor, Tensor):
        tensor = Tensor(tensor)
    whole = _gather(tensor)
    rows = 1 if tensor.ndim == 0 else tensor.shape[0]
    return tuple(ops.reshape(_rows(whole, r, rows), tensor.shape) for r in range(_n()))


def all_reduce(tensor: Tensor, op: Any = ReduceOp.SUM, group: Any = None) -> Tensor:
    """The sum (or mean, ReduceOp.AVG) of `tensor` over the ranks, as a new tensor, differentiable."""
    _check_group(group, "nn.all_reduce")
    op = ReduceOp(op)
    if op not in (ReduceOp.SUM, ReduceOp.AVG):
        raise NotImplementedError(f"avalon.distributed.nn.all_reduce: {op.name}; SUM or AVG")
    return bind("all_reduce", tensor, reduction=op.value, group="world")
