"""Fused groups as the IR sees them: a `fusion` op holds one region with the ops it replaced.

These helpers are shared by every layer that handles groups (the fuse pass, check mode, both
backends, the debug dumps), so a group is named, listed and turned into a function one way.
"""
from __future__ import annotations

from .clone import clone_block, clone_op
from .core import Graph, Op


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
