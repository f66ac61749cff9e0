"""`layout`: choose memory layouts and record them in the IR types (`TensorType.layout`).

Values never change: a layout only says in which order a tensor's elements sit in memory
(`tensor<8x20x24x24xf32, layout = [0, 2, 3, 1]>` is NCHW data stored NHWC). The numpy
interpreter ignores layouts; the Triton backend reads and writes through `TensorType.strides()`.
Two rewrites, each an option:

* `channels-last`: the results of convolutions and pooling (ops with the `nchw` trait) are
  stored NHWC, and the choice spreads forward through elementwise ops (bias add, relu), so a
  conv -> bias -> relu -> pool chain reads and writes one order. For implicit-GEMM convolutions
  the channels are the contraction dim, which is then contiguous. A value stays row-major when any
  consumer might not read strided data (the target's `reads_strided`; view ops such as `reshape`,
  which backends may lower to a metadata-only view of contiguous storage) or when it is a graph
  output (callers get row-major arrays) or a graph input (callers hand in row-major arrays).
* `fold-transposes`: a top-level `transpose` whose users all read strided data (matmul, conv,
  elementwise, reductions, fused groups) gets the layout that makes its result the very bytes of
  its operand (`transpose %w {perm = [1, 0]} : tensor<4x3xf32, layout = [1, 0]>`): a view, so a
  backend emits no copy and the matmul reads the weight with swapped strides.

Fused groups are handled as units: a group is a source of channels-last when its region holds a
convolution or pooling, and passes it on when its region is elementwise; region argument and yield
types are kept equal to the group's operand and result types, as the verifier requires.

Run it late (after `fuse`): passes that rebuild ops re-infer row-major types.
"""
from __future__ import annotations

from avalon.ir import Graph, Op, Value

from .registry import register
from .target import Target, target_or_default

CHANNELS_LAST = (0, 2, 3, 1)


def reads_strided(op: Op, target: Target | None = None) -> bool:
    """Does `target` (default: the default target) load `op`'s operands through strides?"""
    return target_or_default(target).reads_strided(op)


def _pointwise(op: Op) -> bool:
    """Elementwise, or a fused group of elementwise ops (constants and their broadcasts allowed)."""
    if op.has_trait("elementwise"):
        return True
    if not op.regions:
        return False
    for inner in op.regions[0].walk():
        if inner.has_trait("elementwise") or inner.name == "constant":
            continue
        if inner.name == "broadcast" and inner.operands[0].op is not None and inner.operands[0].op.name == "constant":
            continue
        return False
    return True


def _is_source(op: Op) -> bool:
    """Makes an NCHW image activation (a conv or pool, or a group holding one)."""
    if op.has_trait("nchw"):
        return True
    return bool(op.regions) and any(inner.has_trait("nchw") for inner in op.regions[0].walk())


def _settable(op: Op, i: int) -> bool:
    """Result i can take a layout: a plain op, or a group yielding a value computed inside it."""
    if not op.regions:
        return True
    y = op.regions[0].results[i]
    return y.op is not None


def _channels_last(graph: Graph, target: Target) -> set[Value]:
    """The values to store NHWC: grown forward from conv/pool results, pruned to a fixed point."""
    outputs = set(graph.outputs)
    blocked: set[Value] = set()
    while True:
        chosen: set[Value] = set()
        for op in graph.ops:
            source = _is_source(op)
            passes_on = _pointwise(op) and any(v in chosen for v in op.operands)
            if not (source or passes_on):
                continue
            for i, r in enumerate(op.results):
                if r.type.rank == 4 and r not in blocked and _settable(op, i):
                    chosen.add(r)
        bad = {v for v in chosen if v in outputs or not all(target.reads_strided(u) for u in v.users)}
        if not bad:
            return chosen
        blocked |= bad


def _view_layout(transpose: Op) -> tuple[int, ...]:
    """The layout that makes `transpose`'s result the same bytes as its operand."""
    perm = list(transpose.attrs["perm"])
    src = transpose.operands[0].type
    order = src.layout or tuple(range(src.rank))
    inverse = [perm.index(k) for k in range(len(perm))]
    return tuple(inverse[k] for k in order)


def is_view(op: Op, target: Target | None = None) -> bool:
    """Does `target` (default: the default target) alias `op`'s result to its operand's storage?"""
    return target_or_default(target).is_view(op)


def _sync_regions(graph: Graph) -> None:
    """Region argument / yielded value types follow the group's operand / result types."""
    for op in graph.ops:
        if not op.regions:
            continue
        region = op.regions[0]
        for a, v in zip(region.args, op.operands):
            a.type = v.type
        for y, r in zip(region.results, op.results):
            if y.op is not None:
                y.type = r.type


def _set(v: Value, layout: tuple[int, ...] | None) -> bool:
    new = v.type.with_layout(layout)
    if new == v.type:
        return False
    v.type = new
    return True


@register("layout")
def layout(graph: Graph, *, channels_last: bool = True, fold_transposes: bool = True,
           target: Target | None = None) -> bool:
    """Store conv/pool activations channels-last and make transposes feeding strided readers views
    (which ops read strided and what is a view: the pipeline's target)."""
    t = target_or_default(target)
    changed = False
    if channels_last:
        for v in _channels_last(graph, t):
            changed |= _set(v, CHANNELS_LAST)
    if fold_transposes:
        outputs = set(graph.outputs)
        for op in graph.ops:
            r = op.results[0] if op.name == "transpose" else None
            if r is None or r in outputs or t.is_view(op) or not r.users \
                    or not all(t.reads_strided(u) for u in r.users):
                continue
            changed |= _set(r, _view_layout(op))
    if changed:
        _sync_regions(graph)
    return changed
