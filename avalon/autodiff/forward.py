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

A user-defined gradient (`custom_vjp`, avalon/autograd.py) is not a forward-mode rule: a tangent
reaching one goes through its `jvp` region (torch's `Function.jvp` staticmethod), and without one
it is an error, as in torch and JAX: differentiating the forward instead would silently ignore a
backward that deliberately differs from it (a straight-through estimator). The op itself stays in
the result, so `grad_graph` of it (reverse over forward) still uses the user's backward.
"""
from __future__ import annotations

import gc
from collections.abc import Sequence

from avalon.ir import Builder, Graph, Op, Value
from avalon.ir.clone import clone_op

from .forward_rules import JVP
from .rules import NON_DIFFERENTIABLE, NOT_IMPLEMENTED
from .transform import GradError, _flat_copy, _sweep_dead


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
        if op.name in NOT_IMPLEMENTED and any(t is not None for t in ts):
            raise GradError(f"{NOT_IMPLEMENTED[op.name]}{f' (from {op.loc})' if op.loc else ''}")
        if all(t is None for t in ts) or op.name in NON_DIFFERENTIABLE:
            continue
        if not any(r.dtype.is_float for r in op.results):
            continue  # an integer or boolean result: piecewise constant, no tangent
        rule = _custom_jvp if op.name == "custom_vjp" else JVP.get(op.name)
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


def _custom_jvp(b: Builder, op: Op, ts: list[Value | None]) -> list[Value | None]:
    """A user-defined gradient's tangents from its `jvp` region: (saved results, one tangent per
    `grads` operand, zeros where none) -> one per output (module docstring)."""
    n = op.attrs["outputs"]
    if len(op.regions) < 3:
        raise GradError(f"forward-mode AD (jvp) reached {op.attrs['name']}"
                        f"{f' (from {op.loc})' if op.loc else ''}, a function with a user-defined gradient and no "
                        "forward-mode rule: give the autograd.Function a `jvp(ctx, *tangents)` staticmethod "
                        "(torch's; keep what it reads with ctx.save_for_forward). Its backward is not used "
                        "for forward mode")
    # the saved values the rule reads, recomputed from a copy of the forward's ops (CSE merges them
    # with the forward once it is inlined): a gradient of the tangents (reverse over forward) then
    # reaches the inputs through them, as torch's does through its saved tensors
    fwd = op.regions[0]
    mapping = dict(zip(fwd.args, op.operands))
    for inner in fwd.ops:
        b.insert(clone_op(inner, mapping))
    saved = [mapping[y] for y in fwd.results[n:]]
    region = op.regions[2]
    tans = [ts[i] if ts[i] is not None else b.constant(0.0, op.operands[i].shape, op.operands[i].dtype)
            for i in op.attrs["grads"]]
    mapping = dict(zip(region.args, [*saved, *tans]))
    for inner in region.ops:
        b.insert(clone_op(inner, mapping))
    return [mapping[y] for y in region.results] + [None] * (len(op.results) - n)
