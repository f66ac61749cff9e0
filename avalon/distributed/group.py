"""The process group behind `avalon.distributed`: torch.distributed, set up from torchrun's environment.

Torch is communication here, never compute: collectives run on numpy-backed CPU tensors (gloo) or
on the device tensors a backend keeps (NCCL); a mean over gloo, which has no average, is a sum
followed by a numpy division of the same memory. Every wait is bounded by the group's timeout
(`init(timeout=...)`, `AVALON_DIST_TIMEOUT` seconds, 300 by default), and a collective that fails
because a peer died or timed out is a `DistributedError` naming this rank and what it waited for.
"""
from __future__ import annotations

import datetime
import os
import sys
from typing import Any

import numpy as np

from avalon.channels import get_logger
from avalon.ir.reference.collective import collective, set_collective

log = get_logger("distributed")

DEFAULT_TIMEOUT_S = 300.0
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A collective could not complete: a peer process died, timed out, or the group is unusable."""


def _dist() -> Any:
    import torch.distributed as dist
    return dist


def is_initialized() -> bool:
    """Whether a torch.distributed process group is up (made by `init`, or by the user directly)."""
    dist = sys.modules.get("torch.distributed")  # never imported: no group (and no torch import on fit's path)
    if dist is None:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if collective() is None:
        set_collective(TorchCollective())  # a group made with torch directly: all_reduce ops use it too
    return True


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return _dist().get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of processes in the group (1 without one)."""
    return _dist().get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK), which picks its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


_timeout: list[float] = []  # the one `init` used


def timeout_s() -> float:
    """The bound on every wait: `init`'s timeout, else AVALON_DIST_TIMEOUT, else 300 seconds."""
    return _timeout[-1] if _timeout else float(os.environ.get("AVALON_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))


def init(backend: str | None = None, *, timeout: float | None = None) -> None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the
    environment): NCCL when CUDA is available, gloo otherwise. Idempotent. `timeout` (seconds)
    bounds every wait: the rendezvous and each collective."""
    if is_initialized():
        return
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise RuntimeError(f"avalon.distributed.init: {', '.join(missing)} not set; launch with torchrun "
                           "(torchrun --nproc-per-node 2 script.py) or set RANK, WORLD_SIZE, MASTER_ADDR and "
                           "MASTER_PORT")
    try:
        r, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except ValueError:
        raise ValueError(f"avalon.distributed.init: RANK={os.environ['RANK']!r} and WORLD_SIZE="
                         f"{os.environ['WORLD_SIZE']!r} must be integers") from None
    if n < 1 or not 0 <= r < n:
        raise ValueError(f"avalon.distributed.init: RANK={r} is not a rank of WORLD_SIZE={n} (0 <= RANK < WORLD_SIZE)")
    import torch
    dist = _dist()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    seconds = timeout if timeout is not None else timeout_s()
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds))
    except Exception as e:
        raise DistributedError(f"rank {r}: could not join the process group of WORLD_SIZE={n} at "
                               f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {seconds:g}s: every "
                               f"rank must be started with the same WORLD_SIZE, MASTER_ADDR and MASTER_PORT and a "
                               f"RANK of its own ({type(e).__name__}: {_first_line(e)})") from e
    _timeout[:] = [seconds]
    set_collective(TorchCollective())
    log.info("rank %d of %d joined (%s)", dist.get_rank(), dist.get_world_size(), backend)


def shutdown() -> None:
    """Leave the process group (and make `all_reduce` the identity again)."""
    set_collective(None)
    _timeout.clear()
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else ""


def require_group(who: str) -> None:
    """torch's error for a collective before `init_process_group` under a launcher (WORLD_SIZE > 1 in
    the environment): without it every rank would go on alone with its own values. A process started
    alone has no group and the collectives are the identity (module docstrings)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and not is_initialized():
        raise RuntimeError(f"{who}: Default process group has not been initialized, please make sure to call "
                           f"init_process_group (avalon.distributed.init_process_group or avalon.distributed.init; "
                           f"WORLD_SIZE={os.environ['WORLD_SIZE']})")


def _failed(what: str, e: BaseException) -> DistributedError:
    r = _dist().get_rank() if is_initialized() else "?"
    cause = _first_line(e)
    if "mismatch between collectives" in cause:  # TORCH_DISTRIBUTED_DEBUG=DETAIL compared the ranks' calls
        return DistributedError(f"rank {r}: {what} failed: the ranks called different collectives or gave "
                                f"tensors of different shapes or dtypes ({type(e).__name__}: {cause})")
    return DistributedError(f"rank {r}: {what} failed: another process died, or it did not arrive within the "
                            f"group's timeout, or the ranks gave tensors of different shapes (set "
                            f"TORCH_DISTRIBUTED_DEBUG=DETAIL to have a mismatch named) ({type(e).__name__}: {cause})")


def _group(name: str) -> Any:
    if name != "world":
        raise ValueError(f"unknown process group {name!r}; only 'world' exists")
    return None  # torch's default group


def _nccl() -> bool:
    return _dist().get_backend() == "nccl"


class TorchCollective:
    """The `avalon.ir.reference.collective.Collective` hook over torch.distributed."""

    def world_size(self, group: str) -> int:
        _group(group)
        return _dist().get_world_size()

    def all_reduce_tensor_(self, x: Any, reduction: str, group: str) -> None:
        dist = _dist()
        g = _group(group)
        if x.device.type == "cpu" and _nccl():  # NCCL reduces device memory only: a round trip
            import torch
            dev = x.to(torch.device("cuda", torch.cuda.current_device()))
            self.all_reduce_tensor_(dev, reduction, group)
            x.copy_(dev)
            return
        avg = reduction == "mean" and _nccl()
        try:
            dist.all_reduce(x, op=dist.ReduceOp.AVG if avg else dist.ReduceOp.SUM, group=g)
        except Exception as e:
            raise _failed(f"all_reduce of a {tuple(x.shape)} tensor", e) from e
        if reduction == "mean" and not avg:
            if x.device.type == "cpu":
                a = x.numpy()
                np.divide(a, dist.get_world_size(), out=a, casting="unsafe")
            else:  # gloo on device memory: divide a host copy (storage moves only)
                host = x.cpu().numpy()
                host /= dist.get_world_size()
                import torch
                x.copy_(torch.from_numpy(host))

    def all_reduce_array(self, x: np.ndarray, reduction: str, group: str) -> np.ndarray:
        import torch
        a = np.array(x, copy=True, order="C")
        if a.dtype == np.float16:  # gloo's half support varies: reduce in f32 (as the reference computes)
            return self.all_reduce_array(a.astype(np.float32), reduction, group).astype(np.float16)
        self.all_reduce_tensor_(torch.from_numpy(a), reduction, group)
        return a

    def rank(self, group: str) -> int:
        _group(group)
        return _dist().get_rank()

    def all_gather_tensor_(self, out: Any, x: Any, group: str) -> None:
        """Every process's `x` into `out` along dim 0, as bytes (every dtype gathers exactly, bool and
        half included); NCCL gathers device memory, so a CPU tensor makes a round trip."""
        import torch
        dist = _dist()
        g = _group(group)
        if x.device.type == "cpu" and _nccl():
            dev = torch.device("cuda", torch.cuda.current_device())
            dout = out.to(dev)
            self.all_gather_tensor_(dout, x.to(dev), group)
            out.copy_(dout)
            return
        n = dist.get_world_size()
        src = x.contiguous().reshape(-1).view(torch.uint8)
        parts = list(out.reshape(-1).view(torch.uint8).chunk(n)) if src.numel() else []
        if not parts:
            return
        try:
            dist.all_gather(parts, src, group=g)
        except Exception as e:
            raise _failed(f"all_gather of a {tuple(x.shape)} tensor", e) from e

    def all_gather_array(self, x: np.ndarray, group: str) -> np.ndarray:
        import torch
        a = np.ascontiguousarray(x)
        if not a.flags.writeable:  # (torch.from_numpy warns on a read-only array; nothing writes it)
            a = a.copy()
        out = np.empty((self.world_size(group) * a.shape[0], *a.shape[1:]), dtype=a.dtype)
        self.all_gather_tensor_(torch.from_numpy(out.reshape(-1).view(np.uint8)),
                                torch.from_numpy(a.reshape(-1).view(np.uint8)), group)
        return out


def broadcast_arrays(arrays: list[np.ndarray], src: int = 0) -> list[np.ndarray]:
    """`arrays` as process `src` has them, on every process (one flat buffer per dtype)."""
    if world_size() == 1:
        return arrays
    import torch
    dist = _dist()
    out: list[np.ndarray] = list(arrays)
    by_dtype: dict[np.dtype, list[int]] = {}
    for i, a in enumerate(arrays):
        by_dtype.setdefault(np.asarray(a).dtype, []).append(i)
    for dtype, idx in by_dtype.items():
        flat = np.concatenate([np.asarray(arrays[i], dtype=dtype).reshape(-1) for i in idx])
        t = torch.from_numpy(flat)
        if _nccl():
            t = t.to(torch.device("cuda", torch.cuda.current_device()))
        try:
            dist.broadcast(t, src=src)
        except Exception as e:
            raise _failed(f"broadcast from rank {src}", e) from e
        flat = t.cpu().numpy()
        pos = 0
        for i in idx:
            n = int(np.prod(np.shape(arrays[i]), dtype=np.int64))
            out[i] = flat[pos:pos + n].reshape(np.shape(arrays[i])).copy()
            pos += n
    return out


def all_gather_array(a: np.ndarray) -> list[np.ndarray]:
    """Every process's 1-d int32 array `a` (lengths may differ), in rank order."""
    a = np.ascontiguousarray(a, dtype=np.int32).reshape(-1)
    if world_size() == 1:
        return [a]
    import torch
    dist = _dist()
    n = world_size()
    dev = torch.device("cuda", torch.cuda.current_device()) if _nccl() else torch.device("cpu")
    try:
        lengths = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(n)]
        dist.all_gather(lengths, torch.tensor([len(a)], dtype=torch.int64, device=dev))
        longest = max(int(t.item()) for t in lengths)
        mine = torch.from_numpy(np.concatenate([a, np.zeros(longest - len(a), np.int32)])).to(dev)
        parts = [torch.empty(longest, dtype=torch.int32, device=dev) for _ in range(n)]
        dist.all_gather(parts, mine)
    except Exception as e:
        raise _failed("all_gather", e) from e
    return [p.cpu().numpy()[:int(k.item())] for p, k in zip(parts, lengths)]


def barrier() -> None:
    """Wait until every process arrives, at most the group's timeout; on gloo a rank that does not
    arrive is named in the error."""
    if world_size() == 1:
        return
    dist = _dist()
    try:
        if _nccl():
            dist.barrier(device_ids=[torch_device_index()])
        else:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s()))
    except Exception as e:
        raise _failed("barrier", e) from e


def torch_device_index() -> int:
    import torch
    return torch.cuda.current_device()
