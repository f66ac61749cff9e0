"""Fused groups as the IR sees them: a `fusion` op holds one region with the ops it replaced.

These helpers are shared by every layer that handles groups (the fuse pass, check mode, both
backends, the debug dumps), so a group is named, listed and turned into a function one way.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .builder import make_op
from .clone import clone_block, clone_op
from .core import Block, Graph, Op, Value


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


def is_splat_constant(op: Op) -> bool:
    """A constant holding one scalar (however large its shape): cheap to recompute anywhere."""
    return op.name == "constant" and np.asarray(op.attrs["value"]).size == 1


def is_dense_constant(op: Op) -> bool:
    """A constant holding an array: data a kernel must read, never a literal it can inline."""
    return op.name == "constant" and not is_splat_constant(op)


def outline(ops: Sequence[Op], name: str, *, clone: Callable[[Op], bool] = lambda op: False,
            outputs: Sequence[Value] | None = None, place: bool = True) -> Op:
    """Make the top-level `ops` (in program order) one fusion op `@name` computing the same values.

    Operands of `ops` made by a producer outside them for which `clone(producer)` holds are
    computed inside the region (the producer is cloned, its own operands resolved the same way);
    every other value read from outside becomes an operand, in first-use order. The group yields
    `outputs` (default: results of `ops` used outside them); their uses now read the group's
    results. With `place`, the group goes where the last op was and `ops` are erased; otherwise the
    caller places it (and drops `ops`)."""
    if not ops:
        raise ValueError(f"outline @{name}: no ops to put in the group")
    members = set(ops)
    region = Block([])
    mapping: dict[Value, Value] = {}
    inputs: list[Value] = []

    def resolve(v: Value) -> None:
        if v in mapping:
            return
        p = v.op
        if p is not None and p not in members and clone(p):
            for x in p.operands:
                resolve(x)
            region.append(clone_op(p, mapping))
        else:
            mapping[v] = region.add_arg(v.type)
            inputs.append(v)

    for op in ops:
        for v in op.operands:
            resolve(v)
        region.append(clone_op(op, mapping))
    if outputs is None:
        outputs = [r for op in ops for r in op.results if any(u not in members for u, _ in r.uses)]
    region.set_terminator("yield", [mapping[v] for v in outputs])
    fused = make_op("fusion", inputs, {"name": name}, ops[0].loc, result_types=[v.type for v in outputs])
    fused.add_region(region)
    for old, new in zip(outputs, fused.results):
        old.replace_all_uses_with(new)
    if place:
        ops[-1].parent.insert_before(ops[-1], fused)
        for op in reversed(ops):
            op.erase()
    return fused
