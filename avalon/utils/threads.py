"""`av.set_num_threads` / `av.get_num_threads`: torch's names for the CPU thread count.

Avalon's CPU work is numpy's: its matmuls and convolutions run in the BLAS numpy links, the only
multi-threaded part (the "cpu" backend's C loops are single-threaded by design, see
`avalon.codegen.numpy.native`). So the count is the BLAS thread pool's, set through the OpenBLAS
that numpy ships (`codegen.numpy.blas.thread_control`, which the generated code also uses to run
small GEMMs on one thread and give the caller's count back after). Where numpy links another BLAS
the count cannot be changed after it loaded: `set_num_threads` then says so once and records the
value, which `get_num_threads` returns (before any call: the CPU count)."""
from __future__ import annotations

import os

from ..channels import get_logger
from ..codegen.numpy.blas import thread_control

_asked: list[int] = []


def set_num_threads(num: int) -> None:
    """torch.set_num_threads: use `num` threads for CPU matmuls and convolutions (numpy's BLAS)."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {num!r}")
    _asked[:] = [num]
    ctl = thread_control()
    if ctl is None:
        get_logger("threads").warning("set_num_threads: numpy's BLAS is not OpenBLAS, so its thread count cannot "
                                      "change now; set OMP_NUM_THREADS / MKL_NUM_THREADS before starting Python")
        return
    ctl[1](num)


def get_num_threads() -> int:
    """torch.get_num_threads: the BLAS thread pool's size."""
    ctl = thread_control()
    if ctl is not None:
        return int(ctl[0]())
    return _asked[0] if _asked else (os.cpu_count() or 1)


_interop: list[int] = []


def set_num_interop_threads(num: int) -> None:
    """torch.set_num_interop_threads: Avalon runs a graph's ops one after another (no inter-op pool), so
    the count is recorded for `get_num_interop_threads` and changes nothing."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"set_num_interop_threads: expected a positive int, got {num!r}")
    _interop[:] = [num]


def get_num_interop_threads() -> int:
    return _interop[0] if _interop else 1
