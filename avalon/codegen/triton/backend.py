"""`backend="triton"`: generated Triton kernels behind the backend interface of `av.compile`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from avalon.device import CPU
from avalon.ir import Graph
from avalon.tensor import Tensor

from .build import compile_graph
from .runtime import CompiledGraph
from .target import TRITON


class TritonExecutable:
    """A `CompiledGraph`, fed Avalon tensors as their storage (a numpy array on the CPU, a torch
    tensor on a GPU) so that device tensors are not copied through the host."""

    def __init__(self, compiled: CompiledGraph):
        self.compiled = compiled
        self.kernels: dict[str, str] = dict(compiled.kernels)

    def __call__(self, *inputs: Any) -> Sequence[Any]:
        return self.compiled(*[_storage(x) for x in inputs])


def _storage(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.numpy() if x.device == CPU else x._data
    return x


class TritonBackend:
    """Generated Triton kernels (`avalon.codegen.triton`); their sources are the `kernels`."""

    name = "triton"
    kernel_suffix = ".py"
    target = TRITON  # what the passes may assume: its kernel kinds, views, strided reads, a memory plan

    def compile(self, graph: Graph) -> TritonExecutable:
        return TritonExecutable(compile_graph(graph, target=self.target))
