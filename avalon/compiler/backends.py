"""The backends `av.compile` can run a graph on, behind one small interface.

A backend turns a final graph into an *executable*: a callable taking one value per graph input
(Avalon tensors, numpy arrays, torch tensors) and returning one array per graph output, with a
`kernels` dict from kernel name to its source. Two are built in:

* `numpy`: the reference interpreter. It generates no code; its `kernels` holds, per fused group,
  the group's region printed as a standalone function (`func @fused_add_relu_0(...)`), i.e. what
  that group computes, so `inspect(...).kernels` and the debug directory show the same grouping
  on both backends.
* `triton`: `avalon.codegen.triton.compile_graph(graph)`, imported only when first used, so
  machines without the Triton backend can still compile for numpy.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from avalon.codegen.numpy import Interpreter
from avalon.device import CPU
from avalon.ir import Graph, Op
from avalon.ir.clone import clone_block, clone_op
from avalon.tensor import Tensor


class Executable(Protocol):
    kernels: dict[str, str]

    def __call__(self, *inputs: Any) -> Sequence[Any]: ...


class BackendUnavailable(RuntimeError):
    """The backend's module is missing or cannot be imported on this machine."""


def group_name(op: Op) -> str:
    """A fused group's symbol name (`fused_add_relu_0`), or a placeholder for an unnamed region op."""
    return str(op.attrs.get("name") or op.name)


def fusion_groups(graph: Graph) -> list[Op]:
    """The top-level ops with a region (fused groups), in order."""
    return [op for op in graph.ops if op.regions]


def region_function(op: Op) -> Graph:
    """The region of a fused group as a standalone function: its arguments become the inputs and
    its yield the return. Printing it shows what the group computes; interpreting it runs the
    group's ops one by one (the unfused reference of check mode)."""
    body = clone_block(op.regions[0])
    body.set_terminator("return", body.results)
    return Graph(group_name(op), body)


def group_graph(op: Op) -> Graph:
    """A function whose body is just the fused group `op` (for compiling one group on a backend)."""
    g = Graph(group_name(op))
    args = [g.add_input(v.type, f"arg{i}") for i, v in enumerate(op.operands)]
    new = clone_op(op, dict(zip(op.operands, args)))
    g.body.append(new)
    g.set_outputs(new.results)
    return g


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

    def compile(self, graph: Graph) -> Executable:
        return NumpyExecutable(graph)


class TritonBackend:
    """Generated Triton kernels (`avalon.codegen.triton`); their sources are the `kernels`."""

    name = "triton"
    kernel_suffix = ".py"

    def compile(self, graph: Graph) -> Executable:
        try:
            from avalon.codegen.triton import compile_graph
        except ImportError as e:
            raise BackendUnavailable(
                f"backend='triton' needs avalon.codegen.triton.compile_graph, which cannot be imported here "
                f"({type(e).__name__}: {e}); use backend='numpy'") from e
        return TritonExecutable(compile_graph(graph))


class TritonExecutable:
    """A `CompiledGraph`, fed Avalon tensors as their storage (a numpy array on the CPU, a torch
    tensor on a GPU) so that device tensors are not copied through the host."""

    def __init__(self, compiled: Any):
        self.compiled = compiled
        self.kernels: dict[str, str] = dict(compiled.kernels)

    def __call__(self, *inputs: Any) -> Sequence[Any]:
        return self.compiled(*[_storage(x) for x in inputs])


def _storage(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.numpy() if x.device == CPU else x._data
    return x


BACKENDS: dict[str, Callable[[], Any]] = {"numpy": NumpyBackend, "triton": TritonBackend}
"""Backends by name; register another as `BACKENDS["mine"] = MyBackend` (a class with `name`,
`kernel_suffix` and `compile(graph) -> Executable`)."""


def get_backend(backend: str | Any) -> Any:
    """A backend object from its name (or the object itself)."""
    if not isinstance(backend, str):
        return backend
    try:
        return BACKENDS[backend]()
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(sorted(BACKENDS))}") from None
