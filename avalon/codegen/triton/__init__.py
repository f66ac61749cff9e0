"""The Triton backend: one generated kernel per fused group, launched over torch-allocated storage.

`compile_graph(graph)` lowers an (optimized) graph; the result is called like the graph and returns
torch tensors. `CompiledGraph.kernels` maps kernel names to their generated source. `LOWERING` says
how each IR primitive is emitted. On a machine without a GPU the same kernels run in Triton's
interpreter: importing this package switches it on (`TRITON_INTERPRET=1`, read when a kernel is
made, so before any is) unless the environment already says otherwise, and says so once on the
`avalon.triton` channel.
"""
import os


def _interpret_without_gpu() -> None:
    """Triton on any machine: with no CUDA GPU, run the very same kernels in Triton's interpreter
    (the first compile says so, `cache.announce_interpreter`)."""
    if "TRITON_INTERPRET" in os.environ:
        return  # the user (or a test) decided
    import torch
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["AVALON_AUTO_INTERPRET"] = "1"


_interpret_without_gpu()

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
