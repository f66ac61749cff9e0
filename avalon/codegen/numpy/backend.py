"""`backend="numpy"`: the reference interpreter behind the backend interface of `av.compile`.

It generates no code; its `kernels` holds, per fused group, the group's region printed as a
standalone function (`func @fused_add_relu_0(...)`), i.e. what that group computes, so
`inspect(...).kernels` and the debug directory show the same grouping on both backends.
"""
from __future__ import annotations

from typing import Any

from avalon.ir import Graph, Interpreter, fusion_groups, group_name, region_function
from avalon.passes.target import Target

NUMPY = Target("numpy", memory_plan=False)
"""The interpreter runs any group, but takes the default kernel kinds so that `inspect()` shows the
grouping the Triton backend gets; it allocates per op, so it wants no memory plan."""


class NumpyExecutable:
    """Runs the graph with the reference interpreter."""

    kernel_suffix = ".mlir"

    def __init__(self, graph: Graph, interpreter: type[Interpreter] = Interpreter):
        self.graph = graph
        self.interpreter = interpreter
        self.kernels = {group_name(op): str(region_function(op)) for op in fusion_groups(graph)}

    def __call__(self, *inputs: Any) -> tuple[Any, ...]:
        return self.interpreter(self.graph).run(*inputs)


class NumpyBackend:
    name = "numpy"
    kernel_suffix = ".mlir"
    target = NUMPY

    def compile(self, graph: Graph) -> NumpyExecutable:
        return NumpyExecutable(graph)
