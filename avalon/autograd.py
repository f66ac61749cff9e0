"""User-defined gradients: torch's `autograd.Function` and JAX's `custom_vjp`, as one IR op.

Ported code defines gradients of its own for straight-through estimators, gradient reversal,
clipped or memory-saving backward passes:

    class GradReverse(av.autograd.Function):
        @staticmethod
        def forward(ctx, x, lam):
            ctx.lam = lam
            return x.view_as(x)
        @staticmethod
        def backward(ctx, g):
            return -ctx.lam * g, None

    y = GradReverse.apply(x, 0.5)

Avalon's gradients are a transformation of the traced IR, so `apply` inside a trace records one
`custom_vjp` op holding two regions: the forward traced from `forward(ctx, ...)` (its results:
the outputs, then the tensors `ctx.save_for_backward` kept and tensors stored on `ctx` as
attributes) and the backward traced from `backward(ctx, *grads)` with those saved tensors and one
cotangent per output as its arguments. `av.grad` differentiates the op by inlining the backward
region (autodiff/transform.py); every other consumer of a traced graph (compile, `av.trace`,
exports) sees the forward region inlined, so no backend ever meets the op. Outside a trace,
`apply` just runs `forward`, as nothing can ask for a gradient there.

torch.func's style works too: `forward(*args)` without ctx and `setup_context(ctx, inputs, output)`
to keep what backward needs; `vjp` may stand for `backward`; `generate_vmap_rule` is accepted (vmap
batches both regions). A `jvp(ctx, *tangents)` staticmethod, reading what forward gave
`ctx.save_for_forward` as `ctx.saved_tensors`, becomes a third region: forward mode's rule for the
op (autodiff/forward.py), which refuses a Function without one, as torch does.

As in torch, `forward` runs without gradient tracking: tensors it reads that are not arguments
(a module's weights) get no gradient through it, and `backward` returns one gradient (or None)
per argument of `forward`. Unlike torch, `backward` is traced once, so it must be written with
Avalon's ops on the tensors it is given (no `.numpy()`), and `forward` may not draw random
numbers or update state (its trace is not the caller's). Higher derivatives differentiate the
backward's ops like any others (torch's `once_differentiable` is the default answer here).

As torch: `backward` may return a gradient of a shape the input broadcasts to (summed back), not
one of another shape (a transposed or flattened one is refused, never reshaped); a gradient for a
non-tensor argument is refused; outputs `ctx.mark_non_differentiable` names carry no gradient;
`ctx.mark_dirty` makes the caller's tensor the output (its gradient through `backward`); forward may
return non-tensors beside tensors; keyword arguments reach forward without being inputs.

`torch.autograd.grad` and `backward()` have no counterpart (gradients are values: `av.grad`);
`av.autograd.grad` says so. `av.autograd.functional` is torch.autograd.functional over avalon.func.
`Variable` is torch's legacy wrapper, which older code still calls.
"""
from __future__ import annotations

import inspect
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from . import grad_mode, ops, tree
from .compiler.execute import feed
from .grad_mode import enable_grad, inference_mode, no_grad, set_grad_enabled
from .ir import Op, TensorType
from .ir.clone import clone_block
from .tensor import Tensor, _update
from .trace import SEED, current_trace, located, trace_call, user_location


class FunctionCtx:
    """torch's `ctx`: what `forward` keeps for `backward`."""

    def __init__(self, args: tuple) -> None:
        self.needs_input_grad = tuple(isinstance(a, Tensor) and a.dtype.is_float for a in args)
        self.saved_tensors: tuple = ()
        self.materialize_grads = True

    def save_for_backward(self, *tensors: Any) -> None:
        for t in tensors:
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"save_for_backward can only save tensors or None, got {type(t).__name__}")
        self.saved_tensors = tensors

    def save_for_forward(self, *tensors: Any) -> None:
        """What `jvp` reads as `ctx.saved_tensors` (torch's)."""
        for t in tensors:
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"save_for_forward can only save tensors or None, got {type(t).__name__}")
        self._for_forward = tensors

    def mark_non_differentiable(self, *tensors: Any) -> None:
        """torch's: these outputs carry no gradient (as if detached), so `backward` is given a zero
        gradient for them even where the caller differentiates through them (an argmax turned float)."""
        self._non_differentiable = tensors

    def set_materialize_grads(self, value: bool) -> None:
        """Accepted: cotangents of unused outputs are always zeros here (torch's default)."""
        self.materialize_grads = bool(value)

    def mark_dirty(self, *tensors: Any) -> None:
        """torch's: forward wrote these arguments in place and returns them; the caller's tensor then holds
        the output, its gradient through `backward` (without mark_dirty it keeps the old value's path)."""
        self._dirty = tensors


class BackwardResultError(RuntimeError, TypeError, ValueError):
    """What `backward` returned does not fit the inputs of `forward` (a wrong count, a gradient for a
    number, a shape the input cannot broadcast to): torch's RuntimeError (TypeError and ValueError too,
    what Avalon raised before)."""


def _sum_to(g: Tensor, shape: tuple, name: str, i: int) -> Tensor:
    """torch's check of a gradient `backward` returned for an input of `shape`: the same shape, or one
    the input broadcasts to (summed back to the input's shape, as torch's `reduce_grad`); anything else
    (a transposed or flattened gradient of the same size, which a reshape took silently) is refused."""
    gs = tuple(g.shape)
    if gs == shape:
        return g
    lead = len(gs) - len(shape)
    if lead < 0 or any(s != d and s != 1 for s, d in zip(shape, gs[lead:])):
        raise BackwardResultError(f"Function {name}Backward returned an invalid gradient at index {i} - got "
                                  f"{list(gs)} but expected shape compatible with {list(shape)}")
    if lead:
        g = g.sum(dim=tuple(range(lead)))
    dims = tuple(d for d, (s, n) in enumerate(zip(shape, gs[lead:])) if s == 1 and n != 1)
    if dims:
        g = g.sum(dim=dims, keepdim=True)
    return g.reshape(shape)


def _placeholder(t: TensorType) -> Tensor:
    """A tensor of type `t` to trace with (no memory: a zero-stride broadcast of one element)."""
    return Tensor._wrap(np.broadcast_to(np.zeros((), t.dtype.np), t.shape), t.dtype)


def _apply(forward: Callable, backward: Callable, args: tuple, name: str, jvp: Callable | None = None) -> Any:
    """`forward(ctx, *args)` with `backward(ctx, *grads)` as its gradient and `jvp(ctx, *tangents)`
    (if given) as its forward-mode rule (module docstring)."""
    outer = current_trace()
    ctx = FunctionCtx(args)
    if outer is None:
        return forward(ctx, *args)
    slots = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
    results: dict[str, Any] = {}

    def fwd(*ts: Tensor) -> tuple:
        full = list(args)
        for i, t in zip(slots, ts):
            full[i] = t
        out = forward(ctx, *full)
        every = out if isinstance(out, tuple) else (out,)
        # as torch, a tuple may hold non-tensors (a count, a flag): returned as they are, with no gradient
        # (backward gets None for them); the tensors are the op's outputs
        outs = tuple(o for o in every if isinstance(o, Tensor))
        if not outs or not (isinstance(out, tuple) or isinstance(out, Tensor)):
            raise TypeError(f"{name}.forward must return a tensor or a tuple holding tensors, got "
                            f"{type(out).__name__}")
        nd = getattr(ctx, "_non_differentiable", ())
        dirty = {}
        for d in getattr(ctx, "_dirty", ()):
            j = next((j for j, o in enumerate(outs) if o is d), None)
            if j is None:
                raise located(RuntimeError(f"{name}: Some elements marked as dirty during the forward method were "
                                           "not returned as output. The inputs that are modified inplace must all "
                                           "be outputs of the Function."), user_location())
            i = next((i for i in slots if full[i] is d), None)
            if i is not None:
                dirty[j] = i
        results["dirty"] = dirty
        results.update(every=[None if isinstance(o, Tensor) else o for o in every],
                       non_diff=[j for j, o in enumerate(outs) if any(o is t for t in nd)])
        saved = [t for t in ctx.saved_tensors if t is not None]
        attrs = [(k, v) for k, v in vars(ctx).items() if isinstance(v, Tensor)]
        for_fwd = getattr(ctx, "_for_forward", ())
        results.update(n_out=len(outs), tuple_out=isinstance(out, tuple), attrs=[k for k, _ in attrs],
                       saved=[t is not None for t in ctx.saved_tensors], for_fwd=[t is not None for t in for_fwd])
        return (*outs, *saved, *(v for _, v in attrs), *(t for t in for_fwd if t is not None))

    f = trace_call(fwd, tuple(args[i] for i in slots), name=f"{name}_forward")
    # a write into one of its own tensor arguments (pytorch-tabnet's sparsemax: `input -= max_val`) is
    # torch's in-place write into the caller's tensor: the new value, the last results of the forward
    # region (after what backward keeps, which it skips), is written there after the op; as in torch without
    # mark_dirty, the tensor keeps the gradient path of the value it held (`new + (old - old)`, exactly new)
    if any(x is SEED for x in f.leaves) or any(all(tg is not args[i] for i in slots) for tg in f.update_targets):
        raise located(NotImplementedError(f"{name}.forward draws random numbers or updates state, which a "
                                          "custom gradient cannot carry; do that outside the Function"),
                      user_location())
    n_out = results["n_out"]
    out_types = [v.type for v in f.graph.outputs]
    grads = [k for k, i in enumerate(slots) if args[i].dtype.is_float]

    def bwd(*vals: Tensor) -> tuple:
        k = len(out_types) - n_out
        kept, tensor_gs = list(vals[:k]), iter(vals[k:])
        gs = [next(tensor_gs) if o is None else None for o in results["every"]]
        it = iter(kept)
        ctx.saved_tensors = tuple(next(it) if s else None for s in results["saved"])
        for a in results["attrs"]:
            setattr(ctx, a, next(it))
        out = backward(ctx, *gs)
        out = out if isinstance(out, tuple) else (out,)
        if len(out) < len(args) or any(g is not None for g in out[len(args):]):
            raise BackwardResultError(f"function {name}Backward returned an incorrect number of gradients "
                                      f"(expected {len(args)}, got {len(out)})")
        for i, (g, a) in enumerate(zip(out, args)):
            if g is not None and not isinstance(a, Tensor):  # torch's check: a gradient for a number is a slip
                raise BackwardResultError(f"function {name}Backward returned a gradient different than None at "
                                          f"position {i + 1}, but the corresponding forward input was not a "
                                          f"Variable (a tensor)")
        per = []
        for k2 in grads:
            i = slots[k2]
            g, want = out[i], args[i]
            if g is None:
                g = ops.full(want.shape, 0.0, want.dtype)
            if not isinstance(g, Tensor):
                raise BackwardResultError(f"{name}.backward returned {type(g).__name__} as the gradient of "
                                          f"argument {i}")
            per.append(_sum_to(g, tuple(want.shape), name, i).to(want.dtype))
        return tuple(per)

    example = [_placeholder(t) for t in out_types[n_out:] + out_types[:n_out]]
    b = trace_call(bwd, tuple(example), name=f"{name}_backward")
    if b.update_targets or len(b.leaves) != len(example):
        raise located(NotImplementedError(f"{name}.backward reads tensors of the enclosing function that forward "
                                          "did not save (or draws random numbers); pass them to forward and keep "
                                          "them with ctx.save_for_backward"), user_location())
    regions = [clone_block(f.graph.body), clone_block(b.graph.body)]
    if jvp is not None:
        regions.append(clone_block(_jvp_region(jvp, ctx, args, slots, grads, results, out_types, name).graph.body))
    operands = [outer.value_of(x) for x in feed(list(f.leaves))]
    op = Op("custom_vjp", operands, out_types, {"name": name, "outputs": n_out, "grads": grads}, regions,
            user_location())
    for region in op.regions:  # a graph ends in `return`, a region in `yield`
        region.set_terminator("yield", region.results)
    outer.builder.insert(op)
    outer.custom = True
    n_dirty = len(f.update_targets)
    for tg, r in zip(f.update_targets, op.results[len(op.results) - n_dirty:]):
        new = Tensor._traced(r, outer).detach()
        if tg.dtype.is_float:
            new = new + (tg - tg.detach())
        _update(tg, new, f"{name}.forward's in-place write")
    outs = [Tensor._traced(r, outer) for r in op.results[:n_out]]
    for j in results["non_diff"]:  # ctx.mark_non_differentiable: no gradient reaches backward through it
        outs[j] = ops.stop_gradient(outs[j])
    for j, i in results["dirty"].items():  # ctx.mark_dirty: the argument becomes the output, as in torch
        _update(args[i], outs[j], f"{name}.forward's in-place write (mark_dirty)")
        outs[j] = args[i]
    if not results["tuple_out"]:
        return outs[0]
    it = iter(outs)
    return tuple(next(it) if o is None else o for o in results["every"])


def _jvp_region(jvp: Callable, ctx: FunctionCtx, args: tuple, slots: list[int], grads: list[int],
                results: dict, out_types: list, name: str) -> Any:
    """The trace of `jvp(ctx, *tangents)`: (saved values, one tangent per float tensor argument)
    -> one tangent per output; `ctx.saved_tensors` are what forward gave `save_for_forward`."""
    n_out = results["n_out"]
    n_kept = len(out_types) - n_out

    def jv(*vals: Tensor) -> tuple:
        it = iter(vals[:n_kept])
        for _ in (s for s in results["saved"] if s):
            next(it)
        for a in results["attrs"]:
            setattr(ctx, a, next(it))
        ctx.saved_tensors = tuple(next(it) if s else None for s in results["for_fwd"])
        per: list[Any] = [None] * len(args)
        for k, t in zip(grads, vals[n_kept:]):
            per[slots[k]] = t
        out = jvp(ctx, *per)
        out = out if isinstance(out, tuple) else (out,)
        if len(out) == len(results["every"]) != n_out:  # one per output, non-tensor outputs included: theirs go
            out = tuple(t for t, o in zip(out, results["every"]) if o is None)
        if len(out) != n_out:
            raise TypeError(f"{name}.jvp returned {len(out)} tangent(s) for {n_out} output(s)")
        tangents = []
        for i, (t, want) in enumerate(zip(out, out_types)):
            if t is None:
                t = ops.full(want.shape, 0.0, want.dtype)
            if not isinstance(t, Tensor) or tuple(t.shape) != tuple(want.shape):
                raise ValueError(f"{name}.jvp returned {getattr(t, 'shape', type(t).__name__)} as the tangent of "
                                 f"output {i}, expected shape {list(want.shape)}")
            tangents.append(t.to(want.dtype))
        return tuple(tangents)

    example = [_placeholder(t) for t in out_types[n_out:]] + [_placeholder(TensorType(tuple(args[slots[k]].shape),
                                                                                      args[slots[k]].dtype))
                                                              for k in grads]
    traced = trace_call(jv, tuple(example), name=f"{name}_jvp")
    if traced.update_targets or len(traced.leaves) != len(example):
        raise located(NotImplementedError(f"{name}.jvp reads tensors that forward did not save (or draws random "
                                          "numbers); keep them with ctx.save_for_forward"), user_location())
    return traced


class _FunctionMeta(type):
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:  # torch's legacy `MyFn()(x)`
        raise RuntimeError(f"{cls.__name__}: call {cls.__name__}.apply(...) (legacy autograd functions with "
                           "non-static forward are not supported, as in torch)")


class Function(metaclass=_FunctionMeta):
    """torch.autograd.Function: subclass with static `forward(ctx, *args)` and `backward(ctx, *grads)`,
    call `apply(*args)` (module docstring)."""

    @staticmethod
    def forward(ctx: FunctionCtx, *args: Any) -> Any:
        raise NotImplementedError("You must implement the forward function for custom autograd.Function.")

    generate_vmap_rule = False  # accepted: vmap batches the forward and backward themselves

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: Any) -> None:
        """torch.func's style: `forward(*args)` without ctx, then this keeps what backward needs."""

    @staticmethod
    def backward(ctx: FunctionCtx, *grads: Any) -> Any:
        raise NotImplementedError("You must implement either the backward or vjp method for your custom "
                                  "autograd.Function to use it with backward mode AD.")

    vjp = backward

    @staticmethod
    def jvp(ctx: FunctionCtx, *tangents: Any) -> Any:
        """The forward-mode rule: one tangent per output from one per input (None where an input is
        not a floating-point tensor); `ctx.saved_tensors` are what forward saved with save_for_forward."""
        raise NotImplementedError("You must implement the jvp function for custom autograd.Function to use it "
                                  "with forward mode AD.")

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> Any:
        """`forward(ctx, *args, **kwargs)`: as in torch, keyword arguments reach forward but are no inputs
        of the op (backward returns gradients for the positional ones); with `setup_context` they are
        bound to forward's parameters (defaults included) and become positional inputs, as torch's."""
        forward = cls.forward
        if cls.setup_context is not Function.setup_context:
            bound = inspect.signature(cls.forward).bind(*args, **kwargs)
            bound.apply_defaults()
            args, kwargs = tuple(bound.args), {}

            def forward(ctx: FunctionCtx, *a: Any) -> Any:
                out = cls.forward(*a)
                cls.setup_context(ctx, a, out)
                return out
        if kwargs:
            plain = forward

            def forward(ctx: FunctionCtx, *a: Any) -> Any:
                return plain(ctx, *a, **kwargs)
        backward = cls.backward if cls.backward is not Function.backward else cls.vjp
        return _apply(forward, backward, args, cls.__name__, cls.jvp if cls.jvp is not Function.jvp else None)


class custom_vjp:  # noqa: N801 (jax's name)
    """jax.custom_vjp: `f = custom_vjp(f)`, then `f.defvjp(fwd, bwd)` with `fwd(*args) -> (out,
    residuals)` and `bwd(residuals, g) -> one gradient per argument`. Residuals are a tensor or a
    tuple/list/dict of tensors."""

    def __init__(self, fun: Callable) -> None:
        self.fun, self.fwd, self.bwd = fun, None, None
        self._in_fwd = 0  # `fwd` calling the function itself (jax's idiom) gets its plain value
        self.__name__ = getattr(fun, "__name__", "custom_vjp")
        self.__doc__ = getattr(fun, "__doc__", None)

    def defvjp(self, fwd: Callable, bwd: Callable) -> None:
        self.fwd, self.bwd = fwd, bwd

    def __call__(self, *args: Any) -> Any:
        if self.fwd is None or self.bwd is None:
            raise AttributeError(f"No VJP defined for custom_vjp function {self.__name__} using defvjp.")
        if current_trace() is None or self._in_fwd:
            return self.fun(*args)
        fwd, bwd = self.fwd, self.bwd

        def forward(ctx: FunctionCtx, *xs: Any) -> Any:
            self._in_fwd += 1
            try:
                out, res = fwd(*xs)
            finally:
                self._in_fwd -= 1
            leaves, ctx.res_tree = tree.flatten(res, "res")
            ctx.save_for_backward(*(t for _, t in leaves))
            return out

        def backward(ctx: FunctionCtx, *gs: Any) -> tuple:
            res = tree.unflatten(ctx.res_tree, list(ctx.saved_tensors))
            return tuple(bwd(res, gs[0] if len(gs) == 1 else gs))
        return _apply(forward, backward, args, self.__name__)


def grad(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("torch.autograd.grad has no counterpart: Avalon's gradients are values of a function, "
                       "`av.grad(f, argnums=...)(*args)`; for create_graph=True (a gradient penalty), call av.grad "
                       "inside the loss and differentiate that loss with av.grad again")


def backward(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("torch.autograd.backward has no counterpart: write `loss, grads = "
                       "av.value_and_grad(loss_fn)(model, x, y)` and then `opt.step(grads)`")


class _Functional:
    """torch.autograd.functional's `jacobian`, `hessian`, `vjp`, `jvp`, `vhp`, `hvp` over avalon.func:
    `inputs` a tensor or a tuple of tensors, results in torch's structure (a tensor for a tensor input
    and output; tuples by output, then by input). `create_graph` and `vectorize` change nothing here
    (Avalon's gradients are values, differentiable again); `strict=True`, which needs torch's graph to
    tell an independent output, is refused; forward-mode strategies need `vectorize=True`, as in torch."""

    @staticmethod
    def _inputs(inputs: Any, who: str) -> tuple[tuple, bool]:
        is_tuple = isinstance(inputs, tuple)
        if not is_tuple and not isinstance(inputs, Tensor):  # torch's refusal (a list too)
            raise TypeError(f"The inputs given to {who} must be either a Tensor or a tuple of Tensors but the given "
                            f"inputs has type {type(inputs)}.")
        xs = inputs if is_tuple else (inputs,)
        for i, x in enumerate(xs):
            if not isinstance(x, Tensor):
                raise TypeError(f"The inputs given to {who} must be either a Tensor or a tuple of Tensors but the "
                                f"value at index {i} has type {type(x)}.")
        return xs, is_tuple

    @staticmethod
    def _check(strict: bool, who: str) -> None:
        if strict:
            raise NotImplementedError(f"{who}(strict=True): Avalon cannot tell an output independent of an input "
                                      "the way torch's graph does; call it without strict")

    @staticmethod
    def _v(v: Any, like: tuple, is_tuple: bool, who: str, what: str) -> tuple:
        if v is None:
            if len(like) != 1 or like[0].numel() != 1:
                raise RuntimeError(f"The vector v can only be None if the {what} is a single Tensor with a single "
                                   f"element.")
            return (ops.ones_like(like[0]),)
        vs = tuple(v) if isinstance(v, (tuple, list)) else (v,)
        if len(vs) != len(like):
            raise RuntimeError(f"v is a tuple of invalid length: should be {len(like)} but got {len(vs)}.")
        for i, (a, b) in enumerate(zip(vs, like)):
            if tuple(a.shape) != tuple(b.shape):
                raise RuntimeError(f"Mismatch in shape in {who}: v has size {list(a.shape)} at index {i} while "
                                   f"the {what} has size {list(b.shape)} there")
        return vs

    @staticmethod
    def jacobian(func: Callable, inputs: Any, create_graph: bool = False, strict: bool = False,
                 vectorize: bool = False, strategy: str = "reverse-mode") -> Any:
        from . import func as _func
        if strategy not in ("forward-mode", "reverse-mode"):
            raise ValueError('Expected strategy to be either "forward-mode" or "reverse-mode". Hint: If your '
                             'function has more outputs than inputs, "forward-mode" tends to be more performant. '
                             'Otherwise, prefer to use "reverse-mode".')
        if strategy == "forward-mode" and not vectorize:
            raise NotImplementedError("torch.autograd.functional.jacobian: `strategy=\"forward-mode\"` is only "
                                      "implemented together with `vectorize=True`.")
        _Functional._check(strict, "jacobian")
        xs, is_tuple = _Functional._inputs(inputs, "jacobian")
        nums = tuple(range(len(xs))) if is_tuple else 0
        jac = _func.jacfwd if strategy == "forward-mode" else _func.jacrev
        return jac(lambda *a: func(*a), argnums=nums)(*xs)

    @staticmethod
    def hessian(func: Callable, inputs: Any, create_graph: bool = False, strict: bool = False,
                vectorize: bool = False, outer_jacobian_strategy: str = "reverse-mode") -> Any:
        from . import func as _func
        _Functional._check(strict, "hessian")
        xs, is_tuple = _Functional._inputs(inputs, "hessian")

        def scalar(*a: Any) -> Any:
            out = func(*a)
            if not isinstance(out, Tensor):
                raise RuntimeError("The function given to hessian should return a single Tensor")
            if out.numel() != 1:
                raise RuntimeError("The Tensor returned by the function given to hessian should contain a single "
                                   "element")
            return out.reshape(())
        return _func.hessian(scalar, argnums=tuple(range(len(xs))) if is_tuple else 0)(*xs)

    @staticmethod
    def vjp(func: Callable, inputs: Any, v: Any = None, create_graph: bool = False, strict: bool = False) -> tuple:
        from . import func as _func
        _Functional._check(strict, "vjp")
        xs, is_tuple = _Functional._inputs(inputs, "vjp")
        out, pull = _func.vjp(func, *xs)
        outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        vs = _Functional._v(v, outs, isinstance(out, tuple), "vjp", "output of the user-provided function")
        gs = pull(tuple(vs) if isinstance(out, (tuple, list)) else vs[0])
        return out, (tuple(gs) if is_tuple else gs[0])

    @staticmethod
    def jvp(func: Callable, inputs: Any, v: Any = None, create_graph: bool = False, strict: bool = False) -> tuple:
        from . import func as _func
        _Functional._check(strict, "jvp")
        xs, is_tuple = _Functional._inputs(inputs, "jvp")
        vs = _Functional._v(v, xs, is_tuple, "jvp", "input")
        return _func.jvp(func, xs, vs)

    @staticmethod
    def vhp(func: Callable, inputs: Any, v: Any = None, create_graph: bool = False, strict: bool = False) -> tuple:
        """`v` times the Hessian of a scalar `func` (torch's vhp), as the vjp of its gradient."""
        from . import func as _func
        _Functional._check(strict, "vhp")
        xs, is_tuple = _Functional._inputs(inputs, "vhp")
        vs = _Functional._v(v, xs, is_tuple, "vhp", "input")
        out = func(*xs)
        if not isinstance(out, Tensor) or out.numel() != 1:
            raise RuntimeError("The Tensor returned by the function given to hvp should contain a single element")
        nums = tuple(range(len(xs)))
        _, pull = _func.vjp(lambda *a: _func.grad(lambda *b: func(*b).reshape(()), argnums=nums)(*a), *xs)
        gs = pull(tuple(vs))
        return out, (tuple(gs) if is_tuple else gs[0])

    @staticmethod
    def hvp(func: Callable, inputs: Any, v: Any = None, create_graph: bool = False, strict: bool = False) -> tuple:
        """The Hessian of a scalar `func` times `v` (torch's hvp), as the jvp of its gradient."""
        from . import func as _func
        _Functional._check(strict, "hvp")
        xs, is_tuple = _Functional._inputs(inputs, "hvp")
        vs = _Functional._v(v, xs, is_tuple, "hvp", "input")
        out = func(*xs)
        if not isinstance(out, Tensor) or out.numel() != 1:
            raise RuntimeError("The Tensor returned by the function given to hvp should contain a single element")
        nums = tuple(range(len(xs)))
        _, hv = _func.jvp(lambda *a: _func.grad(lambda *b: func(*b).reshape(()), argnums=nums)(*a), xs, vs)
        return out, (tuple(hv) if is_tuple else hv[0])


def once_differentiable(fn: Callable) -> Callable:
    """torch.autograd.function.once_differentiable, accepted as is: Avalon's `backward` is traced into ops
    that differentiate again, so a second derivative through it is computed (torch refuses one)."""
    return fn


def _submodule(name: str, doc: str | None, **members: Any) -> types.ModuleType:
    """`avalon.autograd.<name>` importable as torch's submodules are (`from torch.autograd.function import
    once_differentiable`, `from torch.autograd.functional import jacobian`): this module is a file, not a
    package, so the namespace is registered in sys.modules, as `os.path` is."""
    mod = types.ModuleType(f"{__name__}.{name}", doc)
    for k, v in members.items():
        setattr(mod, k, v)
    mod.__all__ = list(members)
    sys.modules[mod.__name__] = mod
    return mod


class _VariableMeta(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, Tensor)


class Variable(metaclass=_VariableMeta):
    """torch.autograd.Variable, which code from before torch 0.4 wraps tensors in (gram-ai's and higgsfield's
    capsule networks: `Variable(torch.zeros(...))`, `from torch.autograd import Variable`). As in torch since
    then, every Tensor is a Variable and `Variable(t)` is `t.detach()` (the same elements) with `requires_grad`
    as given: False by default, so such a tensor kept on a module is not trained (see Tensor.requires_grad)."""

    def __new__(cls, data: Any, requires_grad: bool = False, volatile: bool = False) -> Tensor:  # type: ignore[misc]
        if volatile:
            warnings.warn("volatile was removed and now has no effect. Use `with torch.no_grad():` instead.",
                          UserWarning, stacklevel=2)
        if not isinstance(data, Tensor):
            raise TypeError(f"Variable data has to be a tensor, but got {type(data).__name__}")
        return data.detach().requires_grad_(requires_grad)


function = _submodule("function", "torch.autograd.function's names", Function=Function, FunctionCtx=FunctionCtx,
                      BackwardCFunction=FunctionCtx, once_differentiable=once_differentiable)
functional = _submodule("functional", _Functional.__doc__,
                        **{k: getattr(_Functional, k) for k in ("jacobian", "hessian", "vjp", "jvp", "vhp", "hvp")})
sys.modules[f"{__name__}.grad_mode"] = grad_mode

__all__ = ["BackwardResultError", "Function", "FunctionCtx", "Variable", "backward", "custom_vjp", "enable_grad",
           "function", "functional", "grad", "grad_mode", "inference_mode", "no_grad", "once_differentiable",
           "set_grad_enabled"]
