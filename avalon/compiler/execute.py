"""Running a traced program and handing its results back to Python.

The driver (`core.Compiled`) compiles a `Traced` program once per signature; each call then goes
through `run_traced`: fresh random seeds are fed (`feed`), the executable runs, its outputs become
Avalon tensors (`_wrap_result`) rebuilt into the function's output structure, and the extra outputs
(state updates recorded with `avalon.trace.assign`) are written into their state tensors
(`_write_back`). Inside an enclosing trace the program is inlined into that trace instead of run,
so a gradient function called while `av.compile` traces becomes part of the compiled graph.

Recording lives in `avalon.trace`; this module is the other half, kept apart so that recording
never depends on how (or on which backend) a graph runs.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from avalon import grad_mode, tree, views
from avalon.device import CPU, Device
from avalon.ir import Graph, TensorType, Value
from avalon.tensor import Tensor, as_array
from avalon.trace import SEED, Traced, assign, current_trace, inline
from avalon.trace_state import AttrSlot


def feed(leaves: list[Any]) -> list[Any]:
    """The leaves with SEED replaced by a fresh seed (an i64 scalar), ready to execute."""
    from avalon.random import next_seed

    def fresh() -> Any:
        s = next_seed()  # inside an enclosing trace: a traced seed, which must stay traced
        return s if isinstance(s, Tensor) else np.asarray(s, dtype=np.int64)
    return [fresh() if x is SEED else x for x in leaves]


def run_traced(traced: Traced, graph: Graph, execute: Callable[..., Sequence[Any]], leaves: list[Any]) -> Any:
    """Run `graph` (traced's graph or a transformed one with the same inputs) on `leaves`, rebuild
    the outputs and apply state updates. Inside an enclosing trace the graph is inlined instead.

    State updates are written back before this returns, so an executable may hand them back in
    storage that its next call overwrites (`CompiledGraph.scratch_outputs`)."""
    outer = current_trace()
    leaves = feed(leaves)
    n = traced.n_outputs
    if outer is not None:
        results = inline(outer, graph, [outer.value_of(x) for x in leaves])
        outs = [Tensor._traced(v, outer) for v in results]
        if not grad_mode.enabled():  # called under av.no_grad(): the enclosing trace sends no gradient through it
            outs[:n] = [outer.emit("stop_gradient", [o], {})[0] if o.dtype.is_floating_point else o for o in outs[:n]]
        for target, new in zip(traced.update_targets, outs[n:]):
            assign(target, new)
        return tree.unflatten(traced.out_tree, outs[:n])
    arrays = execute(*leaves)
    devs = {x._device for x in leaves if isinstance(x, Tensor)}
    dev = next(iter(devs)) if len(devs) == 1 else CPU
    user = [_wrap_result(a, v.type, dev) for a, v in zip(arrays[:n], graph.outputs[:n])]
    _write_back(traced.update_targets, arrays[n:], graph.outputs[n:], dev)
    return tree.unflatten(traced.out_tree, user)


def _write_back(targets: list[Tensor], arrays: Sequence[Any], values: Sequence[Value], dev: Device) -> None:
    """`assign(target, result)` for each state update, in order; copies between device tensors of
    the same dtype are batched into one `torch._foreach_copy_` (one launch instead of one each)."""
    dst: dict[int, tuple[Any, Any]] = {}  # id(target) -> (target storage, source); the last update wins
    in_place = []
    for target, a, v in zip(targets, arrays, values):
        if isinstance(target, AttrSlot):  # a model attribute the traced call rebound: a fresh value
            target.set(_wrap_result(a, v.type, dev))
            continue
        data = target._data
        own = target._view is None  # else a view whose base the graph did not hold: `assign` writes the base
        if a is data and own:  # written in place by the executable (a donated input)
            in_place.append(target)
            continue
        if (own and target._device != CPU and hasattr(a, "data_ptr") and a.device == data.device
                and a.dtype == data.dtype and a.shape == data.shape):
            dst.pop(id(target), None)
            dst[id(target)] = (data, a)
        else:
            if id(target) in dst:  # an earlier batched update of this target must land first
                _copy_all([dst.pop(id(target))])
            assign(target, _wrap_result(a, v.type, dev))
    if dst:
        _copy_all(list(dst.values()))
    for target in {id(t): t for t in in_place + [t for t in targets if id(t) in dst]}.values():
        views.refresh(target)  # views taken before the call (`w[0]`, `w.t()`) read the new values, as in torch


def _copy_all(pairs: list[tuple[Any, Any]]) -> None:
    import torch
    if len(pairs) > 1 and hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_([d for d, _ in pairs], [s for _, s in pairs])  # storage copies, not compute
    else:
        for d, s in pairs:
            d.copy_(s)


def _wrap_result(a: Any, t: TensorType, dev: Device) -> Tensor:
    """A backend's output as an Avalon tensor: GPU torch storage stays where it is; anything on
    the host becomes numpy storage (then moves to `dev` when that is a GPU)."""
    if isinstance(a, Tensor):
        return a
    if hasattr(a, "data_ptr") and a.device.type != "cpu":
        return Tensor._wrap(a, t.dtype, Device(a.device.type, a.device.index))
    out = Tensor._wrap(np.ascontiguousarray(as_array(a, t.dtype)).reshape(t.shape), t.dtype, CPU)
    return out if dev == CPU else out.to(dev)
