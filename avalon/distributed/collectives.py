"""torch.distributed's functional surface, named as torch's, so `import avalon.distributed as dist` ports.

    dist.init_process_group("gloo")               # torchrun's environment (or rank=, world_size=, tcp://)
    dist.all_reduce(t)                            # t summed over the ranks, IN PLACE (torch's default SUM)
    dist.broadcast(t, src=0)                      # in place
    dist.all_gather(tensor_list, t)               # tensor_list[r] = rank r's t
    dist.all_gather_into_tensor(out, t)           # out = cat of every rank's t along dim 0
    dist.reduce_scatter_tensor(out, t)            # out = this rank's rows of the sum of every rank's t
    feats = dist.nn.all_gather(z)                 # differentiable: a tuple of every rank's z

Inside a traced or compiled function every call is IR: `all_gather` and `all_reduce` ops (a broadcast is
an all_gather and this rank's pick of rank `src`'s rows; a reduce-scatter is an all_reduce and this rank's
slice), written to the tensors given with `avalon.trace.assign`. Eagerly the same ops run their reference
rules, which call torch.distributed through the process group (`avalon.distributed.group`); torch does
the communication only. With no group (or one process) every call is the identity.

Like torch's, these are not differentiable: what `all_gather`, `all_gather_into_tensor`, `gather`,
`scatter` and `reduce_scatter_tensor` write carries no gradient (`avalon.distributed.nn` has the differentiable
gather; open_clip's idiom, `all_gather` then this rank's own features put back in its slot, trains
through this rank's rows only, as under torch).

Only the default group (`group=None`) exists. `async_op=True` returns a completed work object: the
collectives here are synchronous. MIN, MAX, PRODUCT and the bitwise reductions run eagerly only (the
IR's all_reduce sums or averages).
"""
from __future__ import annotations

import datetime
import enum
import os
from typing import Any

import numpy as np

from avalon.ops import core as ops
from avalon.ops.core import bind
from avalon.tensor import Tensor, as_array
from avalon.trace import assign, current_trace

from .group import _dist, _failed, _nccl, collective, init, is_initialized, require_group, shutdown, world_size
from .group import barrier as _barrier
from .group import rank as _rank


class ReduceOp(str, enum.Enum):
    """torch.distributed.ReduceOp. SUM and AVG are IR ops (`all_reduce`'s "sum" and "mean"); the others
    run eagerly through torch.distributed."""

    SUM = "sum"
    AVG = "mean"
    PRODUCT = "product"
    MIN = "min"
    MAX = "max"
    BAND = "band"
    BOR = "bor"
    BXOR = "bxor"


class _Work:
    """What `async_op=True` returns: already complete (the collective ran synchronously)."""

    def wait(self, timeout: Any = None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True

    def is_success(self) -> bool:
        return True


def _done(async_op: bool) -> _Work | None:
    return _Work() if async_op else None


def _check_group(group: Any, who: str) -> None:
    require_group(f"avalon.distributed.{who}")
    if group is None or group == "world":
        return
    dist = _dist()
    if is_initialized() and group is dist.group.WORLD:
        return
    raise NotImplementedError(f"avalon.distributed.{who}: only the default process group is supported; pass "
                              "group=None")


def _traced(*ts: Any) -> bool:
    return current_trace() is not None or any(isinstance(t, Tensor) and t.is_traced for t in ts)


def _tensor(x: Any, who: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"avalon.distributed.{who}: takes Avalon Tensors, got {type(x).__name__}")
    return x


def _n() -> int:
    """The size of the group the ops see: the installed hook's (`init` installs torch.distributed's)."""
    is_initialized()  # (a group made with torch directly installs its hook here)
    hook = collective()
    return 1 if hook is None else int(hook.world_size("world"))


def _r() -> int:
    hook = collective()
    return 0 if hook is None or _n() == 1 else int(hook.rank("world"))


def _gather(x: Tensor) -> Tensor:
    """Every rank's `x` concatenated along dim 0 (a 0-d `x` counts as shape (1,)): one all_gather op."""
    if x.ndim == 0:
        x = ops.reshape(x, (1,))
    return bind("all_gather", x, world_size=_n(), group="world")


def _rows(x: Tensor, r: int, n: int) -> Tensor:
    """Rows [r*n, (r+1)*n) of `x`."""
    return ops.slice_(x, [r * n] + [0] * (x.ndim - 1), [(r + 1) * n, *x.shape[1:]])


def _write(target: Tensor, new: Tensor) -> None:
    if new is not target:
        assign(target, new if new.shape == target.shape else ops.reshape(new, target.shape))


# -- the process group ----------------------------------------------------------------------------

def is_available() -> bool:
    """torch.distributed.is_available."""
    try:
        return bool(_dist().is_available())
    except ImportError:
        return False


def get_rank(group: Any = None) -> int:
    """torch.distributed.get_rank (0 without a group)."""
    _check_group(group, "get_rank")
    return _rank()


def get_world_size(group: Any = None) -> int:
    """torch.distributed.get_world_size (1 without a group)."""
    _check_group(group, "get_world_size")
    return world_size()


def get_backend(group: Any = None) -> str:
    """torch.distributed.get_backend of the default group."""
    _check_group(group, "get_backend")
    if not is_initialized():
        raise RuntimeError("avalon.distributed.get_backend: no process group; call init_process_group first")
    return str(_dist().get_backend())


def init_process_group(backend: str | None = None, init_method: str | None = None, timeout: Any = None,
                       world_size: int = -1, rank: int = -1, store: Any = None, group_name: str = "",
                       pg_options: Any = None, device_id: Any = None) -> None:
    """torch.distributed.init_process_group, as `avalon.distributed.init`: torchrun's environment (the
    default `env://`), or `rank=`/`world_size=` and a `tcp://host:port` init_method, which are written to
    the environment `init` reads. `timeout` is a timedelta or seconds. A `store` is not supported."""
    if store is not None:
        raise NotImplementedError("avalon.distributed.init_process_group: a store is not supported; use env:// "
                                  "(torchrun) or tcp://host:port")
    if init_method and init_method != "env://":
        if not init_method.startswith("tcp://"):
            raise NotImplementedError(f"avalon.distributed.init_process_group: init_method {init_method!r}; "
                                      "env:// and tcp://host:port are supported")
        host, _, port = init_method[len("tcp://"):].rpartition(":")
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = host.strip("[]"), port
    if rank >= 0:
        os.environ["RANK"] = str(rank)
    if world_size > 0:
        os.environ["WORLD_SIZE"] = str(world_size)
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    if backend is not None:
        backend = str(backend).lower()
        if ":" in backend:  # torch's per-device form, "cpu:gloo,cuda:nccl": the one for the device Avalon uses
            import torch
            per_device = dict(part.strip().split(":", 1) for part in backend.split(",") if ":" in part)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            if device not in per_device:
                raise ValueError(f"avalon.distributed.init_process_group: backend {backend!r} names no backend for "
                                 f"{device}")
            backend = per_device[device].strip()
        if backend not in ("gloo", "nccl"):
            raise NotImplementedError(f"avalon.distributed.init_process_group: backend {backend!r}; gloo or nccl")
    init(backend, timeout=timeout)


def destroy_process_group(group: Any = None) -> None:
    """torch.distributed.destroy_process_group: leave the group (`avalon.distributed.shutdown`)."""
    _check_group(group, "destroy_process_group")
    shutdown()


def barrier(group: Any = None, async_op: bool = False, device_ids: Any = None) -> _Work | None:
    """torch.distributed.barrier: wait for every rank (at most the group's timeout)."""
    _check_group(group, "barrier")
    _barrier()
    return _done(async_op)


# -- collectives on tensors -------------------------------------------------------------------------

def all_reduce_(tensor: Tensor, op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False) -> _Work | None:
    """torch.distributed.all_reduce: `tensor` reduced over the ranks IN PLACE (SUM by default); returns
    None (a completed work object with async_op). `avalon.distributed.all_reduce` is this when given one
    Tensor with no op or a `ReduceOp`; given a tree (a grads dict) or an op string it returns a new tree."""
    tensor = _tensor(tensor, "all_reduce")
    _check_group(group, "all_reduce")
    op = ReduceOp(op)
    if op in (ReduceOp.SUM, ReduceOp.AVG):
        _write(tensor, bind("all_reduce", tensor, reduction=op.value, group="world"))
        return _done(async_op)
    if _traced(tensor):
        raise NotImplementedError(f"avalon.distributed.all_reduce: {op.name} inside a traced function; the "
                                  "all_reduce op sums or averages (ReduceOp.SUM, ReduceOp.AVG)")
    if _n() > 1:
        import torch
        dist = _dist()
        t = torch.from_numpy(np.array(as_array(tensor), copy=True, order="C"))
        if _nccl():
            t = t.to(torch.device("cuda", torch.cuda.current_device()))
        try:
            dist.all_reduce(t, op=getattr(dist.ReduceOp, op.name))
        except Exception as e:
            raise _failed(f"all_reduce ({op.name}) of a {tuple(t.shape)} tensor", e) from e
        _write(tensor, Tensor(t.cpu().numpy(), dtype=tensor.dtype))
    return _done(async_op)


def broadcast(tensor: Tensor, src: int = 0, group: Any = None, async_op: bool = False,
              group_src: Any = None) -> _Work | None:
    """torch.distributed.broadcast: `tensor` becomes rank `src`'s, in place. Traced: an all_gather op
    and rank `src`'s rows of it (bit-exact for every dtype)."""
    tensor = _tensor(tensor, "broadcast")
    _check_group(group, "broadcast")
    src = int(group_src if group_src is not None else src)
    n = _n()
    if not 0 <= src < n:
        raise ValueError(f"avalon.distributed.broadcast: src {src} is not a rank of a group of {n}")
    if n == 1:
        return _done(async_op)
    if _traced(tensor):
        _write(tensor, _rows(_gather(ops.reshape(tensor, (1, *tensor.shape))), src, 1))
        return _done(async_op)
    from .group import broadcast_arrays
    _write(tensor, Tensor(broadcast_arrays([np.asarray(as_array(tensor))], src)[0], dtype=tensor.dtype))
    return _done(async_op)


def all_gather(tensor_list: list, tensor: Tensor, group: Any = None, async_op: bool = False) -> _Work | None:
    """torch.distributed.all_gather: `tensor_list[r]` = rank r's `tensor`, written in place (one
    all_gather op, then each rank's rows). Not differentiable, as torch's; see `avalon.distributed.nn`."""
    tensor = _tensor(tensor, "all_gather")
    _check_group(group, "all_gather")
    n = _n()
    if len(tensor_list) != n:
        raise ValueError(f"avalon.distributed.all_gather: tensor_list has {len(tensor_list)} tensors for a group "
                         f"of {n}")
    whole = ops.stop_gradient(_gather(ops.reshape(tensor, (1, *tensor.shape))))  # torch's: no gradient
    for r, t in enumerate(tensor_list):
        _write(_tensor(t, "all_gather"), ops.reshape(_rows(whole, r, 1), tensor.shape))
    return _done(async_op)


def all_gather_into_tensor(output_tensor: Tensor, input_tensor: Tensor, group: Any = None,
                           async_op: bool = False) -> _Work | None:
    """torch.distributed.all_gather_into_tensor: `output_tensor` = every rank's `input_tensor` concatenated
    along dim 0 (or stacked: an output of shape (world_size, *input.shape)), written in place."""
    out, x = _tensor(output_tensor, "all_gather_into_tensor"), _tensor(input_tensor, "all_gather_into_tensor")
    _check_group(group, "all_gather_into_tensor")
    if out.numel() != _n() * x.numel():
        raise ValueError(f"avalon.distributed.all_gather_into_tensor: output {out.shape} does not hold "
                         f"{_n()} inputs of {x.shape}")
    _write(out, ops.stop_gradient(_gather(x)))  # not differentiable, as torch's
    return _done(async_op)


def reduce_scatter_tensor(output: Tensor, input: Tensor, op: Any = ReduceOp.SUM, group: Any = None,  # noqa: A002
                          async_op: bool = False) -> _Work | None:
    """torch.distributed.reduce_scatter_tensor: `output` = this rank's rows of the sum (or mean) over the
    ranks of `input` (dim 0 = world_size * output's). An all_reduce op and this rank's slice."""
    out, x = _tensor(output, "reduce_scatter_tensor"), _tensor(input, "reduce_scatter_tensor")
    _check_group(group, "reduce_scatter_tensor")
    op, n = ReduceOp(op), _n()
    if op not in (ReduceOp.SUM, ReduceOp.AVG):
        raise NotImplementedError(f"avalon.distributed.reduce_scatter_tensor: {op.name}; SUM or AVG")
    if x.numel() != n * out.numel():
        raise ValueError(f"avalon.distributed.reduce_scatter_tensor: input {x.shape} is not {n} outputs of "
                         f"{out.shape}")
    flat = ops.reshape(x, (n, out.numel()))
    total = ops.stop_gradient(bind("all_reduce", flat, reduction=op.value, group="world"))  # as torch's
    _write(out, _rows(total, _r(), 1))
    return _done(async_op)


def reduce(tensor: Tensor, dst: int = 0, op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False,  # noqa: A001
           group_dst: Any = None) -> _Work | None:
    """torch.distributed.reduce: rank `dst`'s `tensor` becomes the reduction over the ranks, in place
    (the metric summed on rank 0 for logging). torch leaves the other ranks' tensors unspecified; here
    they hold the same result (it is an all_reduce)."""
    _check_group(group, "reduce")
    dst = int(group_dst if group_dst is not None else dst)
    if not 0 <= dst < _n():
        raise ValueError(f"avalon.distributed.reduce: dst {dst} is not a rank of a group of {_n()}")
    return all_reduce_(tensor, op, None, async_op)


def gather(tensor: Tensor, gather_list: list | None = None, dst: int = 0, group: Any = None,
           async_op: bool = False, group_dst: Any = None) -> _Work | None:
    """torch.distributed.gather: on rank `dst`, `gather_list[r]` = rank r's `tensor`, written in place;
    the other ranks pass no list (one all_gather op)."""
    tensor = _tensor(tensor, "gather")
    _check_group(group, "gather")
    dst, n, me = int(group_dst if group_dst is not None else dst), _n(), _r()
    if not 0 <= dst < n:
        raise ValueError(f"avalon.distributed.gather: dst {dst} is not a rank of a group of {n}")
    if me == dst and (gather_list is None or len(gather_list) != n):
        raise ValueError(f"avalon.distributed.gather: rank {dst} (dst) needs a gather_list of {n} tensors, got "
                         f"{None if gather_list is None else len(gather_list)}")
    if me != dst and gather_list:
        raise ValueError(f"avalon.distributed.gather: rank {me} is not dst ({dst}) and must pass no gather_list")
    whole = ops.stop_gradient(_gather(ops.reshape(tensor, (1, *tensor.shape))))  # torch's: no gradient
    if me == dst:
        for r, t in enumerate(gather_list or []):
            _write(_tensor(t, "gather"), ops.reshape(_rows(whole, r, 1), tensor.shape))
    return _done(async_op)


def scatter(tensor: Tensor, scatter_list: list | None = None, src: int = 0, group: Any = None,
            async_op: bool = False, group_src: Any = None) -> _Work | None:
    """torch.distributed.scatter: `tensor` = rank `src`'s `scatter_list[this rank]`, in place; the other
    ranks pass no list (rank src's stacked list broadcast, then this rank's row)."""
    tensor = _tensor(tensor, "scatter")
    _check_group(group, "scatter")
    src, n, me = int(group_src if group_src is not None else src), _n(), _r()
    if not 0 <= src < n:
        raise ValueError(f"avalon.distributed.scatter: src {src} is not a rank of a group of {n}")
    if me == src:
        if scatter_list is None or len(scatter_list) != n:
            raise ValueError(f"avalon.distributed.scatter: rank {src} (src) needs a scatter_list of {n} tensors, "
                             f"got {None if scatter_list is None else len(scatter_list)}")
        parts = [_tensor(t, "scatter") for t in scatter_list]
        if any(t.shape != tensor.shape for t in parts):
            raise ValueError(f"avalon.distributed.scatter: every tensor of scatter_list must have the output's "
                             f"shape {tensor.shape}, got {[t.shape for t in parts]}")
        stacked = ops.stack([ops.cast(t, tensor.dtype) for t in parts], 0)
    else:
        if scatter_list:
            raise ValueError(f"avalon.distributed.scatter: rank {me} is not src ({src}) and must pass no "
                             "scatter_list")
        stacked = ops.full((n, *tensor.shape), 0, tensor.dtype, device=tensor.device)
    broadcast(stacked, src)
    _write(tensor, ops.stop_gradient(ops.reshape(_rows(stacked, me, 1), tensor.shape)))  # as torch's
    return _done(async_op)


# -- Python objects (pickled; torch's own functions, communication only) ------------------------------

def all_gather_object(object_list: list, obj: Any, group: Any = None) -> None:
    """torch.distributed.all_gather_object: object_list[r] = rank r's `obj`."""
    _check_group(group, "all_gather_object")
    if world_size() == 1:
        object_list[0] = obj
        return
    try:
        _dist().all_gather_object(object_list, obj)
    except Exception as e:
        raise _failed("all_gather_object", e) from e


def broadcast_object_list(object_list: list, src: int = 0, group: Any = None, device: Any = None) -> None:
    """torch.distributed.broadcast_object_list: `object_list` becomes rank `src`'s, in place."""
    _check_group(group, "broadcast_object_list")
    if world_size() == 1:
        return
    try:
        _dist().broadcast_object_list(object_list, src=src)
    except Exception as e:
        raise _failed(f"broadcast_object_list from rank {src}", e) from e


def gather_object(obj: Any, object_gather_list: list | None = None, dst: int = 0, group: Any = None) -> None:
    """torch.distributed.gather_object: rank `dst`'s `object_gather_list[r]` = rank r's `obj`."""
    _check_group(group, "gather_object")
    if world_size() == 1:
        if object_gather_list is not None:
            object_gather_list[0] = obj
        return
    try:
        _dist().gather_object(obj, object_gather_list if _rank() == dst else None, dst=dst)
    except Exception as e:
        raise _failed(f"gather_object to rank {dst}", e) from e
