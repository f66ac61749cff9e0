"""The compile driver and what it is made of: the one path from a call to a result.

`core` (`Compiled`, `av.compile`: the per-signature cache, pipeline, backend and inspection),
`gradients` (`av.grad` / `av.value_and_grad`: the driver with a gradient program), `vmap` (`av.vmap`:
the driver with a batching program), `jvp` (`avalon.func.jvp`: the driver with a forward-mode
program), `execute` (running a
program and writing its results and state updates back, or inlining it into an enclosing trace),
`backends` (the backends it runs graphs on), `check` (check mode) and `testing` (test helpers).
"""
from .backends import BACKENDS, BackendUnavailable, get_backend
from .check import TOLERANCES, CheckError
from .core import CacheInfo, Compiled, Inspection, Program, compile
from .gradients import GRAD_PIPELINE, GradProgram, grad, value_and_grad
from .jvp import JvpProgram
from .vmap import VmapError, VmapProgram, vmap

__all__ = ["BACKENDS", "GRAD_PIPELINE", "BackendUnavailable", "CacheInfo", "CheckError", "Compiled", "GradProgram",
           "Inspection", "JvpProgram", "Program", "TOLERANCES", "VmapError", "VmapProgram", "compile", "get_backend",
           "grad", "value_and_grad", "vmap"]
