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

`torch.autograd.grad` and `backward()` have no counterpart (gradients are values: `av.grad`);
`av.autograd.grad` says so. `Variable` is torch's legacy wrapper, which older code still calls.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from . import ops, tree
from .compiler.execute import feed
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
        """Accepted: an output nothing differentiates gets a zero cotangent anyway."""

    def set_materialize_grads(self, value: bool) -> None:
        """Accepted: cotangents of unused outputs are always zeros here (torch's default)."""
        self.materialize_grads = bool(value)

    def mark_dirty(self, *tensors: Any) -> None:
        raise NotImplementedError("mark_dirty: an autograd.Function that writes its inputs in place is not "
                                  "supported; return a new tensor from forward instead")


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
        outs = out if isinstance(out, tuple) else (out,)
        if not outs or not all(isinstance(o, Tensor) for o in outs):
            raise TypeError(f"{name}.forward must return a tensor or a tuple of tensors, got {type(out).__name__}")
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
        kept, gs = list(vals[:k]), vals[k:]
        it = iter(kept)
        ctx.saved_tensors = tuple(next(it) if s else None for s in results["saved"])
        for a in results["attrs"]:
            setattr(ctx, a, next(it))
        out = backward(ctx, *gs)
        out = out if isinstance(out, tuple) else (out,)
        if len(out) < len(args) or any(g is not None for g in out[len(args):]):
            raise TypeError(f"{name}.backward returned an incorrect number of gradients (expected {len(args)}, "
                            f"got {len(out)})")
        per = []
        for k2 in grads:
            i = slots[k2]
            g, want = out[i], args[i]
            if g is None:
                g = ops.full(want.shape, 0.0, want.dtype)
            if not isinstance(g, Tensor):
                raise TypeError(f"{name}.backward returned {type(g).__name__} as the gradient of argument {i}")
            if tuple(g.shape) != tuple(want.shape):
                if math.prod(g.shape) != math.prod(want.shape):
                    raise ValueError(f"Function {name}Backward returned an invalid gradient at index {i} - got "
                                     f"{list(g.shape)} but expected shape compatible with {list(want.shape)}")
                g = g.reshape(want.shape)
            per.append(g.to(want.dtype))
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
    return tuple(outs) if results["tuple_out"] else outs[0]


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
    def apply(cls, *args: Any) -> Any:
        forward = cls.forward
        if cls.setup_context is not Function.setup_context:
            def forward(ctx: FunctionCtx, *a: Any) -> Any:
                out = cls.forward(*a)
                cls.setup_context(ctx, a, out)
                return out
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


__all__ = ["Function", "FunctionCtx", "Variable", "backward", "custom_vjp", "grad"]
