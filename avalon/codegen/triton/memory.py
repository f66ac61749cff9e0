"""Buffer planning: which storage each value lives in, reusing buffers whose values are dead.

The plan is made once per compiled graph from the launch order. A value's storage is a graph input,
an uploaded constant, or a pooled buffer; a zero-copy reshape shares its operand's storage. After
each launch, storage none of whose values is read later returns to a free list (per dtype) and
the next launch's outputs take the best fitting free buffer (growing it if none is big enough).
Graph outputs always get buffers of their own, since they are handed to the caller. A launch's
outputs never reuse its own inputs' storage (kernels are not in-place safe in general).

When the `memory-plan` pass has annotated the graph (`graph.memory_plan`, current), its decisions
win for the values it planned: they live in its byte arenas (kind "arena"), in place where it says
so; values it does not know (those of a fused group lowered op by op) are planned here.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from avalon.ir.core import Value
from avalon.ir.dtypes import DType


@dataclass
class Step:
    reads: list[Value]
    writes: list[Value]
    alias_of: Value | None = None  # writes[0] shares this value's storage (zero-copy reshape)


@dataclass
class Storage:
    kind: str  # "input" | "const" | "buffer" (typed pool) | "arena" (bytes, from the memory-plan pass)
    index: int


@dataclass
class MemoryPlan:
    storage: dict[int, Storage] = field(default_factory=dict)  # id(value) -> where it lives
    buffers: list[tuple[DType, int]] = field(default_factory=list)  # pooled buffers: dtype, elements
    arenas: list[int] = field(default_factory=list)  # byte sizes of the memory-plan pass's buffers
    output_buffers: int = 0  # how many of the buffers are graph outputs (never reused)

    def of(self, v: Value) -> Storage:
        return self.storage[id(v)]

    @property
    def pooled_elements(self) -> int:
        return sum(n for _, n in self.buffers)


def plan_memory(inputs: Sequence[Value], consts: Sequence[Value], steps: Sequence[Step],
                outputs: Sequence[Value], preassigned: dict[int, int] | None = None,
                arenas: Sequence[int] = ()) -> MemoryPlan:
    plan = MemoryPlan(arenas=list(arenas))
    preassigned = preassigned or {}
    root: dict[int, int] = {}  # id(value) -> id(root value whose storage it uses)
    for i, v in enumerate(inputs):
        plan.storage[id(v)] = Storage("input", i)
        root[id(v)] = id(v)
    for i, v in enumerate(consts):
        plan.storage[id(v)] = Storage("const", i)
        root[id(v)] = id(v)
    for s in steps:
        for w in s.writes:
            root[id(w)] = root[id(s.alias_of)] if s.alias_of is not None else id(w)
    kept = {root[id(v)] for v in outputs if id(v) in root}
    last: dict[int, int] = {}
    for k, s in enumerate(steps):
        for v in [*s.reads, *([s.alias_of] if s.alias_of is not None else [])]:
            last[root[id(v)]] = k
        for w in s.writes:
            last.setdefault(root[id(w)], k)
    free: list[int] = []
    owner: dict[int, int] = {}  # root id -> buffer
    for k, s in enumerate(steps):
        for w in s.writes:
            if s.alias_of is not None:
                plan.storage[id(w)] = plan.storage[id(s.alias_of)]
                continue
            n = w.type.numel
            if id(w) in preassigned and id(w) not in kept:
                plan.storage[id(w)] = Storage("arena", preassigned[id(w)])
                continue
            if id(w) in kept:
                b = _new(plan, w.dtype, n)
                plan.output_buffers += 1
            else:
                b = _take(plan, free, w.dtype, n)
            owner[id(w)] = b
            plan.storage[id(w)] = Storage("buffer", b)
        for r, b in list(owner.items()):
            if last.get(r, k) <= k and r not in kept:
                free.append(b)
                del owner[r]
    return plan


def _new(plan: MemoryPlan, dtype: DType, n: int) -> int:
    plan.buffers.append((dtype, n))
    return len(plan.buffers) - 1


def _take(plan: MemoryPlan, free: list[int], dtype: DType, n: int) -> int:
    same = [b for b in free if plan.buffers[b][0] == dtype]
    if not same:
        return _new(plan, dtype, n)
    fits = [b for b in same if plan.buffers[b][1] >= n]
    b = min(fits, key=lambda b: plan.buffers[b][1]) if fits else max(same, key=lambda b: plan.buffers[b][1])
    free.remove(b)
    plan.buffers[b] = (dtype, max(n, plan.buffers[b][1]))
    return b
