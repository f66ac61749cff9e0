"""`compile_graph`: every top-level op of an (optimized) graph becomes kernel launches.

* a `fusion` op becomes ONE kernel for its region, of the kind the target's `classify` names
  (contraction, reduction or pointwise: `target.py`). A region that no kind takes (two matmuls,
  reductions over different axes, outputs of different sizes, ...) or whose emitter refuses it
  still runs: its ops are lowered one kernel each, with a warning on channel `avalon.triton`, and
  the group is listed in `CompiledGraph.fallbacks`. An emitter that crashes is an error.
* an op whose lowering `runs_on_host` (all_reduce) is a host step between launches, not a kernel;
* any other op is a group of one; a view (`target.is_view`) costs no kernel; a dense constant is
  uploaded once per device.

Launch configs: contraction, attention and reduction kernels get the autotuner's (`autotune.py`:
timed once per kernel, shape and GPU, kept in the kernel cache; fixed in the interpreter); the
choice per kernel is `CompiledGraph.tuning`. On a GPU every kernel is then compiled up front, the
cold ones in forked processes (`autotune.warm_up`, `precompile.py`), not one by one as the first
call reaches it.

Storage: top-level intermediates live where the `memory-plan` pass's plan puts them (computed here
when the graph carries no current plan); see `memory.py`.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from avalon.channels import get_logger
from avalon.ir import dtypes as dt
from avalon.ir.builder import make_op
from avalon.ir.core import Block, Graph, Op, Value
from avalon.ir.fusion import is_dense_constant
from avalon.ir.types import TensorType
from avalon.passes.memory_plan import plan_memory
from avalon.passes.target import Target

from .autotune import TUNABLE, Tuner, warm_up
from .blocks import BlockPolicy, KernelConfig
from .cache import KernelCache, announce_interpreter, interpreting
from .emitter import Unsupported
from .group import Group, from_fusion, from_op, identifier
from .kernel import Kernel
from .lowering import LOWERING
from .memory import assign_storage
from .pointwise import build_pointwise
from .runtime import CompiledGraph, Launch, default_device
from .target import EMITTERS, TRITON

log = get_logger("triton")


def build_kernel(group: Group, policy: BlockPolicy, target: Target = TRITON,
                 config: KernelConfig | None = None) -> Kernel:
    """One kernel for `group`, by the emitter of the kind `target` classifies it as (raises
    Unsupported when no kind or emitter can take it); `config` (tunable kinds): its launch config."""
    own = LOWERING.get(group.ops[0].name) if len(group.ops) == 1 else None
    if own is not None and own.builds_kernel:  # an op with a kernel of its own (cumsum's scan)
        return own.build_kernel(group, policy)
    for op in group.ops:
        if op.name not in LOWERING:
            raise NotImplementedError(f"no Triton lowering for op '{op.name}'")
    if any(op.regions for op in group.ops):
        raise Unsupported("nested fusion regions")
    kind = target.classify(group.kernel_group())
    if kind.problem:  # (a merely wasteful group is still built: someone asked for it)
        raise Unsupported(kind.problem)
    emit = EMITTERS.get(kind.name)
    if emit is None:
        raise Unsupported(f"the Triton backend has no emitter for {kind.name} kernels")
    ins = [v.type.strides() for v in group.inputs]
    outs = [v.type.strides() for v in group.outputs]
    return emit(group, ins, outs, policy) if config is None else emit(group, ins, outs, policy, config)


def _span(shape: tuple[int, ...], strides) -> int:
    """Elements a strided tensor's storage must hold."""
    return 1 + sum((n - 1) * abs(s) for n, s in zip(shape, strides) if n > 0) if all(shape) else 1


def _arg_maker(group: Group, k: Kernel, device) -> Callable[[], list]:
    """Argument tensors for timing `k` alone: random floats, zero integers (always valid indices)."""
    def make() -> list:
        import torch

        from . import types as ty
        vals = list(group.inputs) + list(group.outputs)
        out = []
        for (name, d), v in zip(k.params, vals + [None, None]):
            n = (2 * len(k.checks) if name == "err" else k.workspace if name == "ws"
                 else _span(v.type.shape, v.type.strides()))
            t = ty.TORCH[d.name]
            out.append(torch.randn(n, device=device).to(t) if d.is_float else torch.zeros(n, dtype=t, device=device))
        return out
    return make


class _Lowerer:
    def __init__(self, policy: BlockPolicy, cache: KernelCache, target: Target, tuner: Tuner | None = None,
                 device=None):
        self.policy = policy
        self.tuner = tuner or Tuner()
        self.device = device
        self.tuning: dict[str, dict] = {}  # kernel name -> TuningRecord.to_dict()
        self.cache = cache
        self.target = target
        self.written: list[Value] = []  # values kernels write, in launch order
        self.shared: list[tuple[Value, Value]] = []  # (value, the value whose storage it uses)
        self.launches: list[Launch] = []
        self.kernels: dict[str, str] = {}
        self.consts: list[Value] = []
        self.const_data: list[np.ndarray] = []
        self.fallbacks: list[str] = []
        self.alias: dict[int, Value] = {}  # region args and fusion results -> the value they stand for
        self.by_code: dict[str, Kernel] = {}  # source with its name masked -> the first kernel loaded

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

    def tuned(self, group: Group, k: Kernel) -> Kernel:
        """`k`, or the same group built with the autotuner's config for it."""
        def build(config: KernelConfig) -> Kernel:
            return self.load(build_kernel(group, self.policy, self.target, config))
        if k.kind in TUNABLE:
            self.load(k)
            k, rec = self.tuner.tune(k, build, _arg_maker(group, k, self.device), self.cache)
            if rec is not None:
                self.tuning[k.name] = rec.to_dict()
        return k

    def load(self, k: Kernel) -> Kernel:
        """`k` with its @jit functions (and its `then`'s) loaded from the kernel cache. A kernel equal
        to an earlier one but for its name (a transformer's layers) runs the earlier one's functions:
        Triton compiles each once (GPT's 212 kernels are 51 distinct); its own source stays its own."""
        twin = self.by_code.get(k.code)
        if twin is not None and len(twin.chain()) == len(k.chain()):
            for part, t in zip(k.chain(), twin.chain()):
                part.fn = part.fn or t.fn
            return k
        for part in k.chain():
            if part.fn is None:
                part.fn = self.cache.load(part.name, part.source)
        self.by_code.setdefault(k.code, k)
        return k

    def add_kernel(self, k: Kernel, args: list[Value], writes: list[Value]) -> None:
        self.load(k)
        if k.workspace:  # a split's partials: a buffer of their own, dead once the chain has run
            ws = Block([TensorType((k.workspace,), dict(k.params)["ws"])]).args[0]
            args, writes = args + [ws], [ws, *writes]
        self.kernels[k.name] = k.source
        self.launches.append(Launch(k, args))
        self.written += writes

    # --- ops ----------------------------------------------------------------------------------------
    def lower(self, op: Op) -> None:
        if is_dense_constant(op):
            self.add_const(op.result, op.attrs["value"])
        elif self.target.is_view(op):
            self.shared.append((op.result, self.resolve(op.operands[0])))
        elif getattr(LOWERING.get(op.name), "runs_on_host", False):
            self.add_host_step(op)
        elif op.results and all(r.type.numel == 0 for r in op.results):
            self.written += list(op.results)  # nothing to compute (and no grid to index it by): no kernel
        elif op.name == "fusion":
            self.lower_fusion(op)
        else:
            self.lower_group(from_op(op, self.name(f"{op.name}_{len(self.kernels)}")), op.results)

    def add_host_step(self, op: Op) -> None:
        """A step between launches that is no kernel (a collective, a factorization): it runs on the host on the op's
        operands' and results' storage; not a kernel, so not in `kernels`."""
        low = LOWERING[op.name]
        k = Kernel(identifier(f"{op.name}_{len(self.launches)}"), "host", low.describe(), [], {}, (1,),
                   fn=low.host_step(op))
        self.launches.append(Launch(k, [self.resolve(v) for v in op.operands] + list(op.results)))
        self.written += list(op.results)

    def lower_group(self, group: Group, writes: list[Value]) -> None:
        try:
            k = self.tuned(group, build_kernel(group, self.policy, self.target))
        except Unsupported as e:
            raise NotImplementedError(f"cannot lower '{group.ops[0].name}' to Triton: {e}") from e
        self.add_kernel(k, [self.resolve(v) for v in group.inputs] + writes, writes)

    def lower_fusion(self, op: Op) -> None:
        if not op.results:
            return  # computes nothing anyone reads
        name = op.attrs.get("name")
        group = from_fusion(op, self.name(name or f"fusion_{len(self.kernels)}"))
        region = op.regions[0]
        for a, v in zip(region.args, op.operands):
            self.alias[id(a)] = v
        try:
            k = self.tuned(group, build_kernel(group, self.policy, self.target))
        except Unsupported as e:  # the group still runs, slower: say so
            log.warning("fusion @%s: one kernel per op instead (%s)", name, e)
            self.fallbacks.append(f"@{name}: {e}")
            self.lower_ops_of(op)
            return
        except Exception as e:
            if hasattr(e, "add_note"):
                e.add_note(f"while emitting the Triton kernel of fusion @{name}")
            raise
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
            self.shared.append((r, self.resolve(y)))
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


def compile_graph(graph: Graph, *, blocks: BlockPolicy | None = None, cache: KernelCache | None = None,
                  device=None, target: Target = TRITON, tuner: Tuner | None = None) -> CompiledGraph:
    """Lower every top-level op of `graph` to Triton kernels (see the module docstring); `tuner`
    chooses launch configs (default: `Tuner()`, timing on the GPU, fixed in the interpreter)."""
    import torch
    announce_interpreter()
    policy = blocks or BlockPolicy.for_device(interpreting())
    cache = cache or KernelCache()
    dev = torch.device(device) if device is not None else default_device()
    lw = _Lowerer(policy, cache, target, tuner, dev)
    for op in graph.ops:
        lw.lower(op)
    warm_up([ln.kernel for ln in lw.launches])
    plan = graph.analysis("memory_plan")
    if plan is None and target.memory_plan:
        plan = plan_memory(graph, target=target)
    planned, arenas = (plan.assignment, plan.buffers) if plan is not None else ({}, [])
    storage = assign_storage(graph.inputs, lw.consts, lw.written, lw.shared, graph.outputs, planned, arenas)
    cg = CompiledGraph(graph, lw.launches, storage, lw.const_data, [v.type for v in lw.consts], lw.kernels,
                       _copy_maker(policy, cache), dev, fallbacks=lw.fallbacks)
    cg.tuning = lw.tuning  # kernel name -> chosen config, candidates' times, how it was chosen
    log.debug("compiled @%s: %d kernels, %d launches, %d buffers, %d arena buffers", graph.name, len(lw.kernels),
              len(lw.launches), len(storage.buffers), len(arenas))
    return cg
