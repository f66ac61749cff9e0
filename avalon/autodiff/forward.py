"""Forward-mode autodiff as a graph-to-graph transformation.

`jvp_graph(graph, wrt)` returns a NEW graph whose inputs are `graph`'s inputs followed by one
tangent per input in `wrt` (same type), and whose outputs are `graph`'s outputs followed by the
tangent of each floating-point output, in order: `J @ tangents`. Integer and boolean outputs get no
tangent (they are piecewise constant: the caller, torch.func.jvp's counterpart, hands back zeros
for them). An output that does not depend on the tangents gets zeros.

How: copy the ops (fusion regions inlined, so the rules see primitives only) and walk them in
order; after each op with a tangent on some operand, its JVP rule (`forward_rules.py`) builds the
tangents of its results, right there, so a tangent is computed as soon as its primal is and the
forward values it reads can be freed early. Nothing is accumulated and nothing walks backwards,
so one pass costs about as much as the forward itself, per tangent direction. The result is an
ordinary graph: it prints, parses, verifies and runs like a traced one; `grad_graph` of it gives
reverse-over-forward, `jvp_graph` of a gradient graph gives forward-over-reverse (Hessian-vector
products), and `batch_graph` of it gives many directions at once (Jacobians).

A user-defined gradient (`custom_vjp`, avalon/autograd.py) has no forward rule: its forward region
is inlined and differentiated like any other ops, so forward mode gives the derivative of what the
forward computes and never runs the user's backward (JAX raises for a custom_vjp under jvp; torch
requires a separate `jvp` staticmethod). Where the backward is the forward's true derivative written
for speed or stability (the usual case) the two agree; where it deliberately differs (a
straight-through estimator) forward mode does not follow it. That is said once per graph on the
`avalon.autodiff` channel.
"""
from __future__ import annotations

import gc
from collections.abc import Sequence

from avalon.channels import get_logger
from avalon.ir import Builder, Graph, Value
from avalon.ir.clone import inline_regions

from .forward_rules import JVP
from .rules import NON_DIFFERENTIABLE
from .transform import GradError, _flat_copy, _sweep_dead

log = get_logger("autodiff")


def jvp_graph(graph: Graph, wrt: Sequence[int], name: str | None = None, *,
              outputs: Sequence[int] | None = None) -> Graph:
    """The forward-mode graph of `graph` w.r.t. inputs `wrt` (see the module docstring), named
    `name` or `jvp_<graph name>`. `outputs` (indices) picks the outputs that get a tangent (None:
    every floating-point one); asking for an integer output's tangent, or for a tangent of an
    integer input, raises GradError."""
    was = gc.isenabled()  # as in grad_graph: full collections walking the growing graph
    gc.disable()
    try:
        return _jvp_graph(graph, list(wrt), name, outputs)
    finally:
        if was:
            gc.enable()


def _jvp_graph(graph: Graph, wrt: list[int], name: str | None, outputs: Sequence[int] | None) -> Graph:
    g = _flat_copy(graph, name or f"jvp_{graph.name}")
    if inline_regions(g.body, "custom_vjp"):
        log.info("jvp of @%s: a user-defined gradient (custom_vjp) is differentiated through its forward; "
                 "its backward is not used by forward mode", graph.name)
        g = _flat_copy(g, g.name)  # (a forward region may hold fusion groups)
    if len(set(wrt)) != len(wrt):
        raise GradError(f"jvp_graph: wrt {wrt} names an input twice")
    for i in wrt:
        if not 0 <= i < len(g.inputs):
            raise GradError(f"wrt index {i} is out of range: @{graph.name} has {len(g.inputs)} inputs")
        v = g.inputs[i]
        if not v.dtype.is_float:
            raise GradError(f"input {i} ('{v.name}') is {v.type}; only floating-point inputs have tangents")
    picked = [k for k, v in enumerate(g.outputs) if v.dtype.is_float] if outputs is None else list(outputs)
    for k in picked:
        if not 0 <= k < len(g.outputs) or not g.outputs[k].dtype.is_float:
            raise GradError(f"output {k} of @{graph.name} has no tangent (out of range, or not floating-point)")

    forward = list(g.ops)
    tan: dict[Value, Value] = {}
    for i in wrt:
        v = g.inputs[i]
        tan[v] = g.add_input(v.type, f"{v.name}_dot" if v.name else "tangent")
    b = Builder(g)
    for k, op in enumerate(forward):
        ts = [tan.get(v) for v in op.operands]
        if all(t is None for t in ts) or op.name in NON_DIFFERENTIABLE:
            continue
        if not any(r.dtype.is_float for r in op.results):
            continue  # an integer or boolean result: piecewise constant, no tangent
        rule = JVP.get(op.name)
        if rule is None:
            raise NotImplementedError(f"no JVP rule for op '{op.name}'"
                                      f"{f' (from {op.loc})' if op.loc else ''}; add one to "
                                      "avalon.autodiff.JVP or list the op in NON_DIFFERENTIABLE")
        b.before = forward[k + 1] if k + 1 < len(forward) else None  # right after the op
        b.loc = op.loc
        outs = list(rule(b, op, ts))
        if len(outs) != len(op.results):
            raise RuntimeError(f"JVP rule of '{op.name}' returned {len(outs)} tangents for {len(op.results)} results")
        for r, t in zip(op.results, outs):
            if t is None or not r.dtype.is_float:
                continue
            if (t.shape, t.dtype) != (r.shape, r.dtype):
                raise RuntimeError(f"JVP rule of '{op.name}' gave a tangent of type {t.type} for a result of "
                                   f"type {r.type}")
            tan[r] = t
    b.before, b.loc = None, None
    outs = list(g.outputs)
    tangents = [tan[outs[k]] if outs[k] in tan else b.constant(0.0, outs[k].shape, outs[k].dtype) for k in picked]
    g.set_outputs(outs + tangents)
    _sweep_dead(g)
    return g
