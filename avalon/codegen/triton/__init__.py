"""The Triton backend: one generated kernel per fused group, launched over torch-allocated storage.

`compile_graph(graph)` lowers an (optimized) graph; the result is called like the graph and returns
torch tensors. `CompiledGraph.kernels` maps kernel names to their generated source. `LOWERING` says
how each IR primitive is emitted. On a machine without a GPU the same kernels run in Triton's
interpreter (set TRITON_INTERPRET=1 before triton is imported).
"""
import os

# Pin FMA contraction on the GPU: Triton 3.9 warns that its default flips in 3.10, which would
# silently change numerics between versions.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

# ruff: noqa: E402
from .blocks import BlockPolicy
from .build import build_kernel, compile_graph
from .cache import KernelCache
from .emitter import Unsupported
from .kernel import Kernel
from .lowering import LOWERING
from .runtime import CompiledGraph
from .standalone import write_kernels

__all__ = ["LOWERING", "BlockPolicy", "CompiledGraph", "Kernel", "KernelCache", "Unsupported", "build_kernel",
           "compile_graph", "write_kernels"]
