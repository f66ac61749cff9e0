"""Batching (vmap) as a graph-to-graph transformation.

`batch_graph(graph, in_axes, size, out_axes)` returns a NEW graph computing `graph` for `size`
examples at once: input `i` carries the mapped dimension at `in_axes[i]` (None: shared by every
example), output `k` carries it at `out_axes[k]` (None: the output must not depend on the mapped
inputs). The ops inside map it in front, always.

How: copy the ops in order (fusion regions inlined, so the rules see primitives only); an op none of
whose operands is batched is copied as it is, anything else goes through its batching rule
(`rules.BATCH`; any elementwise op maps alike), which computes all examples' results with the mapped
dimension in front. An op without a rule, or a case its rule declines, runs once per example and the results are stacked
(correct, and said on the `avalon.vmap` channel, since it costs `size` ops). A user-defined gradient
(`custom_vjp`) is batched region by region, so `av.grad` of a vmapped function still uses it.
Random numbers follow torch.vmap's `randomness`: "error" refuses them, "same" draws one set for all
examples, "different" draws each example its own.
"""
from __future__ import annotations

from collections.abc import Sequence

from avalon.autodiff.transform import _flat_copy
from avalon.channels import get_logger
from avalon.ir import Block, Builder, Graph, Op, Value
from avalon.ir.builder import make_op
from avalon.ir.clone import clone_block
from avalon.ir.registry import ShapeError

from .rules import materialize, move_axis, reshape, rule_for

log = get_logger("vmap")

RANDOMNESS = ("error", "same", "different")


class BatchingError(ValueError):
    """A graph cannot be batched as asked (an output that must not be mapped is, random numbers in
    randomness="error" mode, ...)."""


def batch_graph(graph: Graph, in_axes: Sequence[int | None], size: int, out_axes: Sequence[int | None], *,
                randomness: str = "error", name: str | None = None) -> Graph:
    """The batched graph of `graph` (see the module docstring), named `name` or `vmap_<graph name>`."""
    if randomness not in RANDOMNESS:
        raise ValueError(f"Only allowed values for randomness are 'error', 'different', or 'same'. Got {randomness}")
    if len(in_axes) != len(graph.inputs) or len(out_axes) != len(graph.outputs):
        raise BatchingError(f"batch_graph: {len(in_axes)} in_axes for {len(graph.inputs)} inputs and "
                            f"{len(out_axes)} out_axes for {len(graph.outputs)} outputs")
    flat = _flat_copy(graph, name or f"vmap_{graph.name}")
    types = []
    for v, ax in zip(flat.inputs, in_axes):
        shape = list(v.shape)
        if ax is not None:
            shape.insert(ax, size)
        types.append(v.type.with_shape(tuple(shape)))
    body = Block(types, [v.name for v in flat.inputs])
    b = Builder(body)
    env: dict[Value, tuple[Value, bool]] = {}
    for old, new, ax in zip(flat.inputs, body.args, in_axes):
        env[old] = (new if ax in (None, 0) else move_axis(b, new, ax, 0), ax is not None)
    _batch_ops(b, flat.body.ops, env, size, randomness)
    outs = []
    for k, (v, ax) in enumerate(zip(flat.outputs, out_axes)):
        nv, bt = env[v]
        if ax is None:
            if bt:
                raise BatchingError(f"vmap: out_dims=None for output {k}, but it depends on the mapped inputs "
                                    "(only an output that is the same for every example can be unmapped)")
            outs.append(nv)
            continue
        outs.append(move_axis(b, materialize(b, nv, bt, size), 0, ax))
    g = Graph(flat.name, body)
    g.set_outputs(outs)
    return g


def _batch_ops(b: Builder, ops: Sequence[Op], env: dict[Value, tuple[Value, bool]], size: int,
               randomness: str) -> None:
    for op in ops:
        args = [env[v][0] for v in op.operands]
        batched = [env[v][1] for v in op.operands]
        b.loc = op.loc
        if op.name == "random":
            results, out_batched = _random(b, op, args, batched, size, randomness)
        elif not any(batched):
            new = b.insert(make_op(op.name, args, dict(op.attrs), op.loc, [r.type for r in op.results]))
            for r in op.regions:
                new.add_region(clone_block(r))
            results, out_batched = new.results, False
        elif op.name == "custom_vjp":
            results, out_batched = _custom_vjp(b, op, args, batched, size, randomness), True
        else:
            results, out_batched = _apply_rule(b, op, args, batched, size), True
        for r, nr in zip(op.results, results):
            env[r] = (nr, out_batched)
    b.loc = None


def _apply_rule(b: Builder, op: Op, args: list[Value], batched: list[bool], size: int) -> list[Value]:
    rule = rule_for(op)
    try:
        results = rule(b, op, args, batched, size) if rule is not None else None
    except ShapeError as e:
        raise BatchingError(f"vmap: batching rule of '{op.name}'{f' (from {op.loc})' if op.loc else ''} "
                            f"failed: {e}") from None
    if results is None:
        return _unrolled(b, op, args, batched, size)
    results = list(results)
    for r, nr in zip(op.results, results):
        if tuple(nr.shape) != (size, *r.shape) or nr.dtype != r.dtype:
            raise RuntimeError(f"batching rule of '{op.name}' gave {nr.type} for a result of type {r.type} "
                               f"(expected the mapped dimension {size} in front)")
    return results


_said: set[str] = set()


def _unrolled(b: Builder, op: Op, args: list[Value], batched: list[bool], size: int) -> list[Value]:
    """`op` once per example, the results stacked: the fallback of an op without a batching rule."""
    if op.name not in _said:
        _said.add(op.name)
        log.info("vmap: no batching rule for '%s' here; it runs once per example (%d ops). Add one to "
                 "avalon.batching.BATCH", op.name, size)
    if size == 0:
        raise BatchingError(f"vmap: '{op.name}' has no batching rule, and a mapped dimension of size 0 "
                            "leaves no example to run it on")
    per: list[list[Value]] = []
    for k in range(size):
        operands = []
        for a, bt, orig in zip(args, batched, op.operands):
            if bt:
                start, limit = [k] + [0] * orig.type.rank, [k + 1, *orig.shape]
                a = reshape(b, b("slice", a, start=start, limit=limit), orig.shape)
            operands.append(a)
        per.append(b.insert(make_op(op.name, operands, dict(op.attrs), op.loc)).results)
    out = []
    for i, r in enumerate(op.results):
        rows = [reshape(b, p[i], [1, *r.shape]) for p in per]
        out.append(rows[0] if size == 1 else b("concat", *rows, axis=0))
    return out


def _random(b: Builder, op: Op, args: list[Value], batched: list[bool], size: int,
            randomness: str) -> tuple[list[Value], bool]:
    if randomness == "error":
        raise RuntimeError("vmap: called random operation while in randomness error mode. Please either use the "
                            "'same' or 'different' randomness flags on vmap or perform the randomness operation "
                            f"out of vmap{f' (the random op is from {op.loc})' if op.loc else ''}")
    if batched[0]:
        return _unrolled(b, op, args, batched, size), True
    if randomness == "same":
        return b.op("random", *args, **op.attrs).results, False
    return b.op("random", *args, **{**op.attrs, "shape": [size, *op.attrs["shape"]]}).results, True


def _custom_vjp(b: Builder, op: Op, args: list[Value], batched: list[bool], size: int,
                randomness: str) -> list[Value]:
    """Both regions batched with every argument and result mapped: the forward on the batched
    operands, the backward on batched saved values and cotangents."""
    operands = [materialize(b, a, bt, size) for a, bt in zip(args, batched)]
    regions = [_batched_region(r, size, randomness) for r in op.regions]
    types = [r.type.with_shape((size, *r.shape)) for r in op.results]
    new = Op("custom_vjp", operands, types, dict(op.attrs), regions, op.loc)
    b.insert(new)
    return new.results


def _batched_region(region: Block, size: int, randomness: str) -> Block:
    body = Block([a.type.with_shape((size, *a.shape)) for a in region.args], [a.name for a in region.args])
    rb = Builder(body)
    env = {old: (new, True) for old, new in zip(region.args, body.args)}
    _batch_ops(rb, region.ops, env, size, randomness)
    body.set_terminator("yield", [materialize(rb, *env[v], size) for v in region.results])
    return body
