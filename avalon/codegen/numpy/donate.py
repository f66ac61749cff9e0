"""Donated inputs: a state update written straight into the storage of the state it replaces.

A training step reads every parameter and returns its update; the caller then copies each update
back into the parameter (`avalon.compiler.execute`). When the caller donates an input for an
output (`GeneratedExecutable.donated`, output index -> input index, as JAX's `donate_argnums`), the
generated code writes that output into the input's array instead, once nothing reads the old value
any more, and the write-back finds the value already in place: no fresh array, no copy.

Whether that is safe is decided here, on the graph, conservatively:

* `aliases(v)` is `v` and every value that may share its storage: results of views (reshape,
  transpose), lazy broadcasts, stop_gradient and reference-rule fallbacks, transitively. A result an emitter
  writes through `out=` (into a planned buffer, slot or fresh array) is its own storage.
* the output's producer must run at or after the last op that reads any alias; when it is that op
  itself, it must be one elementwise pass that reads the input directly (each element read before
  it is written), or a fused group, which checks the same inside (`region_safe`).
* the input (or an alias) must not itself be an output, and each input is donated once.

At run time `GeneratedExecutable` still checks that a donated array is writable, contiguous and
overlaps no other input, and donates a copy otherwise, so the decision here never has to know
where the caller's arrays came from.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from avalon.ir import Block, Graph, Op, Value

from .ops import ALIASING, EMITTERS


def _writes_fresh(op: Op) -> bool:
    """Whether the generator gives `op`'s result storage of its own (an accepting emitter, not a view)."""
    em = EMITTERS.get(op.name)
    return (bool(op.regions) or em is not None and em.accepts(op)) and op.name not in ALIASING


def aliases(roots: Iterable[Value], block: Block) -> set[Value]:
    """`roots` and the values of `block` that may share their storage (see the module docstring)."""
    seen = set(roots)
    todo = list(seen)
    while todo:
        v = todo.pop()
        for user, _ in v.uses:
            top = block.holder(user)
            if top is not None and top is user and not _writes_fresh(user):
                for r in user.results:
                    if r not in seen:
                        seen.add(r)
                        todo.append(r)
    return seen


def _last_read(values: set[Value], block: Block, index: dict[Op, int]) -> int:
    last = -1
    for v in values:
        for user, _ in v.uses:
            top = block.holder(user)
            if top is not None:
                last = max(last, index.get(top, len(index)))  # the terminator reads last
    return last


def _one_pass_over(op: Op, direct: Value, values: set[Value]) -> bool:
    """`op` is one elementwise pass that reads of `values` only `direct` itself (not a view of it)."""
    em = EMITTERS.get(op.name)
    return (not op.regions and em is not None and em.accepts(op) and em.inplace and op.has_trait("elementwise")
            and all(x is direct for x in op.operands if x in values))


def donations(graph: Graph, donated: dict[int, int]) -> dict[Value, int]:
    """Output value -> input index for the donations the generated code can honour (top level)."""
    body, outs = graph.body, graph.outputs
    count = Counter(outs)
    index = {op: k for k, op in enumerate(graph.ops)}
    used: set[int] = set()
    found: dict[Value, int] = {}
    for o, j in sorted(donated.items()):
        if not (0 <= o < len(outs) and 0 <= j < len(graph.inputs)) or j in used:
            continue
        v, a = outs[o], graph.inputs[j]
        op = v.op
        if count[v] != 1 or op is None or op.parent is not body or v.type != a.type or v.type.layout is not None:
            continue
        if op.name in ALIASING or op.name == "constant" or not op.regions and len(op.results) != 1:
            continue  # views and splats are not computed into storage; emitters write one result
        alias = aliases([a], body)
        if any(x in count for x in alias):
            continue
        last, p = _last_read(alias, body, index), index[op]
        if last > p or last == p and not op.regions and not _one_pass_over(op, a, alias):
            continue
        used.add(j)
        found[v] = j
    return found


def region_safe(block: Block, arg_values: list[Value], y: Value) -> bool:
    """Inside a fused group: may `y` be written into the donated storage (reached through the block
    arguments `arg_values`) where it is computed, rather than copied there when the group ends?"""
    if y.op is None or y.op.parent is not block or y.op.regions:
        return False
    alias = aliases(arg_values, block)
    index = {op: k for k, op in enumerate(block.ops)}
    last, q = _last_read(alias, block, index), index[y.op]
    if last < q:
        return True
    return last == q and len(arg_values) == 1 and _one_pass_over(y.op, arg_values[0], alias)
