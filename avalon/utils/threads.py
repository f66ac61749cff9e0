"""`av.set_num_threads` / `av.get_num_threads`: torch's names for the CPU thread count.

Avalon's CPU work is numpy's: its matmuls and convolutions run in the BLAS numpy links (OpenBLAS, MKL,
...), the only multi-threaded part (the "cpu" backend's C loops are single-threaded by design, see
`avalon.codegen.numpy.native`). So the count is the BLAS thread pool's, set through `threadpoolctl`
when it is installed (scikit-learn brings it). Without it the count cannot be changed after numpy
loaded its BLAS: `set_num_threads` then says so once and records the value, which `get_num_threads`
returns (before any call: the CPU count, the BLAS default)."""
from __future__ import annotations

import os

from ..channels import get_logger

_asked: list[int] = []
_limiter: list[object] = []  # the threadpoolctl limiter in force (kept: it holds the setting)


def _threadpoolctl():
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl


def set_num_threads(num: int) -> None:
    """torch.set_num_threads: use `num` threads for CPU matmuls and convolutions (numpy's BLAS)."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {num!r}")
    tpc = _threadpoolctl()
    _asked[:] = [num]
    if tpc is None:
        get_logger("threads").warning("set_num_threads: threadpoolctl is not installed, so the BLAS thread count "
                                      "cannot change now; set OMP_NUM_THREADS / OPENBLAS_NUM_THREADS before "
                                      "starting Python (pip install threadpoolctl to set it here)")
        return
    _limiter[:] = [tpc.threadpool_limits(limits=num, user_api="blas")]


def get_num_threads() -> int:
    """torch.get_num_threads: the BLAS thread pool's size (the largest, if numpy loaded several)."""
    tpc = _threadpoolctl()
    if tpc is not None:
        counts = [p["num_threads"] for p in tpc.threadpool_info() if p.get("user_api") == "blas"]
        if counts:
            return max(counts)
    return _asked[0] if _asked else (os.cpu_count() or 1)
