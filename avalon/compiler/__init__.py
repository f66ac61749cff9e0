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


def is_compiling() -> bool:
    """torch.compiler.is_compiling(): True while Avalon's tracer records the code (under `av.compile`, and
    under `av.grad`/`value_and_grad`, which trace too), when tensors have no values for Python to branch on.
    Model code guards its data-dependent checks with it (`if not torch.compiler.is_compiling(): assert
    (boxes[:, 2:] >= boxes[:, :2]).all()`); without it those ports stopped at an AttributeError."""
    from avalon.tensor import TRACING
    return bool(TRACING)


is_dynamo_compiling = is_compiling  # torch.compiler's other name for it

__all__ = ["BACKENDS", "GRAD_PIPELINE", "BackendUnavailable", "CacheInfo", "CheckError", "Compiled", "GradProgram",
           "Inspection", "JvpProgram", "Program", "TOLERANCES", "VmapError", "VmapProgram", "compile", "get_backend",
           "grad", "is_compiling", "is_dynamo_compiling", "value_and_grad", "vmap"]
