"""Helpers for tests and experiments: build fused graphs by hand while no fusion pass decides them.

`fuse(graph, name)` returns a copy of `graph` whose ops (or the ops at `start:stop`) are moved into
one `fusion` op, exactly the shape the fusion pass produces, so each emitter can be driven from
an ordinary graph built with `Builder` and checked against the reference run of the original.
"""
from __future__ import annotations

from avalon.ir.builder import Builder
from avalon.ir.core import Block, Graph, Op, Value


def _clone(op: Op, env: dict[int, Value]) -> Op:
    new = Op(op.name, [env[id(v)] for v in op.operands], [r.type for r in op.results], dict(op.attrs), loc=op.loc)
    for r, n in zip(op.results, new.results):
        env[id(r)] = n
    for region in op.regions:
        new.add_region(_clone_block(region))
    return new


def _clone_block(block: Block) -> Block:
    nb = Block([a.type for a in block.args], [a.name for a in block.args])
    env = {id(a): n for a, n in zip(block.args, nb.args)}
    for op in block.ops:
        nb.append(_clone(op, env))
    nb.set_terminator(block.terminator.name, [env[id(v)] for v in block.results])
    return nb


def fuse(graph: Graph, name: str = "fused_0", start: int = 0, stop: int | None = None) -> Graph:
    """A copy of `graph` with ops[start:stop] in one fusion op named `name` (values they read from
    outside become its operands; values used later or returned become its results)."""
    ops = graph.ops
    stop = len(ops) if stop is None else stop
    inside = ops[start:stop]
    inside_ids = {id(r) for op in inside for r in op.results}
    out = Graph(graph.name)
    env: dict[int, Value] = {}
    for v in graph.inputs:
        env[id(v)] = out.add_input(v.type, v.name)
    b = Builder(out)
    for op in ops[:start]:
        b.insert(_clone(op, env))
    # operands: values defined outside the group, in first-use order
    operands: list[Value] = []
    for op in inside:
        for v in op.operands:
            if id(v) not in inside_ids and all(v is not o for o in operands):
                operands.append(v)
    # results: group values used after the group or returned
    later = [v for op in ops[stop:] for v in op.operands] + list(graph.outputs)
    results: list[Value] = []
    for op in inside:
        for r in op.results:
            if any(r is v for v in later) and all(r is not x for x in results):
                results.append(r)
    region = Block([v.type for v in operands])
    renv = {id(v): a for v, a in zip(operands, region.args)}
    for op in inside:
        region.append(_clone(op, renv))
    region.set_terminator("yield", [renv[id(r)] for r in results])
    f = b.fusion(name, [env[id(v)] for v in operands], region)
    for r, n in zip(results, f.results):
        env[id(r)] = n
    for op in ops[stop:]:
        b.insert(_clone(op, env))
    out.set_outputs([env[id(v)] for v in graph.outputs])
    return out
