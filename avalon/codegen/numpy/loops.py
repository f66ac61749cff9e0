"""The CPU target: groups as loop nests, so one compiled loop can compute a whole chain.

A Triton kernel holds one contraction *or* one row reduction; a compiled C loop (`native`) has no
such limit: after the one BLAS call of a group, a single loop over the result's shape can compute
every elementwise op of that shape and accumulate any number of sums of it, over any axes. The VAE's
reconstruction loss shows why that matters: decoder bias + sigmoid, the clamped log-likelihood and
its gradient, the loss sum and the bias gradient (a column sum) were four groups under the Triton
kinds (a contraction epilogue, a full reduction, a column reduction), so four passes over a 128x784
array with the values stored between them; as one group they are one loop that stores only the
gradient the next matmuls read.

`CPU` accepts every group the default kinds accept, and more: a group the default kinds refuse is a
`loop` when it is one loop nest (`LoopNest`). `schedule` then orders each group's ops so that the
ops of its loop come first and run as one compiled loop (`avalon.codegen.numpy.native`).
"""
from __future__ import annotations

import math
from collections.abc import Iterator

from avalon.ir import Block, Op
from avalon.passes.target import Issue, KernelGroup, KernelKind, Kind, Target, depends_on, has_trait, register_kind

_LOOP_TRAITS = ("elementwise", "reduction", "contraction", "movement")


def _loop_shape(g: KernelGroup) -> tuple[int, ...] | None:
    """The shape the group's loop runs over: the contraction's result, else the largest operand of a
    reduction or result of an elementwise op."""
    cons = g.with_trait("contraction")
    if cons:
        return tuple(cons[0].results[0].shape)
    shapes = [tuple(op.operands[0].shape) for op in g.with_trait("reduction")]
    shapes += [tuple(op.results[0].shape) for op in g.with_trait("elementwise")]
    return max(shapes, key=math.prod, default=None)


class LoopNest(KernelKind):
    """At most one contraction, whose operands are group inputs (BLAS runs first); elementwise ops
    over one shape; reductions of values of that shape over any axes (sums join the compiled loop,
    others run in numpy); and, reading those reductions, ops of any shape (they run after the loop)."""

    name = "loop"

    def claims(self, g: KernelGroup) -> bool:
        return all(any(has_trait(op, t) for t in _LOOP_TRAITS) or op.name == "constant" for op in g.ops)

    def issues(self, g: KernelGroup) -> Iterator[Issue]:
        cons = g.with_trait("contraction")
        if len(cons) > 1:
            yield Issue(f"a loop nest follows one contraction, the group holds {len(cons)}")
            return
        if cons and any(g.computed(v) for v in cons[0].operands):
            yield Issue(f"the operands of '{cons[0].name}' must be group inputs (the BLAS call runs first)")
            return
        shape = _loop_shape(g)
        after = depends_on(g.ops, set(g.with_trait("reduction")))
        for op in g.ops:
            if op in after or has_trait(op, "movement") or op.name == "constant" or op in cons:
                continue
            if has_trait(op, "reduction"):
                if tuple(op.operands[0].shape) != shape:
                    yield Issue(f"'{op.name}' reduces {op.operands[0].type}, the loop runs over {list(shape)}")
                    return
            elif tuple(op.results[0].shape) != shape:
                yield Issue(f"'{op.name}' computes {op.results[0].type} outside the loop over {list(shape)}")
                return


LOOP = register_kind(LoopNest())


class CpuTarget(Target):
    """The default kinds, and a `loop` nest where none of them takes a group."""

    def classify(self, g: KernelGroup) -> Kind:
        kind = super().classify(g)
        if kind or not LOOP.claims(g):
            return kind
        issues = tuple(LOOP.issues(g))
        return Kind(LOOP.name, issues) if not issues else kind


CPU = CpuTarget("cpu", memory_plan=True, max_group_ops=64)
"""A loop has no kernel's compile time to bound: a whole loss and its gradient may be one group."""


def schedule(block: Block, eligible, reducible) -> None:
    """Order a group's ops so its loop's ops come first: an op that is neither `eligible` over the
    loop's shape nor a `reducible` reduction of it waits until after them, unless one of them reads
    it (a topological order: nothing that stays early reads an op that waits)."""
    body = list(block.ops)
    shapes: dict[tuple[int, ...], int] = {}
    for op in body:
        s = eligible(op)
        if s is not None:
            shapes[s] = shapes.get(s, 0) + 1
    if not shapes:
        return
    shape = max(shapes, key=lambda s: (math.prod(s), shapes[s]))

    def in_loop(op: Op) -> bool:
        return eligible(op) == shape or reducible(op) == shape
    early: set[Op] = set()
    for op in reversed(body):
        if in_loop(op) or any(block.holder(u) in early for r in op.results for u, _ in r.uses):
            early.add(op)
    order = [op for op in body if op in early] + [op for op in body if op not in early]
    if order != body:
        block.reorder(order)
