"""`av.grad` and `av.value_and_grad`: the compile driver with a gradient program.

`value_and_grad(f)` is `Compiled(f, backend="numpy", pipeline=GRAD_PIPELINE, program=GradProgram(...))`:
the same signature cache, pipeline and run path as `av.compile`. Per input signature (shapes,
dtypes, devices, structure, and the plain Python attributes of the models involved, so
`model.eval()` retraces) `GradProgram.build` traces `f`, turns the trace into one graph with
`avalon.autodiff.grad_graph` and orders its outputs as the caller receives them: the value (loss,
then any auxiliary output), the gradients (a dict from dotted parameter name for a model, a tensor
for a tensor, None for an integer input) and the state updates. Its `out_tree` encodes that
structure, so the driver rebuilds `(value, grads)` like any other output and needs no assembly step.

Inside an enclosing trace (`av.trace`, `av.compile`, another `av.grad`) the driver inlines the
gradient graph instead of running it, so `av.compile(av.value_and_grad(loss))` compiles forward and
backward as one graph. A pass that fails on a gradient graph is an error naming the pass.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from avalon import grad_mode, tree
from avalon.autodiff import grad_graph
from avalon.channels import get_logger
from avalon.ir import Builder, Graph, Value
from avalon.tensor import FROZEN, Tensor
from avalon.trace import Traced, _count_leaves, signature, trace_call

from .core import Compiled

log = get_logger("autodiff")

GRAD_PIPELINE = "canonicalize,cse,dce"
"""The cleanup passes run on each gradient graph before it is cached (`grad_graph` leaves
duplicated forward values and dead backward ops that these remove)."""

_NONE = ("static", "NoneType", None)  # the gradient of an argument that has none (an integer, a constant)


class GradProgram:
    """The gradient program of `fn` for one signature (see the module docstring).

    `with_value` picks `value_and_grad`'s `(value, grads)` over `grad`'s `grads`; with `has_aux`
    the value is `(loss, aux)` and `grad` returns `(grads, aux)`."""

    def __init__(self, argnums: int | tuple[int, ...], has_aux: bool, with_value: bool, name: str):
        self.argnums = argnums
        self.nums, self.multi = _normalize_argnums(argnums)
        self.has_aux, self.with_value, self.name = has_aux, with_value, name

    def prepare(self, fn: Callable, args: tuple) -> tuple:
        """Check `argnums` against the call; a Python float to differentiate becomes a Tensor."""
        if self.nums and max(self.nums) >= len(args):
            raise TypeError(f"argnums={self.argnums!r} but {_name(fn)} was called with {len(args)} positional "
                            "argument(s)")
        return tuple(Tensor(a) if i in self.nums and isinstance(a, float) else a for i, a in enumerate(args))

    def finish(self, fn: Callable, args: tuple, out: Any) -> Any:
        """A model's gradient dict as `Grads`, which knows the tensor each name is, so an optimizer
        built on bare tensors (`filter(lambda p: p.requires_grad, model.parameters())`, parameter
        groups of tensors) can match gradients by identity. So is the gradient of a tuple, list or dict of
        models (`(model, metric_fc, criterion)`, whose optimizers each take a part of it)."""
        if self.with_value:
            value, grads = out
        elif self.has_aux:
            grads, aux = out
        else:
            grads = out
        per = list(grads) if self.multi else [grads]
        for k, i in enumerate(self.nums):
            if type(per[k]) is dict and _holds_models(args[i]):
                per[k] = Grads(per[k], dict(tree.named_parameters(args[i])))
        grads = tuple(per) if self.multi else per[0]
        if self.with_value:
            return value, grads
        return (grads, aux) if self.has_aux else grads

    def build(self, fn: Callable, args: tuple) -> Traced:
        # a transform, as torch.func's: an `av.no_grad()` around the call does not reach inside `fn` (one inside
        # does); inside an enclosing trace the results are then stopped there (compiler/execute.py's run_traced)
        # the leaves as the trace takes them, before the call: a callable object that sets a tensor attribute
        # while called (Rainbow's learner's `self.support = torch.linspace(...)`) holds one more leaf after it,
        # which shifted every gradient onto the next parameter's name
        (head, trees, *_), leaves = signature(fn, args)
        with grad_mode.set_grad_enabled(True):
            traced = trace_call(fn, args, keep_custom=True)
        graph = traced.graph
        loss_tree, aux_tree = _split_outputs(traced.out_tree, self.has_aux, fn)
        _scalar_loss(graph, fn)

        # graph input positions of each argument's leaves (a model owning `fn` comes first)
        starts, pos = [], len(head[2]) if head is not None else 0
        for tr in trees:
            starts.append(pos)
            pos += _count_leaves(tr)
        last = {id(obj): j for j, (_, obj) in enumerate(leaves)}  # the input a shared tensor is traced as
        wrt: list[int] = []
        reached = _reached(graph)
        asked: list[int] = []

        def slot(j: int, in_model: bool = True, skip_unused: bool = False) -> int | None:
            if not graph.inputs[j].dtype.is_float or (in_model and id(leaves[j][1]) in FROZEN):
                return None  # an integer, or a model's tensor frozen with requires_grad = False
            asked.append(j)
            if skip_unused and id(graph.inputs[j]) not in reached:
                return None  # torch's `.grad` of None: the loss does not use it (an optimizer skips it)
            if j not in wrt:
                wrt.append(j)
            return wrt.index(j)

        # per differentiated argument: its gradient's tree and the gradient slots it reads, in order
        plans: list[tuple[Any, list[int]]] = []
        for i in self.nums:
            if trees[i] == ("leaf",):
                s = slot(starts[i], in_model=False)  # asked for by argnums: differentiated regardless
                plans.append((_NONE, []) if s is None else (("leaf",), [s]))
            elif trees[i][0] == "static":
                plans.append((_NONE, []))
            elif trees[i][0] == "complex":  # torch's gradient of z = a + ib: dL/da + i dL/db, the parts' pair
                plans.append((trees[i], [slot(starts[i] + k, in_model=False) for k in (0, 1)]))
            elif trees[i][0] == "sparse":  # torch's: a sparse tensor of its indices and the values' gradient
                s = slot(starts[i] + 1, in_model=False)
                plans.append((_NONE, []) if s is None else (trees[i], [("input", starts[i]), s]))
            else:
                named = [(n, last[id(t)]) for n, t in tree.named_parameters(args[i]) if id(t) in last]
                n_leaves = _count_leaves(trees[i])
                named += [(leaves[j][0].split(".", 1)[-1], j) for j in range(starts[i], starts[i] + n_leaves)
                          if not isinstance(leaves[j][1], Tensor)]  # numpy arrays inside lists and dicts
                model = _holds_models(args[i])  # (a dict or list of tensors gets zeros, as torch.func's)
                kept = [(n, s) for n, j in named if (s := slot(j, skip_unused=model)) is not None]
                plans.append((("dict", tuple(n for n, _ in kept), (("leaf",),) * len(kept)), [s for _, s in kept]))

        _check_depends(reached, [graph.inputs[j] for j in asked], fn)
        gg = grad_graph(graph, wrt, name=self.name)
        outs = list(gg.outputs)  # [loss, grads in wrt order, aux, state updates]
        n_aux = traced.n_outputs - 1
        loss, grads, aux = outs[0], outs[1:1 + len(wrt)], outs[1 + len(wrt):1 + len(wrt) + n_aux]
        updates = outs[1 + len(wrt) + n_aux:]
        grads_tree = ("tuple", tuple(t for t, _ in plans)) if self.multi else plans[0][0]
        grad_values: list[Value] = [gg.inputs[s[1]] if isinstance(s, tuple) else grads[s]  # (a sparse one's indices)
                                    for _, slots in plans for s in slots]
        if self.with_value:
            value_tree = ("tuple", (loss_tree, aux_tree)) if self.has_aux else loss_tree
            out_tree, values = ("tuple", (value_tree, grads_tree)), [loss, *aux, *grad_values]
        elif self.has_aux:
            out_tree, values = ("tuple", (grads_tree, aux_tree)), [*grad_values, *aux]
        else:
            out_tree, values = grads_tree, grad_values
        gg.set_outputs(values + updates)
        log.debug("gradient graph for %s:\n%s", self.name, gg)
        return Traced(gg, traced.leaves, out_tree, len(values), traced.update_targets)


def _holds_models(x: Any) -> bool:
    """A model, or a tuple, list or dict of models (`(model, metric_fc, criterion)` differentiated at once):
    its gradients are a model's, without entries for parameters the loss does not use, and `Grads`."""
    items = x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else ()
    return tree.is_model(x) or any(tree.is_model(v) for v in items)


class Grads(dict):
    """A model's gradients, {parameter name: Tensor} like any dict, plus `params`: the model's
    tensor of each name (what the gradient is of). Slots, no `__dict__`: still a dict to every walker."""

    __slots__ = ("params",)

    def __init__(self, grads: dict, params: dict):
        super().__init__(grads)
        self.params = params


def value_and_grad(f: Callable, argnums: int | tuple[int, ...] = 0, has_aux: bool = False) -> Compiled:
    """A function computing `(f(*args), gradient of f w.r.t. args[argnums])`.

    `f` must return a float scalar (a Tensor with one element), or `(scalar, aux)` with
    `has_aux=True`, in which case the value is `(scalar, aux)`. The gradient of a Tensor or array
    argument is a Tensor of its shape (None for an integer one); of a model or any structure
    holding tensors it is a dict from dotted parameter name to Tensor (floating-point tensors
    that are not Buffers). A model's parameter the loss does not use (a head trained in other
    steps, one read only under `no_grad`) has no entry, as torch leaves its `.grad` None, so an
    optimizer leaves it alone; a dict or list of tensors gets zeros there, as torch.func gives.
    With a tuple `argnums` the gradients are a tuple.
    """
    return _transform(f, argnums, has_aux, True, "value_and_grad")


def grad(f: Callable, argnums: int | tuple[int, ...] = 0, has_aux: bool = False) -> Compiled:
    """A function computing the gradient of `f` w.r.t. `args[argnums]` (see `value_and_grad`);
    with `has_aux=True` it returns `(gradient, aux)`."""
    return _transform(f, argnums, has_aux, False, "grad")


def _transform(f: Callable, argnums: Any, has_aux: bool, with_value: bool, prefix: str) -> Compiled:
    name = f"{prefix}_{_name(f)}" if _name(f).isidentifier() else prefix
    program = GradProgram(argnums, has_aux, with_value, name)
    return Compiled(f, "numpy", GRAD_PIPELINE, program=program, name=name)


# -- checking what f returned ------------------------------------------------------------------

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


def _reached(graph: Graph) -> set[int]:
    """ids of the inputs the loss (output 0) depends on through floating-point values, not across a
    `stop_gradient`: what torch's autograd graph of the loss holds. A model's parameter outside it
    gets no gradient entry, as torch leaves its `.grad` None (unused in this step, used only under
    `no_grad` or through an integer result such as argmax), so an optimizer leaves it alone rather
    than moving it by momentum or weight decay on a zero gradient."""
    inputs = {id(v) for v in graph.inputs}
    out: set[int] = set()
    seen: set[int] = set()
    stack = [graph.outputs[0]]
    while stack:
        v = stack.pop()
        if id(v) in seen or not v.dtype.is_float:
            continue
        seen.add(id(v))
        if id(v) in inputs:
            out.add(id(v))
        elif v.op is not None and v.op.name != "stop_gradient":
            stack.extend(v.op.operands)
    return out


def _check_depends(reached: set[int], asked: list[Value], f: Callable) -> None:
    """A loss that reads none of what is differentiated (computed under `av.no_grad()`, or from a
    model closed over instead of passed) gives all-zero gradients: mathematically right (JAX
    returns zeros), but almost always a mistake (torch raises), so it is said, once per trace."""
    if not asked or any(id(v) in reached for v in asked):
        return
    warnings.warn(f"{_name(f)}: the loss depends on none of the tensors it is differentiated with respect to, "
                  "so every gradient is zero: was it computed under av.no_grad(), or from a model or tensor the "
                  "function closes over instead of taking as an argument?", stacklevel=2)


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
