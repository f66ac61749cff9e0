"""The storage map: where each value of a compiled graph lives when its kernels run.

Buffer reuse is decided once, by the `memory-plan` pass (`avalon.passes.memory_plan.MemoryPlan`):
the top-level intermediates it planned live in its byte arenas (kind "arena"), in place where it
says so. Everything else is placed here without reuse: graph inputs and uploaded constants are
their own storage, a zero-copy view shares its operand's, and the values the plan does not know
(graph outputs, handed to the caller; intermediates of a fused group lowered op by op) each get a
buffer of their own (kind "buffer").
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from avalon.ir.core import Value
from avalon.ir.dtypes import DType


@dataclass
class Storage:
    kind: str  # "input" | "const" | "buffer" (its own, typed) | "arena" (bytes, from the memory plan)
    index: int


@dataclass
class StorageMap:
    where: dict[int, Storage] = field(default_factory=dict)  # id(value) -> where it lives
    buffers: list[tuple[DType, int]] = field(default_factory=list)  # own buffers: dtype, elements
    arenas: list[int] = field(default_factory=list)  # byte sizes of the memory plan's buffers

    def of(self, v: Value) -> Storage:
        return self.where[id(v)]


def assign_storage(inputs: Sequence[Value], consts: Sequence[Value], written: Sequence[Value],
                   shared: Sequence[tuple[Value, Value]], outputs: Sequence[Value],
                   planned: Mapping[Value, int], arenas: Sequence[int]) -> StorageMap:
    """Place every value: `written` are the values kernels write, in launch order; `shared` pairs a
    value with the one whose storage it uses (views, results of groups lowered op by op);
    `planned` is the memory plan's assignment of top-level values to its `arenas`."""
    sm = StorageMap(arenas=list(arenas))
    for i, v in enumerate(inputs):
        sm.where[id(v)] = Storage("input", i)
    for i, v in enumerate(consts):
        sm.where[id(v)] = Storage("const", i)
    src = {id(v): s for v, s in shared}

    def root(v: Value) -> Value:
        while id(v) in src:
            v = src[id(v)]
        return v

    returned = {id(root(v)) for v in outputs}  # the caller's: never in an arena others reuse
    for w in written:
        if id(w) in sm.where:
            continue
        b = planned.get(w)
        if b is not None and id(w) not in returned:
            sm.where[id(w)] = Storage("arena", b)
        else:
            sm.buffers.append((w.dtype, w.type.numel))
            sm.where[id(w)] = Storage("buffer", len(sm.buffers) - 1)
    for v, _ in shared:
        r = root(v)
        if id(r) in sm.where:
            sm.where[id(v)] = sm.where[id(r)]
    return sm
