"""Helpers for testing the compiler without depending on the fusion heuristics.

`outline(graph, ops, name)` turns a set of top-level ops into one `fusion` group by hand, and
`group_chains` is a tiny deterministic grouping pass (each `add` feeding only a unary elementwise
op, or a lone unary op, becomes a group). Tests of `av.compile`, check mode and the debug
directory use them to get fused groups whatever the real `fuse` pass decides.
"""
from __future__ import annotations

from avalon.channels import get_logger
from avalon.ir import Graph, Op
from avalon.ir.fusion import outline as _outline

log = get_logger("fusion")


def _unary(op: Op) -> bool:
    """A one-operand float elementwise op (relu, exp, tanh, ...), told by its traits."""
    return op.has_trait("elementwise") and len(op.operands) == 1 and op.results[0].dtype.is_float


def outline(graph: Graph, ops: list[Op], name: str) -> Op:
    """Replace `ops` (top-level, in order) by one fusion op `@name` computing the same values.
    The group goes where the last op was: its operands are defined before that point and every use
    of its results comes after it."""
    return _outline(ops, name)


def group_chains(graph: Graph) -> bool:
    """Group `add -> unary` pairs (the add used only there) and lone unary ops; logs each group on
    the `avalon.fusion` channel, as the real fusion pass does."""
    changed = False
    k = 0
    for op in list(graph.ops):
        if op.parent is None or not _unary(op):
            continue
        src = op.operands[0].op
        pair = src is not None and src.parent is graph.body and src.name == "add" and src.results[0].users == [op]
        ops = [src, op] if pair else [op]
        name = "fused_" + "_".join(o.name for o in ops) + f"_{k}"
        outline(graph, ops, name)
        log.debug("group @%s: %s", name, " -> ".join(o.name for o in ops))
        k += 1
        changed = True
    return changed
