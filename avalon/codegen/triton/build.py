"""`compile_graph`: every top-level op of an (optimized) graph becomes kernel launches.

* a `fusion` op becomes ONE kernel for its region: a contraction kernel if the region holds a
  matmul/conv, else a reduction kernel if it holds a reduction, else a pointwise kernel. A region
  that none of them can take (two matmuls, reductions over different axes, outputs of different
  sizes, ...) still runs: its ops are lowered one kernel each, and the reason is logged on
  channel `avalon.triton`.
* any other op is a group of one; a reshape of a row-major value is a zero-copy view (no kernel);
  a dense constant is uploaded once per device.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from avalon.channels import get_logger
from avalon.ir import dtypes as dt
from avalon.ir.builder import make_op
from avalon.ir.core import Block, Graph, Op, Value
from avalon.ir.types import TensorType

from .blocks import BlockPolicy
from .cache import KernelCache, interpreting
from .contraction import build_contraction
from .emitter import Unsupported
from .group import Group, from_fusion, from_op, identifier, is_dense_constant
from .kernel import Kernel
from .lowering import LOWERING
from .memory import Step, plan_memory
from .pointwise import build_pointwise
from .reduction import build_reduction
from .runtime import CompiledGraph, Launch, default_device

log = get_logger("triton")


def build_kernel(group: Group, policy: BlockPolicy) -> Kernel:
    """One kernel for `group` (raises Unsupported when no kernel kind can take it)."""
    own = LOWERING.get(group.ops[0].name) if len(group.ops) == 1 else None
    if own is not None and own.builds_kernel:  # an op with a kernel of its own (cumsum's scan)
        return own.build_kernel(group, policy)
    for op in group.ops:
        if op.name not in LOWERING:
            raise NotImplementedError(f"no Triton lowering for op '{op.name}'")
    kinds = group.kinds()
    if "group" in kinds:
        raise Unsupported("nested fusion regions")
    ins = [v.type.strides() for v in group.inputs]
    outs = [v.type.strides() for v in group.outputs]
    if "contraction" in kinds:
        if "reduction" in kinds:
            raise Unsupported("a contraction and a reduction in one group")
        return build_contraction(group, ins, outs, policy)
    if "reduction" in kinds:
        return build_reduction(group, ins, outs, policy)
    return build_pointwise(group, ins, outs, policy)


def is_view(op: Op) -> bool:
    """A reshape or transpose whose result, under its type's strides, is exactly its operand's
    memory (row-major reshapes; transposes the layout pass gave the matching layout): no kernel."""
    if op.name not in ("reshape", "transpose"):
        return False
    src, dst = op.operands[0].type, op.result.type
    if op.name == "reshape":
        return src.layout is None and dst.layout is None
    ss, ds = src.strides(), dst.strides()
    return all(ds[i] == ss[p] for i, p in enumerate(op.attrs["perm"]) if dst.shape[i] > 1)


class _Lowerer:
    def __init__(self, policy: BlockPolicy, cache: KernelCache):
        self.policy = policy
        self.cache = cache
        self.steps: list[Step] = []
        self.launches: list[Launch] = []
        self.kernels: dict[str, str] = {}
        self.consts: list[Value] = []
        self.const_data: list[np.ndarray] = []
        self.alias: dict[int, Value] = {}  # region args and fusion results -> the value they stand for

    def resolve(self, v: Value) -> Value:
        while id(v) in self.alias:
            v = self.alias[id(v)]
        return v

    def name(self, base: str) -> str:
        name, k = identifier(base), 1
        while name in self.kernels:
            name = f"{identifier(base)}_{k}"
            k += 1
        return name

    def add_const(self, v: Value, data: np.ndarray) -> None:
        self.consts.append(v)
        self.const_data.append(np.asarray(data))

    def add_kernel(self, k: Kernel, args: list[Value], writes: list[Value]) -> None:
        k.fn = self.cache.load(k.name, k.source)
        self.kernels[k.name] = k.source
        self.launches.append(Launch(k, args))
        self.steps.append(Step([a for a in args[:len(args) - len(writes)]], writes))

    # --- ops ----------------------------------------------------------------------------------------
    def lower(self, op: Op) -> None:
        if is_dense_constant(op):
            self.add_const(op.result, op.attrs["value"])
        elif is_view(op):
            self.steps.append(Step([], [op.result], alias_of=self.resolve(op.operands[0])))
        elif op.name == "fusion":
            self.lower_fusion(op)
        else:
            self.lower_group(from_op(op, self.name(f"{op.name}_{len(self.kernels)}")), op.results)

    def lower_group(self, group: Group, writes: list[Value]) -> None:
        try:
            k = build_kernel(group, self.policy)
        except Unsupported as e:
            raise NotImplementedError(f"cannot lower '{group.ops[0].name}' to Triton: {e}") from e
        self.add_kernel(k, [self.resolve(v) for v in group.inputs] + writes, writes)

    def lower_fusion(self, op: Op) -> None:
        if not op.results:
            return  # computes nothing anyone reads
        group = from_fusion(op, self.name(op.attrs.get("name") or f"fusion_{len(self.kernels)}"))
        region = op.regions[0]
        for a, v in zip(region.args, op.operands):
            self.alias[id(a)] = v
        try:
            k = build_kernel(group, self.policy)
        except Unsupported as e:
            log.info("fusion @%s: one kernel per op instead (%s)", op.attrs.get("name"), e)
            self.lower_ops_of(op)
            return
        except Exception as e:  # an emitter bug must not stop a group that op-by-op lowering can run
            log.warning("fusion @%s: one kernel per op instead: the emitter failed with %s: %s",
                        op.attrs.get("name"), type(e).__name__, e)
            self.lower_ops_of(op)
            return
        args = []
        for i, v in enumerate(group.inputs):
            if i in group.constants:
                self.add_const(v, group.constants[i])
            args.append(self.resolve(v))
        self.add_kernel(k, args + list(op.results), list(op.results))

    def lower_ops_of(self, op: Op) -> None:
        region = op.regions[0]
        for inner in region.ops:
            self.lower(inner)
        for r, y in zip(op.results, region.results):
            self.steps.append(Step([], [r], alias_of=self.resolve(y)))
            self.alias[id(r)] = self.resolve(y)


def _copy_maker(policy: BlockPolicy, cache: KernelCache) -> Callable[[TensorType, dt.DType, tuple], Kernel]:
    """Kernels that copy a strided tensor into `t`'s layout, converting its dtype on the way."""
    def make(t: TensorType, src_dtype: dt.DType, src_strides: tuple) -> Kernel:
        arg = Block([TensorType(t.shape, src_dtype)]).args[0]
        if src_dtype == t.dtype:
            op = make_op("reshape", [arg], {"shape": list(t.shape)})
        else:
            op = make_op("cast", [arg], {"dtype": t.dtype})
        op.results[0].type = t
        group = from_op(op, f"copy_{src_dtype.name}_to_{t.dtype.name}")
        k = build_pointwise(group, [src_strides], [t.strides()], policy)
        k.fn = cache.load(k.name, k.source)
        return k
    return make


def _pass_plan(graph: Graph) -> tuple[dict[int, int], list[int]]:
    """The buffer assignment of the `memory-plan` pass, if it annotated this very graph."""
    mp = getattr(graph, "memory_plan", None)
    if mp is None or not getattr(mp, "is_current", lambda g: False)(graph):
        return {}, []
    return {id(v): b for v, b in mp.assignment.items()}, list(mp.buffers)


def compile_graph(graph: Graph, *, blocks: BlockPolicy | None = None, cache: KernelCache | None = None,
                  device=None) -> CompiledGraph:
    """Lower every top-level op of `graph` to Triton kernels (see the module docstring)."""
    import torch
    policy = blocks or BlockPolicy.for_device(interpreting())
    cache = cache or KernelCache()
    lw = _Lowerer(policy, cache)
    for op in graph.ops:
        lw.lower(op)
    outputs = [lw.resolve(v) for v in graph.outputs]
    pre, arenas = _pass_plan(graph)
    plan = plan_memory(graph.inputs, lw.consts, lw.steps, outputs, pre, arenas)
    for v in graph.outputs:  # fusion results that were lowered op by op live where their yields do
        if id(v) not in plan.storage:
            plan.storage[id(v)] = plan.of(lw.resolve(v))
    dev = torch.device(device) if device is not None else default_device()
    cg = CompiledGraph(graph, lw.launches, plan, lw.const_data, [v.type for v in lw.consts], lw.kernels,
                       _copy_maker(policy, cache), dev)
    log.debug("compiled @%s: %d kernels, %d launches, %d pooled buffers", graph.name, len(lw.kernels),
              len(lw.launches), len(plan.buffers))
    return cg
