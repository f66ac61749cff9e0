"""Forward mode for users: the compile driver with a Jacobian-vector-product program.

`jvp(f, n_primals)(*primals, *tangents)` (what `avalon.func.jvp` calls, torch.func.jvp's counterpart)
is `Compiled(f, program=JvpProgram(...))`: per input signature `JvpProgram.build` traces
`f(*primals)` ONCE, turns the trace into one graph with `avalon.autodiff.jvp_graph` and orders its
inputs as the call passes them (the primals' leaves, then the tangents', then whatever the trace
lifted from an enclosing one) and its outputs as the caller receives them: `(output, tangent of
the output)`, plus `aux` with `has_aux`. Inside an enclosing trace (`av.compile`, `av.grad`,
`av.vmap`) the driver inlines that graph instead of running it, so `av.vmap` of a jvp is one
batched graph (`jacfwd`), `av.grad` of a jvp is reverse-over-forward and a jvp of `av.grad` is
forward-over-reverse (Hessian-vector products), each one graph.

Only the primals are differentiated: a model `f` (or one it closes over) keeps its parameters
constant, as torch.func.jvp does. An integer or boolean output's tangent is zeros of its type
(torch's `zeros_like`); `strict=True` refuses an output that does not depend on the primals
(torch's check).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from avalon.autodiff import NON_DIFFERENTIABLE, jvp_graph
from avalon.ir import Block, Builder, Graph, Value
from avalon.ir.clone import clone_op, inline_regions
from avalon.trace import Traced, _count_leaves, current_trace, signature, trace_call

from .core import Compiled
from .gradients import GRAD_PIPELINE, _name

PIPELINE = GRAD_PIPELINE
"""Cleanup before caching, as for gradients (the rules' zero splats and duplicated reads fold away)."""


class JvpProgram:
    """The Jacobian-vector-product program of `fn` for one signature (see the module docstring): the
    call's first `n_primals` arguments are the primals, the rest their tangents, leaf for leaf."""

    def __init__(self, n_primals: int, has_aux: bool, strict: bool, name: str):
        self.n_primals, self.has_aux, self.strict, self.name = n_primals, has_aux, strict, name

    def prepare(self, fn: Callable, args: tuple) -> tuple:
        if len(args) != 2 * self.n_primals:
            raise TypeError(f"{self.name}: expected {self.n_primals} primal(s) and as many tangents, got "
                            f"{len(args)} argument(s)")
        return args

    def finish(self, fn: Callable, args: tuple, out: Any) -> Any:
        return out

    def build(self, fn: Callable, args: tuple) -> Traced:
        n = self.n_primals
        (head, trees, *_), leaves = signature(fn, args)
        owner_n = len(head[2]) if head is not None else 0
        n_p = sum(_count_leaves(t) for t in trees[:n])
        if trees[:n] != trees[n:] or len(leaves) != owner_n + 2 * n_p:
            raise ValueError(f"{self.name}: the tangents must have the structure of the primals")
        primal, tangent = leaves[owner_n:owner_n + n_p], leaves[owner_n + n_p:]
        for (name, p), (_, t) in zip(primal, tangent):
            if tuple(p.shape) != tuple(t.shape) or p.dtype != t.dtype:
                raise ValueError(f"{self.name}: the tangent of {name} is {t.dtype}{list(t.shape)}, its primal "
                                 f"{p.dtype}{list(p.shape)}; they must match")
        outer = current_trace()
        traced = trace_call(fn, args[:n], keep_custom=True)  # (user-defined gradients: their jvp rules)
        graph = traced.graph
        k = owner_n + n_p  # graph inputs: the owner's leaves and the primals', then lifted values
        main_tree, aux_tree = _split(traced.out_tree, self.has_aux, fn)
        n_main = _count_leaves(main_tree)
        float_main = [j for j in range(n_main) if graph.outputs[j].dtype.is_float]
        wrt = [j for j in range(owner_n, k) if graph.inputs[j].dtype.is_float]
        if self.strict:
            _check_strict(graph, wrt, n_main)
        jg = jvp_graph(graph, wrt, name=self.name, outputs=float_main)
        # jg: inputs [owner, primals, lifted, tangents of the float primals]; outputs [traced outputs
        # (main, aux, state updates), tangents of the float main outputs]
        n_in, n_out = len(graph.inputs), len(graph.outputs)
        tangent_of = dict(zip(wrt, jg.inputs[n_in:]))
        if any(x is not y for x, (_, y) in zip(traced.leaves[:k], leaves)):
            raise RuntimeError(f"{self.name}: the trace of the primals does not match the call's arguments")
        body = Block([v.type for v in jg.inputs[:k]] + [v.type for v in graph.inputs[owner_n:k]]
                     + [v.type for v in jg.inputs[k:n_in]],
                     [v.name for v in jg.inputs[:k]] + [f"{v.name}_dot" for v in graph.inputs[owner_n:k]]
                     + [v.name for v in jg.inputs[k:n_in]])
        mapping: dict[Value, Value] = dict(zip(jg.inputs[:k], body.args[:k]))
        mapping.update(zip(jg.inputs[k:n_in], body.args[k + n_p:]))
        mapping.update((tangent_of[j], body.args[k + j - owner_n]) for j in wrt)
        for op in jg.ops:
            body.append(clone_op(op, mapping))
        out = Graph(self.name, body)
        b = Builder(out)
        outs = [mapping[v] for v in jg.outputs]
        tans = iter(outs[n_out:])
        main_tangents = [next(tans) if j in float_main else b.constant(0, v.shape, v.dtype)
                         for j, v in enumerate(outs[:n_main])]
        aux = outs[n_main:traced.n_outputs]
        out.set_outputs(outs[:n_main] + main_tangents + aux + outs[traced.n_outputs:n_out])
        if any(op.name == "custom_vjp" for op in out.ops):
            if outer is None:
                inline_regions(out.body, "custom_vjp")  # (their forwards: nothing differentiates this graph)
            else:
                outer.custom = True  # an enclosing av.grad differentiates them through their own backward
        kids = (main_tree, main_tree, aux_tree) if self.has_aux else (main_tree, main_tree)
        objs = [x for _, x in leaves] + list(traced.leaves[k:])
        return Traced(out, objs, ("tuple", kids), 2 * n_main + len(aux), traced.update_targets)


def jvp(f: Callable, n_primals: int, *, has_aux: bool = False, strict: bool = False) -> Compiled:
    """A function of `(*primals, *tangents)` returning `(f(*primals), J @ tangents)` (with `has_aux`,
    `f` returns `(output, aux)` and the result is `(output, tangent, aux)`), compiled per signature."""
    name = f"jvp_{_name(f)}" if _name(f).isidentifier() else "jvp"
    return Compiled(f, "numpy", PIPELINE, program=JvpProgram(n_primals, has_aux, strict, name), name=name)


def _split(out_tree: Any, has_aux: bool, f: Callable) -> tuple[Any, Any]:
    if not has_aux:
        return out_tree, ("tuple", ())
    if out_tree[0] not in ("tuple", "list") or len(out_tree[1]) != 2:
        raise RuntimeError("jvp(f, primals, tangents): output of function f should be a tuple: (output, aux) "
                           "if has_aux is True")
    return out_tree[1][0], out_tree[1][1]


def _check_strict(graph: Graph, wrt: list[int], n_main: int) -> None:
    """torch's strict mode: every output must depend on the primals through differentiable ops."""
    active = {graph.inputs[j] for j in wrt}
    for op in graph.ops:
        if op.name not in NON_DIFFERENTIABLE and any(v in active for v in op.operands):
            active.update(r for r in op.results if r.dtype.is_float)
    if any(v not in active for v in graph.outputs[:n_main]):
        raise RuntimeError("jvp(f, primals, tangents, strict=True): The output of f is independent of the inputs. "
                           "This is not allowed with strict=True.")
