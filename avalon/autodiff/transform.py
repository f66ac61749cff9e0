"""Reverse-mode autodiff as a graph-to-graph transformation.

`grad_graph(graph, wrt)` returns a NEW graph with the same inputs whose outputs are
`[loss, d loss / d input_i for i in wrt, *graph.outputs[1:]]`. Keeping the remaining outputs (an
auxiliary result, state updates such as batch norm's running statistics) lets the caller run
forward, backward and the state updates as one graph.

How: copy the forward ops (fusion regions inlined, so the rules see primitives only), seed the
loss's cotangent with 1, walk the forward ops in reverse calling each op's VJP rule (`rules.py`),
sum the cotangents of values used more than once with `add`, and finally sweep away the backward
ops whose results nobody reads (rules compute every operand's cotangent; the sweep keeps only
those on a path to a requested gradient). The result is an ordinary graph: it prints, parses,
verifies and runs like a traced one, and `grad_graph` of it gives second derivatives.
"""
from __future__ import annotations

import gc
from collections.abc import Sequence

from avalon.ir import Block, Builder, Graph, Op, Value
from avalon.ir.clone import clone_op, inline_regions

from .rules import INLINED, NON_DIFFERENTIABLE, NOT_IMPLEMENTED, VJP


class GradError(ValueError):
    """The graph cannot be differentiated as asked (a non-scalar loss, an integer input, ...)."""


def grad_graph(graph: Graph, wrt: Sequence[int] | None = None, *, name: str | None = None) -> Graph:
    """The gradient graph of `graph` (first output: a float scalar loss) w.r.t. inputs `wrt`
    (input indices; None means every floating-point input), named `name` or `grad_<graph name>`.

    Inputs that the loss does not depend on get a gradient of zeros. Integer and boolean inputs
    cannot be differentiated; asking for one raises GradError (callers skip them).
    """
    was = gc.isenabled()  # full collections walking the growing graph would make this superlinear
    gc.disable()
    try:
        return _grad_graph(graph, wrt, name)
    finally:
        if was:
            gc.enable()


def _grad_graph(graph: Graph, wrt: Sequence[int] | None, name: str | None) -> Graph:
    g = _flat_copy(graph, name or f"grad_{graph.name}")
    if not g.outputs:
        raise GradError(f"@{graph.name} has no outputs; its first output must be the scalar loss")
    loss = g.outputs[0]
    if loss.shape != ():
        raise GradError(f"the loss (first output of @{graph.name}) must be a scalar, got shape {loss.shape}")
    if not loss.dtype.is_float:
        raise GradError(f"the loss (first output of @{graph.name}) must be floating-point, got {loss.dtype}")
    wrt = [i for i, v in enumerate(g.inputs) if v.dtype.is_float] if wrt is None else list(wrt)
    for i in wrt:
        if not 0 <= i < len(g.inputs):
            raise GradError(f"wrt index {i} is out of range: @{graph.name} has {len(g.inputs)} inputs")
        v = g.inputs[i]
        if not v.dtype.is_float:
            raise GradError(f"input {i} ('{v.name}') is {v.type}; only floating-point inputs have gradients")

    forward = list(g.ops)
    active = _active_values([g.inputs[i] for i in wrt], forward)
    b = Builder(g)
    ct: dict[Value, Value] = {loss: b.constant(1.0, (), loss.dtype)}
    for op in reversed(forward):
        if op.name == "custom_vjp":
            _custom_vjp(b, op, ct, active)
            continue
        gy = ct.get(op.results[0]) if len(op.results) == 1 else None
        if op.name in NOT_IMPLEMENTED and gy is not None and any(v in active for v in op.operands):
            raise GradError(f"{NOT_IMPLEMENTED[op.name]}{f' (from {op.loc})' if op.loc else ''}")
        if gy is None or not any(v in active for v in op.operands) or op.name in NON_DIFFERENTIABLE:
            continue
        rule = VJP.get(op.name)
        if rule is None:
            raise NotImplementedError(f"no VJP rule for op '{op.name}'"
                                      f"{f' (from {op.loc})' if op.loc else ''}; add one to avalon.autodiff.VJP "
                                      "or list the op in NON_DIFFERENTIABLE")
        b.loc = op.loc
        cts = list(rule(b, op, gy))
        if len(cts) != len(op.operands):
            raise RuntimeError(f"VJP rule of '{op.name}' returned {len(cts)} cotangents "
                               f"for {len(op.operands)} operands")
        for i, (v, c) in enumerate(zip(op.operands, cts)):
            if c is None or v not in active:
                continue
            if (c.shape, c.dtype) != (v.shape, v.dtype):
                raise RuntimeError(f"VJP rule of '{op.name}' gave operand #{i} a cotangent of type {c.type}, "
                                   f"expected {v.type}")
            ct[v] = b("add", ct[v], c) if v in ct else c
    b.loc = None
    grads = []
    for i in wrt:
        v = g.inputs[i]
        grads.append(ct[v] if v in ct else b.constant(0.0, v.shape, v.dtype))
    g.set_outputs([loss, *grads, *g.outputs[1:]])
    inline_regions(g.body, "custom_vjp")  # their forward, now that the backward is written
    _sweep_dead(g)
    return g


def _custom_vjp(b: Builder, op: Op, ct: dict[Value, Value], active: set[Value]) -> None:
    """A user-defined gradient: the backward region, inlined on (saved results, the outputs'
    cotangents, zeros where an output has none), gives the cotangents of the `grads` operands."""
    n = op.attrs["outputs"]
    gys = [ct.get(r) for r in op.results[:n]]
    if all(gy is None for gy in gys) or not any(v in active for v in op.operands):
        return
    b.loc = op.loc
    gys = [gy if gy is not None else b.constant(0.0, r.shape, r.dtype) for gy, r in zip(gys, op.results)]
    region = op.regions[1]
    mapping = dict(zip(region.args, [*op.results[n:], *gys]))
    for inner in region.ops:
        b.insert(clone_op(inner, mapping))
    for i, y in zip(op.attrs["grads"], region.results):
        v, c = op.operands[i], mapping[y]
        if v in active:
            ct[v] = b("add", ct[v], c) if v in ct else c


def _flat_copy(graph: Graph, name: str) -> Graph:
    """A copy of `graph` with every region op (fusion group) replaced by the ops of its region."""
    body = Block([a.type for a in graph.inputs], [a.name for a in graph.inputs])
    mapping = dict(zip(graph.inputs, body.args))
    _copy_ops(graph.body.ops, mapping, body)
    g = Graph(name, body)
    g.set_outputs([mapping[v] for v in graph.outputs])
    return g


def _copy_ops(ops: Sequence[Op], mapping: dict[Value, Value], block: Block) -> None:
    for op in ops:
        if not op.regions or op.name == "custom_vjp":  # (differentiated by its own backward region)
            block.append(clone_op(op, mapping))
            continue
        if op.name not in INLINED and len(op.regions) != 1:
            raise NotImplementedError(f"cannot differentiate region op '{op.name}'")
        region = op.regions[0]
        inner = dict(mapping)
        inner.update(zip(region.args, (mapping[v] for v in op.operands)))
        _copy_ops(region.ops, inner, block)
        for r, y in zip(op.results, region.results):
            mapping[r] = inner[y]


def _active_values(seeds: list[Value], ops: list[Op]) -> set[Value]:
    """Float values that depend on a seed through differentiable ops: the only ones needing cotangents."""
    active = set(seeds)
    for op in ops:
        blocked = op.name in NON_DIFFERENTIABLE and op.name not in NOT_IMPLEMENTED  # (those raise when reached)
        if blocked or not any(v in active for v in op.operands):
            continue
        active.update(r for r in op.results if r.dtype.is_float)
    return active


def _sweep_dead(g: Graph) -> None:
    """Drop ops whose results are unused (every primitive is pure), last to first, in one pass."""
    dead: set[int] = set()
    for op in reversed(g.ops):
        if all(not r.uses for r in op.results):
            op.drop_operands()
            op.parent = None
            dead.add(id(op))
    if dead:
        g.body.reorder([op for op in g.ops if id(op) not in dead])
