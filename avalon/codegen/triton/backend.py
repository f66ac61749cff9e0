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
        self.kernels: dict[str, str] = shown_kernels(compiled)

    def __call__(self, *inputs: Any) -> Sequence[Any]:
        return self.compiled(*[_storage(x) for x in inputs])


def shown_kernels(compiled: CompiledGraph) -> dict[str, str]:
    """Kernel name -> its source as `inspect(...).kernels` shows it: headed by how it launches (grid,
    config, warps, stages) and what the autotuner did (the chosen config, every candidate's time)."""
    launched = {ln.kernel.name: ln.kernel for ln in compiled.launches}
    out = {}
    for name, src in compiled.kernels.items():
        k, rec = launched.get(name), getattr(compiled, "tuning", {}).get(name)
        head = []
        if k is not None:
            config = " ".join(f"{m}={v}" for m, v in k.meta.items())
            head.append(f"# launch: grid {k.grid}, {config}, num_warps={k.num_warps}, num_stages={k.num_stages}"
                        + (f", then {', '.join(t.name for t in k.chain()[1:])}" if k.then is not None else ""))
        if rec:
            times = ", ".join(f"{c}: {t:.4f} ms" for c, t in sorted(rec["times"].items(), key=lambda ct: ct[1]))
            head.append(f"# tuning: {rec['config']}, {rec['how']}" + (f"; candidates {times}" if times else ""))
        out[name] = "\n".join(head + [src]) if head else src
    return out


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
