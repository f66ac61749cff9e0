"""`av.grad` and `av.value_and_grad`: trace `f`, transform the graph, cache it, run it.

Per input signature (shapes, dtypes, devices, structure, and the plain Python attributes of the
models involved, so `model.eval()` retraces) `f` is traced once; `grad_graph` turns the trace into
one graph computing the loss, the requested gradients, any auxiliary output and the state updates;
the standard cleanup pipeline runs on it when `avalon.passes` is available; the numpy reference
interpreter executes it. `run_traced` writes the state updates back after the run, and inside an
enclosing trace (`av.trace`, `av.compile`) it inlines the gradient graph instead of running it,
so `av.compile(av.value_and_grad(loss))` compiles forward and backward as one graph.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from avalon import tree
from avalon.channels import get_logger
from avalon.ir import Builder, Graph, interpret
from avalon.tensor import Tensor
from avalon.trace import SEED, Traced, _count_leaves, owner_model, run_traced, signature, trace_call

from .transform import grad_graph

log = get_logger("autodiff")

PIPELINE = "canonicalize,cse,dce"
"""Passes run on each gradient graph before it is cached; "" turns the cleanup off."""

_ATOMS = (bool, int, float, str, type(None))


@dataclass
class _Plan:
    """How one differentiated argument's gradient is assembled from the graph's gradient outputs:
    a Tensor (`single` is the output index, or None for no gradient) or a dict name -> index."""

    single: int | None = None
    named: list[tuple[str, int]] | None = None


@dataclass
class _Entry:
    graph: Graph
    out_tree: Any
    n_outputs: int
    update_at: list[tuple[int | None, Tensor]]  # (leaf position or None, the object traced)
    seeded: bool
    plans: list[_Plan]


def value_and_grad(f: Callable, argnums: int | tuple[int, ...] = 0, has_aux: bool = False) -> Callable:
    """A function computing `(f(*args), gradient of f w.r.t. args[argnums])`.

    `f` must return a float scalar (a Tensor with one element), or `(scalar, aux)` with
    `has_aux=True`, in which case the value is `(scalar, aux)`. The gradient of a Tensor or array
    argument is a Tensor of its shape (None for an integer one); of a model or any structure
    holding tensors it is a dict from dotted parameter name to Tensor (floating-point tensors
    that are not Buffers). With a tuple `argnums` the gradients are a tuple.
    """
    nums, multi = _normalize_argnums(argnums)
    cache: dict[Any, _Entry] = {}

    @functools.wraps(f, updated=())
    def wrapped(*args: Any) -> tuple[Any, Any]:
        if nums and max(nums) >= len(args):
            raise TypeError(f"argnums={argnums!r} but {_name(f)} was called with {len(args)} positional argument(s)")
        args = tuple(Tensor(a) if i in nums and isinstance(a, float) else a for i, a in enumerate(args))
        key, leaves = signature(f, args)
        entry = cache.get(key)
        if entry is None:
            entry = _build(f, args, nums, has_aux, wrapped.__name__)
            if not _captures_arrays(entry.graph, f):
                cache[key] = entry
        objs = [x for _, x in leaves] + ([SEED] if entry.seeded else [])
        targets = [objs[i] if i is not None else t for i, t in entry.update_at]
        runner = Traced(entry.graph, objs, entry.out_tree, entry.n_outputs, targets)
        value, flat, aux = run_traced(runner, entry.graph, functools.partial(interpret, entry.graph), objs)
        grads = tuple(_assemble(p, flat) for p in entry.plans)
        return ((value, aux) if has_aux else value), (grads if multi else grads[0])

    prefix = "value_and_grad"
    wrapped.__name__ = f"{prefix}_{_name(f)}" if _name(f).isidentifier() else prefix
    owner = owner_model(f)
    if owner is not None:
        wrapped.__self__ = owner  # type: ignore[attr-defined]  # an enclosing trace feeds the model's tensors
    wrapped.cache = cache  # type: ignore[attr-defined]  # one entry per signature, for inspection
    return wrapped


def grad(f: Callable, argnums: int | tuple[int, ...] = 0, has_aux: bool = False) -> Callable:
    """A function computing the gradient of `f` w.r.t. `args[argnums]` (see `value_and_grad`);
    with `has_aux=True` it returns `(gradient, aux)`."""
    vg = value_and_grad(f, argnums, has_aux)

    @functools.wraps(f, updated=())
    def wrapped(*args: Any) -> Any:
        value, grads = vg(*args)
        return (grads, value[1]) if has_aux else grads

    wrapped.__name__ = f"grad_{_name(f)}" if _name(f).isidentifier() else "grad"
    if hasattr(vg, "__self__"):
        wrapped.__self__ = vg.__self__  # type: ignore[attr-defined]
    wrapped.cache = vg.cache  # type: ignore[attr-defined]
    return wrapped


# -- building the gradient graph for one signature ---------------------------------------------

def _build(f: Callable, args: tuple, nums: tuple[int, ...], has_aux: bool, name: str) -> _Entry:
    traced = trace_call(f, args)
    graph = traced.graph
    loss_tree, aux_tree = _split_outputs(traced.out_tree, has_aux, f)
    _scalar_loss(graph, f)
    (head, trees, _), leaves = signature(f, args)

    # graph input positions of each argument's leaves (a model owning `f` comes first)
    starts, pos = [], len(head[2]) if head is not None else 0
    for tr in trees:
        starts.append(pos)
        pos += _count_leaves(tr)
    last = {id(obj): j for j, (_, obj) in enumerate(leaves)}  # the input a shared tensor is traced as
    wrt: list[int] = []

    def slot(j: int) -> int | None:
        if not graph.inputs[j].dtype.is_float:
            return None
        if j not in wrt:
            wrt.append(j)
        return wrt.index(j)

    plans = []
    for i in nums:
        if trees[i] == ("leaf",):
            plans.append(_Plan(single=slot(starts[i])))
        elif trees[i][0] == "static":
            plans.append(_Plan())
        else:
            named = [(n, last[id(t)]) for n, t in tree.named_parameters(args[i]) if id(t) in last]
            n_leaves = _count_leaves(trees[i])
            named += [(leaves[j][0].split(".", 1)[-1], j) for j in range(starts[i], starts[i] + n_leaves)
                      if not isinstance(leaves[j][1], Tensor)]  # numpy arrays inside lists and dicts
            plans.append(_Plan(named=[(n, s) for n, j in named if (s := slot(j)) is not None]))

    gg = _optimize(grad_graph(graph, wrt, name=name))
    n_aux = traced.n_outputs - 1
    out_tree = ("tuple", (loss_tree, ("tuple", (("leaf",),) * len(wrt)), aux_tree))
    ids = {id(obj): j for j, (_, obj) in enumerate(leaves)}
    update_at = [(ids.get(id(t)), t) for t in traced.update_targets]
    log.debug("gradient graph for %s:\n%s", name, gg)
    return _Entry(gg, out_tree, 1 + len(wrt) + n_aux, update_at, any(x is SEED for x in traced.leaves), plans)


def _split_outputs(out_tree: Any, has_aux: bool, f: Callable) -> tuple[Any, Any]:
    if has_aux:
        if out_tree[0] not in ("tuple", "list") or len(out_tree[1]) != 2:
            raise TypeError(f"with has_aux=True, {_name(f)} must return a pair (loss, aux)")
        loss_tree, aux_tree = out_tree[1]
    else:
        loss_tree, aux_tree = out_tree, ("tuple", ())
    if loss_tree != ("leaf",):
        what = {"tuple": "a tuple", "list": "a list", "dict": "a dict"}.get(loss_tree[0], f"a {loss_tree[0]}")
        hint = "; pass has_aux=True to return (loss, aux)" if not has_aux and loss_tree[0] in ("tuple", "list") else ""
        raise TypeError(f"{_name(f)} must return a scalar tensor to be differentiated, but returned {what}{hint}")
    return loss_tree, aux_tree


def _scalar_loss(graph: Graph, f: Callable) -> None:
    """Check the loss is a float with one element; give a (1,)- or (1, 1)-shaped one shape ()."""
    loss = graph.outputs[0]
    if loss.type.numel != 1:
        raise ValueError(f"{_name(f)} must return a scalar to be differentiated, but returned a tensor of shape "
                         f"{loss.shape}; reduce it first (e.g. .sum() or .mean())")
    if not loss.dtype.is_float:
        raise TypeError(f"{_name(f)} returned a {loss.dtype} scalar; only floating-point values can be differentiated")
    if loss.shape != ():
        outs = list(graph.outputs)
        outs[0] = Builder(graph)("reshape", loss, shape=[])
        graph.set_outputs(outs)


def _optimize(graph: Graph) -> Graph:
    """Run PIPELINE on a copy when the passes are available. Optional: if the passes are missing
    or fail, the unoptimized graph (which is correct) is used and the failure is logged."""
    if not PIPELINE:
        return graph
    try:
        from avalon.passes import PassManager
        pm = PassManager.parse(PIPELINE, record_ir=False)
    except Exception as e:  # passes not built yet, or a pass name unknown
        log.debug("no cleanup pipeline for gradient graphs: %s", e)
        return graph
    opt = graph.clone()
    try:
        pm.run(opt)
        from avalon.ir import verify
        verify(opt)
    except Exception as e:
        log.warning("pipeline %r failed on gradient graph @%s (%s: %s); running it unoptimized",
                    PIPELINE, graph.name, type(e).__name__, e)
        return graph
    return opt


def _captures_arrays(graph: Graph, f: Callable) -> bool:
    """Dense constants are data captured when tracing (a closure's arrays or tensors, literal
    lists). Their values may change between calls without changing the signature, so such a
    graph is not cached: `f` is traced afresh on each call, which is correct but slower."""
    n = sum(1 for op in graph.walk() if op.name == "constant" and isinstance(op.attrs["value"], np.ndarray))
    if n:
        warnings.warn(f"{_name(f)} uses {n} array(s) that are not among its arguments (captured from an enclosing "
                      "scope, or built from Python lists); they are baked into the traced graph, so it is traced "
                      "again on every call. Pass them as arguments to reuse the gradient graph.", stacklevel=3)
    return n > 0


def _assemble(plan: _Plan, flat: tuple) -> Any:
    if plan.named is not None:
        return {n: flat[k] for n, k in plan.named}
    return None if plan.single is None else flat[plan.single]


def _normalize_argnums(argnums: Any) -> tuple[tuple[int, ...], bool]:
    if isinstance(argnums, int) and not isinstance(argnums, bool):
        nums, multi = (argnums,), False
    elif isinstance(argnums, (tuple, list)) and all(isinstance(i, int) and not isinstance(i, bool) for i in argnums):
        nums, multi = tuple(argnums), True
    else:
        raise TypeError(f"argnums must be an int or a tuple of ints, got {argnums!r}")
    if any(i < 0 for i in nums):
        raise ValueError(f"argnums must be non-negative, got {argnums!r}")
    return nums, multi


def _name(f: Callable) -> str:
    return getattr(f, "__name__", None) or type(f).__name__


__all__ = ["PIPELINE", "grad", "value_and_grad"]
