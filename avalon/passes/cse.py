"""cse: common-subexpression elimination. Pure ops with the same name, operands, attributes, result
types and region bodies compute the same values, so the later one is replaced by the earlier one.

`random` ops are pure too: the same seed and attributes give the same numbers, so merging them is
exactly right. Operand order does not matter for commutative ops (`add(a, b)` = `add(b, a)`).
Region bodies are compared structurally (same ops in the same order on the same local values), and
each region is its own scope, since a region cannot use values from outside it.
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np

from avalon.ir import Block, Graph, Op, Value

from .registry import register


def freeze(v: Any) -> Any:
    """A hashable key for an attribute value that tells apart what prints differently
    (1 vs 1.0 vs true, 0.0 vs -0.0), while two nans with the same bits compare equal."""
    if isinstance(v, np.ndarray):
        return ("array", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, (bool, np.bool_)):
        return ("bool", bool(v))
    if isinstance(v, (int, np.integer)):
        return ("int", int(v))
    if isinstance(v, (float, np.floating)):
        return ("float", struct.pack("<d", float(v)))
    if isinstance(v, (list, tuple)):
        return ("list", tuple(freeze(x) for x in v))
    if isinstance(v, dict):
        return ("dict", tuple(sorted((k, freeze(x)) for k, x in v.items())))
    return (type(v).__name__, v)


def region_key(block: Block) -> tuple:
    """The structure of a region body with values numbered locally, so equal bodies get equal keys."""
    local: dict[Value, Any] = {a: i for i, a in enumerate(block.args)}
    items: list[Any] = [tuple(a.type for a in block.args)]
    for op in block.ops:
        items.append(op_key(op, [local.get(v, ("outside", id(v))) for v in op.operands]))
        for r in op.results:
            local[r] = len(local)
    items.append(tuple(local.get(v, ("outside", id(v))) for v in block.results))
    return tuple(items)


def op_key(op: Op, operand_keys: list[Any]) -> tuple:
    """What makes two ops compute the same thing, given keys for their operands."""
    operands = tuple(sorted(operand_keys, key=repr)) if op.has_trait("commutative") else tuple(operand_keys)
    attrs = tuple(sorted((k, freeze(v)) for k, v in op.attrs.items()))
    return (op.name, operands, attrs, tuple(r.type for r in op.results),
            tuple(region_key(r) for r in op.regions))


def cse_block(block: Block) -> bool:
    """Merge duplicate pure ops in `block` (and, separately, inside each region under it)."""
    seen: dict[tuple, Op] = {}
    changed = False
    for op in list(block.ops):
        for region in op.regions:
            changed |= cse_block(region)
        if not op.has_trait("pure"):
            continue
        key = op_key(op, [id(v) for v in op.operands])
        first = seen.setdefault(key, op)
        if first is op:
            continue
        for r, keep in zip(op.results, first.results):
            r.replace_all_uses_with(keep)
        op.erase()
        changed = True
    return changed


@register("cse")
def cse(graph: Graph) -> bool:
    """Merge pure ops that compute the same values (same op, operands, attributes and regions)."""
    return cse_block(graph.body)
