"""Constant hoisting: large values a compiled graph computes from none of its inputs (av.fft's DFT
matrices from iota, a causal mask from shapes) are computed once, when the function compiles, and fed
to every call as extra inputs after the others. Where such a value is a broadcast, transpose or reshape
of a smaller one (a batched product expanding a 32 x 32 DFT matrix), the smaller source is what is
hoisted: the expansion stays in the graph, cheap and fusable, instead of a large copy fed every call.

Why here and not in `canonicalize`: folding writes the values into the IR as dense constants, which
its size limit keeps small so that printed IR and debug dumps stay readable; a hoisted value stays out
of the IR text (an input named `hoisted_N`), and the backend sees an ordinary input, so nothing below
the driver changes. The values are computed with the reference rules (`avalon.ir.reference.evaluate`),
so they hold exactly what the interpreter would compute, and they depend only on the graph, which the
signature determines: a cached entry may keep them.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..ir import Graph, Op, Value
from ..ir.reference import evaluate

MIN_ELEMENTS = 4096
"""Smaller input-free values are left to the graph (canonicalize folds the smallest): computing them is
cheap, and an input costs a launch argument and a buffer."""


_LAYOUT = ("broadcast", "transpose", "reshape")
"""Ops that only expand or rearrange a value: a batched product broadcasts a small DFT matrix to the batch,
and hoisting that expansion would feed a large copy of a small value every call."""


def _free_ops(graph: Graph) -> set[int]:
    """ids of the top-level ops computed from no graph input: pure ops with one result and no region
    whose operands are all such ops' results (a constant or iota has none)."""
    free: set[int] = set()
    for op in graph.ops:
        if (op.regions or len(op.results) != 1 or not op.has_trait("pure")
                or any(v.op is None or id(v.op) not in free for v in op.operands)):
            continue
        free.add(id(op))
    return free


def hoist_constants(graph: Graph) -> list[np.ndarray]:
    """Replace each large input-free value that an input-dependent op (or the graph's terminator) uses
    by a new graph input; the values, in the order of the new inputs."""
    free = _free_ops(graph)
    if not free:
        return []
    outputs = {id(v) for v in graph.outputs}
    frontier: list[Value] = []
    for op in graph.ops:
        if id(op) not in free or op.name in ("constant", "iota"):
            continue
        v = op.results[0]
        if math.prod(v.type.shape) < MIN_ELEMENTS or id(v) in outputs:
            continue
        if any(id(u) not in free for u in v.users):
            while v.op.name in _LAYOUT:  # layout ops stay in the graph (cheap, fusable): hoist their source
                v = v.op.operands[0]
            if v.op.name not in ("constant", "iota") and math.prod(v.type.shape) > 1 \
                    and all(v is not f for f in frontier):
                frontier.append(v)  # (the size that counts is what the graph would compute per call)
    if not frontier:
        return []
    values: dict[int, np.ndarray] = {}

    def value(v: Value) -> np.ndarray:
        if id(v) not in values:
            op: Op = v.op
            values[id(v)] = evaluate(op.name, op.attrs, [value(a) for a in op.operands], v.type)
        return values[id(v)]
    arrays = [np.ascontiguousarray(value(v)).reshape(v.type.shape) for v in frontier]  # before any rewiring
    for k, v in enumerate(frontier):
        v.replace_all_uses_with(graph.add_input(v.type, f"hoisted_{k}"))
    for op in reversed(list(graph.ops)):  # the cones now feed nothing (DCE would drop them too)
        if id(op) in free and not any(u for r in op.results for u in r.users):
            op.erase()
    return arrays


def as_inputs(arrays: list[np.ndarray], types: list[Any], device: Any) -> list[Any]:
    """The hoisted arrays as tensors on the device the call's inputs live on."""
    from ..tensor import Tensor
    return [Tensor(a, dtype=t.dtype, device=device) for a, t in zip(arrays, types)]
