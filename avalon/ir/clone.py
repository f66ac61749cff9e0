"""Copying ops and graphs with a value mapping (used by inlining, autodiff and passes)."""
from __future__ import annotations

from .core import Block, Graph, Op, Value


def clone_block(block: Block, mapping: dict[Value, Value] | None = None) -> Block:
    """A copy of `block` (args fresh, with the same names); `mapping` may pre-map outer values."""
    mapping = {} if mapping is None else mapping
    new = Block([a.type for a in block.args], [a.name for a in block.args])
    for a, b in zip(block.args, new.args):
        mapping[a] = b
    for op in block.ops:
        new.append(clone_op(op, mapping))
    if block.terminator is not None:
        t = new.set_terminator(block.terminator.name, [mapping[v] for v in block.terminator.operands])
        t.loc = block.terminator.loc
    return new


def clone_op(op: Op, mapping: dict[Value, Value]) -> Op:
    """A copy of `op` reading `mapping[operand]`; its results are added to `mapping`."""
    new = Op(op.name, [mapping[v] for v in op.operands], [r.type for r in op.results], dict(op.attrs),
             [clone_block(r) for r in op.regions], op.loc)
    for a, b in zip(op.results, new.results):
        mapping[a] = b
    return new


def clone_graph(graph: Graph) -> Graph:
    return Graph(graph.name, clone_block(graph.body))


def inline_regions(block: Block, name: str) -> bool:
    """Replace every `name` op of `block` (nested regions included) by the ops of its first region,
    in place; True when any was found. (A `custom_vjp` leaves its forward behind this way.)"""
    found = False
    for op in list(block.ops):
        for r in op.regions:
            found = inline_regions(r, name) or found
        if op.name != name:
            continue
        found = True
        mapping = dict(zip(op.regions[0].args, op.operands))
        body = clone_block(op.regions[0], mapping)
        for a, v in zip(body.args, op.operands):
            a.replace_all_uses_with(v)
        results = body.results
        body.terminator.drop_operands()
        for inner in list(body.ops):
            body.remove(inner)
            block.insert_before(op, inner)
        for r, y in zip(op.results, results):
            r.replace_all_uses_with(y)
        block.remove(op)
        op.drop_operands()
    return found
