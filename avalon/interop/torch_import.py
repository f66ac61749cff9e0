"""`av.from_torch(module, *example_args)`: a torch module, through torch.export, as an Avalon model.

torch.export captures the module in its current mode (train or eval) and `run_decompositions()`
lowers it to core ATen (keeping `scaled_dot_product_attention` whole, so Avalon's attention sees it);
each ATen node becomes Avalon ops through the `ATEN` table. Parameters and buffers become Avalon
tensors named as in `module.state_dict()`; a buffer torch.export marks as mutated (batch norm's
running statistics in training) is written back with `trace.assign`, so the update happens under
`av.trace`, `av.grad` and `av.compile` too. torch only exports and hands over the weights; nothing
torch computes runs when the model is called.

The import runs the graph once, traced, on the example: every op without a rule and every rule that
cannot take its node is reported in one `UnsupportedOp`, before anything runs. Calls are bound like
the module's own `forward` (positionally or by name) and checked against the example: torch.export
fixes shapes, dtypes and non-tensor arguments, so a call that differs is a `TypeError` naming the
argument, never a silently different computation. `dynamic_shapes=` (torch.export's own argument,
`torch.export.Dim`s) keeps the dimensions it names symbolic: the model then takes any size in each
Dim's range (checked at the call), and `av.compile` traces once per shape it meets.
"""
from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np

from .. import ops
from ..complex import ComplexTensor, complex_dtype
from ..ir import dtypes as dt
from ..tensor import Buffer, Tensor, as_array
from ..trace import assign, source_location, trace
from . import aten_fft  # noqa: F401  (FFT and complex rules join ATEN)
from .aten import ATEN
from .model import ImportedModel, ImportedProgram, UnsupportedOp, get_dotted, node_location, source_line
from .rewrites import export_friendly

_MISSING = object()

__all__ = ["ATEN", "from_torch"]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _export(module: Any, args: tuple, kwargs: dict | None, dynamic_shapes: Any = None) -> Any:
    """torch.export, then core ATen; the two steps fail for different reasons (the module cannot be
    captured / a torch decomposition breaks on the captured graph), so the errors say which."""
    import torch
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"av.from_torch expects a torch.nn.Module, got {type(module).__name__}")
    name = type(module).__name__
    try:
        with export_friendly(module):  # MoE blocks' data-dependent expert loops, as static forwards
            ep = torch.export.export(module, args, kwargs or {}, dynamic_shapes=dynamic_shapes)
    except Exception as e:  # the exporter's own reason, in one line, and the model's line it names
        where = re.search(r"Caused by: \((.+?)\)", str(e))
        at = f" (at {where.group(1)})" if where else ""
        raise RuntimeError(f"av.from_torch: torch.export could not capture {name}: {_first_line(e)}{at}") from e
    # `with torch.no_grad():` regions are `wrap_with_set_grad_enabled(False, ...)` calls here, inlined by
    # the decomposition below: their names, to find their ops after it by provenance (`_no_grad`)
    hop = torch.ops.higher_order.wrap_with_set_grad_enabled
    no_grad = {n.name for n in ep.graph.nodes if n.target is hop and n.args and n.args[0] is False}
    table = torch.export.default_decompositions()
    # kept whole: Avalon has the op (and fuses it); torch's decomposition of it also breaks GPT-2's views
    table.pop(torch.ops.aten.scaled_dot_product_attention.default, None)
    # torch's decomposition of it adds the hinge terms of the padding after a row's -1 too (batches wrong)
    table.pop(torch.ops.aten.multilabel_margin_loss.default, None)
    try:
        return ep.run_decompositions(table), no_grad
    except Exception as e:
        raise RuntimeError(f"av.from_torch: torch.export captured {name}, but torch's decomposition of it to core "
                           f"ATen (run_decompositions) failed: {_first_line(e)}") from e


def _to_avalon(x: Any) -> Any:
    """Node arguments: torch dtypes become Avalon dtypes; everything else passes through."""
    import torch
    if isinstance(x, torch.dtype):
        return complex_dtype(x) if x.is_complex else dt.dtype(str(x).removeprefix("torch."))
    return x


def _check_graph(gm: Any) -> None:
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "placeholder", "output", "get_attr"):
            raise UnsupportedOp(f"av.from_torch: graph node kind {node.op!r} ({node.target}) is not supported")


def _warn_custom_functions(module: Any, args: tuple, kwargs: dict) -> None:
    """torch.export keeps a custom `torch.autograd.Function`'s forward and drops its backward, so
    the imported model's gradient through it is its forward ops' (a straight-through round's is 0):
    say so. Found by one eager call's autograd graph, on copies of the buffers (a batch norm's
    running statistics must not move); a forward that fails eagerly is not second-guessed."""
    import torch
    if not any(p.requires_grad for p in module.parameters()):
        return
    state = {**dict(module.named_parameters()), **{k: v.clone() for k, v in module.named_buffers()}}
    try:
        with torch.enable_grad():
            out = torch.func.functional_call(module, state, args, kwargs)
    except Exception:
        return
    todo = [t.grad_fn for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.grad_fn]
    seen, found = set(), []
    while todo:
        fn = todo.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        own = getattr(getattr(fn, "_forward_cls", None), "__module__", "").startswith("torch.")
        if isinstance(fn, torch.autograd.function.BackwardCFunction) and not own:  # not torch's own (map's)
            found.append(type(fn).__name__.removesuffix("Backward"))
        todo.extend(f for f, _ in fn.next_functions)
    if found:
        import warnings
        names = ", ".join(sorted(set(found)))
        warnings.warn(f"av.from_torch: {type(module).__name__} calls custom torch.autograd.Functions ({names}); "
                      "torch.export keeps their forward only, so Avalon's gradients through them are the forward "
                      "ops' own, not their custom backward. Write the gradient with av.custom_vjp on the Avalon "
                      "side if training depends on it", stacklevel=3)


def _stops_gradient(node: Any, no_grad: set[str]) -> bool:
    """Whether a decomposed node came from `aten.detach` or from a `torch.no_grad()` region (a
    `wrap_with_set_grad_enabled(False)` call named in `no_grad`), by its `from_node` provenance."""
    todo = list(node.meta.get("from_node") or ())
    while todo:
        src = todo.pop()
        target = str(getattr(src, "target", ""))
        if target == "aten.detach.default" or (target == "wrap_with_set_grad_enabled" and src.name in no_grad):
            return True
        todo.extend(getattr(src, "from_node", None) or ())
    return False


def _meta(val: Any) -> tuple[tuple[int | None, ...], Any] | None:
    """(shape, Avalon dtype) of a node's example value (a FakeTensor); symbolic dims are None. A
    SymInt torch.export specialized to a constant (Dim.AUTO on a dimension the code fixed) is that
    constant: the call's check holds it to it."""
    import torch
    from torch.fx.experimental.symbolic_shapes import is_concrete_int
    if not isinstance(val, torch.Tensor):
        return None
    shape = tuple(int(d) if is_concrete_int(d) else None for d in val.shape)
    try:
        return shape, _to_avalon(val.dtype)
    except (KeyError, TypeError, ValueError):
        return shape, None


def _has_complex(a: Any, k: Any) -> bool:
    import torch
    return any(isinstance(v, ComplexTensor) for v in torch.utils._pytree.tree_leaves((a, k)))


def _stand_in(val: Any) -> Any:
    """A value of the node's shape and dtype, so the import's trial run goes on past a node it
    cannot translate and finds the others."""
    m = _meta(val)
    if m is not None:
        return ops.full([1 if d is None else d for d in m[0]], 0, m[1] or dt.float32)
    if isinstance(val, (tuple, list)):
        return tuple(_stand_in(v) for v in val)
    return val if isinstance(val, (int, float, bool)) else None


def _mismatch(out: Any, val: Any) -> str | None:
    """How a rule's result differs from torch's example value (shape or dtype), or None."""
    m = _meta(val)
    if m is not None and isinstance(out, Tensor):
        shape, d = m
        if len(shape) != out.ndim or any(s is not None and s != o for s, o in zip(shape, out.shape)):
            return f"the rule gives shape {out.shape}, torch's is {tuple('?' if s is None else s for s in shape)}"
        if d is not None and out.dtype is not d:
            return f"the rule gives dtype {out.dtype}, torch's is {d}"
    if isinstance(val, (tuple, list)) and isinstance(out, (tuple, list)):
        for o, v in zip(out, val):
            why = _mismatch(o, v)
            if why:
                return why
    return None


class _Leaf(str):
    """A leaf's description in a structure's description (printed without quotes)."""

    def __repr__(self) -> str:
        return str(self)


def _kind(v: Any) -> _Leaf:
    if isinstance(v, (int, float, bool, str)) or v is None:
        return _Leaf(repr(v))
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        return _Leaf(f"tensor{tuple(v.shape)}")
    return _Leaf(type(v).__name__)


def _describe(v: Any) -> str:
    import torch.utils._pytree as pytree
    return repr(pytree.tree_map(_kind, v))


class _Arguments:
    """How the example was passed, so each call is laid out the same way: bound like the module's
    own `forward` (by position or by name), arranged as torch.export saw the example (its count of
    positional arguments, its keywords in order), and checked against it argument by argument."""

    def __init__(self, module: Any, args: tuple, kwargs: dict) -> None:
        import torch.utils._pytree as pytree
        self.owner = type(module).__name__
        self.n_pos, self.kw = len(args), list(kwargs)
        self.sig: inspect.Signature | None
        try:
            self.sig = inspect.signature(module.forward)
            self.sig.bind(*args, **kwargs)
        except (TypeError, ValueError):
            self.sig = None
        self.pos: list[tuple[str, bool]] = []  # (parameter, is *args) filling the example's positions
        self.varkw: str | None = None
        names: list[str] = []
        for p in (self.sig.parameters.values() if self.sig is not None else ()):
            if p.kind is p.VAR_KEYWORD:
                self.varkw = p.name
            if len(names) < self.n_pos and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                self.pos.append((p.name, False))
                names.append(p.name)
            elif len(names) < self.n_pos and p.kind is p.VAR_POSITIONAL:
                self.pos.append((p.name, True))
                names += [f"{p.name}[{j}]" for j in range(self.n_pos - len(names))]
        self.names = names + [f"args[{i}]" for i in range(len(names), self.n_pos)]
        self.arg_specs = [pytree.tree_flatten(a)[1] for a in args]
        self.kw_specs = {k: pytree.tree_flatten(v)[1] for k, v in kwargs.items()}
        self.example = (tuple(_describe(a) for a in args), {k: _describe(v) for k, v in kwargs.items()})
        paths = pytree.tree_flatten_with_path((tuple(args), dict(kwargs)))[0]
        self.leaf_names = [self._leaf_name(path) for path, _ in paths]

    def _leaf_name(self, path: tuple) -> str:
        head = self.names[path[1].idx] if path[0].idx == 0 else str(path[1].key)
        return head + "".join(str(k) for k in path[2:])

    def layout(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The call's arguments arranged like the example's."""
        if self.sig is None:
            same = set(kwargs) == set(self.kw)
            return tuple(args), ({k: kwargs[k] for k in self.kw} if same else dict(kwargs))
        try:
            bound = self.sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"imported {self.owner}: {e}") from None
        given = dict(bound.arguments)
        bound.apply_defaults()
        values = bound.arguments
        taken = {n for n, _ in self.pos} | set(self.kw)
        params = self.sig.parameters
        for name, v in given.items():
            default = params[name].default
            at_default = v is default or (isinstance(v, (int, float, str)) and _same_constant(v, default))
            extra = ([k for k in v if k not in self.kw] if name == self.varkw else
                     [name] if name not in taken and not at_default else [])
            if extra:
                raise TypeError(f"imported {self.owner}: argument {extra[0]!r} was not given when the model was "
                                "imported, so torch.export fixed it to its default; re-import with it "
                                f"(av.from_torch(module, ..., kwargs={{{extra[0]!r}: ...}}))")
        new_args: list[Any] = []
        for name, star in self.pos:
            new_args.extend(values[name]) if star else new_args.append(values[name])
        new_kw = {}
        for k in self.kw:
            if k in self.sig.parameters:
                new_kw[k] = values[k]
            elif self.varkw is not None and k in values[self.varkw]:
                new_kw[k] = values[self.varkw][k]
            else:
                raise TypeError(f"imported {self.owner}: missing keyword argument {k!r} (given when imported)")
        return tuple(new_args), new_kw

    def flatten(self, args: tuple, kwargs: dict, in_spec: Any) -> list[Any]:
        """The call's leaves, in torch.export's order; a different structure names the argument."""
        import torch.utils._pytree as pytree
        flat, spec = pytree.tree_flatten((args, kwargs))
        if in_spec is None or spec == in_spec:
            return flat
        why = f"structure {_describe((args, kwargs))} differs from the example's {self.example}"
        if len(args) != self.n_pos:
            why = f"takes {self.n_pos} positional argument(s) as imported, got {len(args)}"
        elif set(kwargs) != set(self.kw):
            missing, extra = sorted(set(self.kw) - set(kwargs)), sorted(set(kwargs) - set(self.kw))
            why = (f"missing keyword argument {missing[0]!r} (given when imported)" if missing else
                   f"keyword argument {extra[0]!r} was not given when imported")
        else:
            for name, a, s, ex in zip(self.names, args, self.arg_specs, self.example[0]):
                if pytree.tree_flatten(a)[1] != s:
                    why = f"argument {name!r} is {_describe(a)}, but was {ex} when imported"
                    break
            else:
                for k in self.kw:
                    if pytree.tree_flatten(kwargs[k])[1] != self.kw_specs[k]:
                        why = f"argument {k!r} is {_describe(kwargs[k])}, but was {self.example[1][k]} when imported"
                        break
        raise TypeError(f"imported {self.owner}: {why}")


def _same_constant(v: Any, example: Any) -> bool:
    if isinstance(v, (bool, np.bool_)) != isinstance(example, bool) or hasattr(v, "shape"):
        return False
    try:
        return bool(v == example) or (v != v and example != example)  # nan == nan here
    except Exception:
        return False


_READS_STORAGE = ("aten.as_strided.default", "aten.as_strided_copy.default", "aten.as_strided_scatter.default")


def _check_layout(node: Any, target: str) -> None:
    """Rules that read torch's storage order (as_strided) hold only for an input that was
    contiguous in torch: Avalon's tensors have no strides, their order is the logical one."""
    if target in _READS_STORAGE and node.args:
        src = getattr(node.args[0], "meta", {}).get("val")
        if src is not None and hasattr(src, "is_contiguous") and not src.is_contiguous():
            raise UnsupportedOp(f"its input is not contiguous in torch (strides {tuple(src.stride())} for shape "
                                f"{tuple(src.shape)}), so the view depends on a memory layout Avalon does not keep")


class _Program:
    """Runs the exported graph node by node through the `ATEN` rules. In a trial (`problems` set),
    a node that cannot be translated is recorded and stood in for by a value of its shape, so one
    run finds them all."""

    def __init__(self, ep: Any, arguments: _Arguments, constants: dict[str, Any], no_grad: set[str] = frozenset()
                 ) -> None:
        from torch.export.graph_signature import ConstantArgument, InputKind, OutputKind
        self.InputKind, self.OutputKind, self.ConstantArgument = InputKind, OutputKind, ConstantArgument
        self.gm, self.arguments, self.constants = ep.graph_module, arguments, constants
        self.nodes = list(self.gm.graph.nodes)
        self.placeholders = [n for n in self.nodes if n.op == "placeholder"]
        self.in_specs, self.out_specs = list(ep.graph_signature.input_specs), list(ep.graph_signature.output_specs)
        self.in_spec, self.out_spec = ep.call_spec.in_spec, ep.call_spec.out_spec
        self.ranges = dict(ep.range_constraints)  # symbolic dim -> its allowed sizes (dynamic_shapes)
        self.problems: list[tuple[str, str, str]] | None = None
        # nodes whose results carry no gradient: torch's `.detach()` (an `alias` once decomposed) and the
        # ops of `torch.no_grad()` regions; an import that let gradients through them trained wrongly
        self.detached = {n for n in self.nodes if n.op == "call_function" and _stops_gradient(n, no_grad)}
        # a parameter written in place (nn.Embedding's max_norm renorm, under no_grad): the node of its new
        # value -> the parameter's placeholder; later reads of the value differentiate to the parameter
        params = {s.target: n for n, s in zip(self.placeholders, self.in_specs) if s.kind == InputKind.PARAMETER}
        outputs = next(n for n in reversed(self.nodes) if n.op == "output").args[0]
        self.mutated = {v: params[s.target] for v, s in zip(outputs, self.out_specs)
                        if s.kind == OutputKind.PARAMETER_MUTATION and s.target in params}
        self._locs: dict[Any, Any] = {}  # node -> the Location of its source line (None: no stack trace)
        self._dims: list[tuple[str, int, Any, int]] = []  # one call's symbolic input dims (`_check_dims`)

    def _input(self, v: Any, node: Any, s: Any, name: str) -> Any:
        owner = self.arguments.owner
        if isinstance(s.arg, self.ConstantArgument):
            if not _same_constant(v, s.arg.value):
                raise TypeError(f"imported {owner}: argument {name!r} is {_kind(v)}, but the model was imported "
                                f"with {name}={s.arg.value!r}; torch.export fixes non-tensor arguments to the "
                                "example's values: re-import with this value")
            return s.arg.value
        m = _meta(node.meta.get("val"))
        plain = isinstance(v, (Tensor, ComplexTensor))
        arr = None if plain or v is None else np.asarray(v)
        if not plain and (arr is None or arr.dtype.kind not in "biufc"):
            was = f"a tensor of shape {m[0]}" if m is not None else "a tensor"
            raise TypeError(f"imported {owner}: argument {name!r} is {_kind(v)}, but was {was} when imported")
        if arr is not None and arr.dtype.kind == "c":  # a complex input: a ComplexTensor (avalon/complex.py)
            arr = arr.astype(np.complex128 if arr.dtype == np.complex128 else np.complex64)
            t = ComplexTensor(Tensor(arr.real.copy()), Tensor(arr.imag.copy()))
        else:
            t = v if plain else Tensor(arr)
        if m is not None:
            shape, d = m
            bad_shape = len(shape) != t.ndim or any(e is not None and e != g for e, g in zip(shape, t.shape))
            if bad_shape or (d is not None and t.dtype is not d):
                shown = tuple("?" if e is None else e for e in shape)
                raise TypeError(f"imported {owner}: input {name!r} has shape {t.shape} and dtype {t.dtype}, but the "
                                f"model was imported for shape {shown} and dtype {d}; torch.export fixes shapes "
                                "and dtypes (but the dimensions named in dynamic_shapes=): re-import with an "
                                "example of the new shape, or with dynamic_shapes")
            for i, d in enumerate(getattr(node.meta.get("val"), "shape", ())):
                expr = getattr(getattr(d, "node", None), "expr", None)
                if expr is not None and getattr(expr, "free_symbols", None):
                    self._dims.append((name, i, expr, t.shape[i]))
        return t

    def _check_dims(self) -> None:
        """The symbolic dimensions of one call's inputs must agree with each other and lie in their Dims'
        ranges, as torch.export assumed: two inputs sharing a Dim have one size (else a batch of 1 would
        silently broadcast against a batch of 4), and a derived Dim (`2 * h`) is that function of its
        root (a size of 9 for it fits no h)."""
        import sympy

        owner, dims, self._dims = self.arguments.owner, self._dims, []
        value: dict[Any, int] = {}
        seen: dict[Any, tuple[str, int, int]] = {}
        for name, i, expr, size in sorted(dims, key=lambda d: not d[2].is_Symbol):  # roots bind first
            free = expr.free_symbols - value.keys()
            if len(free) == 1:  # a root, or a derived Dim whose root no input shows alone: solve for it
                (sym,) = free
                sol = [size] if expr.is_Symbol else [r for r in sympy.solve(sympy.Eq(expr, size), sym) if r.is_integer]
                if len(sol) != 1:
                    raise TypeError(f"imported {owner}: input {name!r} dimension {i} is {size}, but torch.export "
                                    f"traced it as {expr}, which no integer {sym} gives")
                value[sym], seen[sym] = int(sol[0]), (name, i, size)
            want = int(expr.subs(value))
            if want != size:
                first = seen.get(next(iter(expr.free_symbols)), ("?", 0, 0))
                raise TypeError(f"imported {owner}: input {name!r} dimension {i} is {size}, but torch.export traced "
                                f"it as {expr}, which is {want} here (from input {first[0]!r} dimension {first[1]}); "
                                "the inputs' sizes must agree as they did in the example")
        for sym, v in value.items():
            r = self.ranges.get(sym)
            if r is None:
                continue
            # an unbounded Dim's upper end is torch's int_oo, which says is_finite (it is no sympy Integer)
            lo, hi = int(r.lower), (int(r.upper) if r.upper.is_Integer else None)
            if v < lo or (hi is not None and v > hi):
                name, i, size = seen[sym]
                root = "" if size == v else f" ({sym} = {v})"
                raise TypeError(f"imported {owner}: input {name!r} dimension {i} is {size}{root}, outside its dynamic "
                                f"range [{lo}, {'inf' if hi is None else hi}] (torch.export assumed that range)")

    def _apply(self, node: Any, a: Any, k: Any) -> Any:
        target = str(node.target)
        rule = ATEN.get(target)
        if self.problems is None:
            return rule(*a, **k)  # type: ignore[misc]  # the trial found every rule
        where = source_line(node.meta.get("stack_trace"))
        val = node.meta.get("val")
        if rule is None:
            self.problems.append((target, "not supported (no rule)", where))
            return _stand_in(val)
        try:
            _check_layout(node, target)
            out = rule(*a, **k)
        except Exception as e:
            why = _first_line(e)
            if _has_complex(a, k) and not getattr(rule, "_complex_rule", False):
                why = "does not support complex inputs (Avalon has no complex rule for it)"
            self.problems.append((target, why.removeprefix("UnsupportedOp: "), where))
            return _stand_in(val)
        why = _mismatch(out, val)
        if why:
            self.problems.append((target, why, where))
            return _stand_in(val)
        return out

    def run(self, model: ImportedModel, args: tuple, kwargs: dict) -> Any:
        import torch
        args, kwargs = self.arguments.layout(args, kwargs)
        flat = self.arguments.flatten(args, kwargs, self.in_spec)
        user = iter(zip(flat, self.arguments.leaf_names))
        env: dict[Any, Any] = {}
        IK = self.InputKind
        self._dims = []
        for node, s in zip(self.placeholders, self.in_specs):
            if s.kind in (IK.PARAMETER, IK.BUFFER):
                env[node] = get_dotted(model, s.target)
            elif s.kind in (IK.CONSTANT_TENSOR, IK.CUSTOM_OBJ):
                c = self.constants[s.target]
                env[node] = Tensor(c) if isinstance(c, np.ndarray) else c
            elif s.kind == IK.TOKEN:  # the order of effectful ops (`with_effects`): Avalon's run in order anyway
                env[node] = None
            else:
                v, name = next(user)
                env[node] = self._input(v, node, s, name)
        self._check_dims()
        result = self._run_nodes(self.gm, self.nodes, env)
        outs = []
        for value, s in zip(result or (), self.out_specs):
            if s.kind in (self.OutputKind.BUFFER_MUTATION, self.OutputKind.PARAMETER_MUTATION):
                target = get_dotted(model, s.target)
                if s.kind == self.OutputKind.PARAMETER_MUTATION:
                    value = ops.stop_gradient(value)
                assign(target, value if value.dtype == target.dtype else value.astype(target.dtype))
            elif s.kind != self.OutputKind.TOKEN:
                outs.append(value)
        return torch.utils._pytree.tree_unflatten(outs, self.out_spec)

    def _run_nodes(self, gm: Any, nodes: list, env: dict) -> Any:
        """Run the call and attribute nodes of `gm` over `env` (its placeholders already bound); the
        output node's value. A submodule attribute (the branches of `torch.cond`, the body of
        `torch.while_loop`) becomes a function running its own graph the same way."""
        import torch
        result = None
        for node in nodes:
            if node.op == "call_function":
                a = torch.fx.node.map_arg(node.args, env.__getitem__)
                k = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
                a = torch.utils._pytree.tree_map(_to_avalon, a)
                k = torch.utils._pytree.tree_map(_to_avalon, k)
                loc = self._locs.get(node, _MISSING)
                if loc is _MISSING:
                    loc = self._locs[node] = node_location(node.meta.get("stack_trace"))
                with source_location(loc):  # its ops carry the torch model's line, not the caller's
                    env[node] = self._apply(node, a, k)
                if node in self.detached:
                    env[node] = torch.utils._pytree.tree_map(
                        lambda v: ops.stop_gradient(v) if isinstance(v, Tensor) and v.dtype.is_float else v, env[node])
                if node in self.mutated and isinstance(env[node], Tensor):  # the new value, the parameter's gradient
                    p = env[self.mutated[node]]
                    env[node] = ops.add(ops.stop_gradient(env[node]), ops.sub(p, ops.stop_gradient(p)))
            elif node.op == "get_attr":
                attr = getattr(gm, node.target)
                env[node] = (self._subgraph(attr) if isinstance(attr, torch.fx.GraphModule)
                             else Tensor(attr.detach().cpu().numpy().copy()))
            elif node.op == "output":
                result = torch.fx.node.map_arg(node.args[0], env.__getitem__)
        return result

    def _subgraph(self, sub: Any) -> Any:
        nodes = list(sub.graph.nodes)
        inputs = [n for n in nodes if n.op == "placeholder"]

        def run(*args: Any) -> tuple:
            if len(args) != len(inputs):
                raise TypeError(f"subgraph takes {len(inputs)} operands, got {len(args)}")
            out = self._run_nodes(sub, nodes, dict(zip(inputs, args)))
            return tuple(out) if isinstance(out, (list, tuple)) else (out,)
        return run

    def trial(self, model: ImportedModel, args: tuple, kwargs: dict) -> None:
        """Trace one call on the example; raise one UnsupportedOp listing every node that failed."""
        import torch
        import torch.utils._pytree as pytree

        def avalon(v: Any) -> Any:
            if isinstance(v, torch.Tensor) and v.is_complex():
                arr = v.detach().cpu().numpy()
                return ComplexTensor(Tensor(arr.real.copy()), Tensor(arr.imag.copy()))
            return Tensor(v.detach().cpu().numpy()) if isinstance(v, torch.Tensor) else v
        try:
            a, k = pytree.tree_map(avalon, (tuple(args), dict(kwargs)))
        except (TypeError, RuntimeError):  # an example dtype numpy cannot hold: checked at the first call
            return
        self.problems = problems = []
        try:
            trace(lambda m, a, k: m(*a, **k), model, a, k)
        except Exception:  # outside the rules (outputs the tracer cannot return): left to the call
            pass
        finally:
            self.problems = None
        if problems:
            raise UnsupportedOp(_report(self.arguments.owner, problems))


def _report(owner: str, problems: list[tuple[str, str, str]]) -> str:
    groups: dict[tuple[str, str], list[str]] = {}
    for target, why, where in problems:
        groups.setdefault((target, why), []).append(where)
    ops_ = {t for t, _ in groups}
    lines = [f"av.from_torch: {owner} has {len(problems)} node(s) of {len(ops_)} ATen op(s) Avalon cannot import "
             "(all listed; nothing has run):"]
    for (target, why), wheres in groups.items():
        lines.append(f"  {target} x{len(wheres)}: {why} (first from {wheres[0]})")
    return "\n".join(lines)


def from_torch(module: Any, *example_args: Any, kwargs: dict | None = None,
               dynamic_shapes: Any = None) -> ImportedModel:
    """Import `module` (called as `module(*example_args, **kwargs)`) into an Avalon model; shapes,
    dtypes and non-tensor arguments are the example's (torch.export's static shapes), except the
    dimensions `dynamic_shapes` names (torch.export's argument, as is)."""
    import torch
    from torch.export.graph_signature import OutputKind
    kwargs = dict(kwargs or {})
    ep, no_grad = _export(module, tuple(example_args), kwargs, dynamic_shapes)
    _warn_custom_functions(module, tuple(example_args), kwargs)
    training = bool(module.training)
    _check_graph(ep.graph_module)

    sd = module.state_dict(keep_vars=True)
    params = dict(ep.named_parameters())
    buffers = dict(ep.named_buffers())
    state: list[tuple[str, Tensor]] = []
    made: dict[int, Tensor] = {}  # tied weights stay one tensor under every name

    def convert(t: Any, trainable: bool) -> Tensor:
        if id(t) not in made:
            # (numpy has no bfloat16: a bf16 tensor's values, exact in f32, under Avalon's bfloat16 dtype)
            d = dt.bfloat16 if t.dtype == torch.bfloat16 else None
            arr = as_array(t).copy()
            made[id(t)] = (Tensor(arr, dtype=d) if trainable and arr.dtype.kind == "f"
                           else Buffer(arr, dtype=d or dt.dtype(arr.dtype)))
        return made[id(t)]

    names_in_graph = set(params) | set(buffers)
    for name, t in sd.items():
        if name in names_in_graph or name in dict(module.named_parameters()) or name in dict(module.named_buffers()):
            state.append((name, convert(t, name in params)))
    extra = [(n, t) for n, t in list(params.items()) + list(buffers.items()) if n not in sd]
    for name, t in extra:  # non-persistent buffers: not in state_dict, but the graph reads them
        state.append((name, convert(t, name in params)))

    constants = {k: (v if not isinstance(v, torch.Tensor) else as_array(v).copy() if v.dtype != torch.bfloat16
                     else Tensor(as_array(v).copy(), dtype=dt.bfloat16))
                 for k, v in ep.constants.items()}
    for s in ep.graph_signature.output_specs:
        if s.kind not in (OutputKind.USER_OUTPUT, OutputKind.BUFFER_MUTATION, OutputKind.PARAMETER_MUTATION,
                          OutputKind.TOKEN):
            raise UnsupportedOp(f"av.from_torch: output kind {s.kind.name} ({s.target}) is not supported")
    program = _Program(ep, _Arguments(module, tuple(example_args), kwargs), constants, no_grad)
    mode = "train" if training else "eval"
    model = ImportedModel(state, ImportedProgram(program.run, f"{type(module).__name__} from torch.export, "
                                                              f"{mode} mode"), training)
    program.trial(model, tuple(example_args), kwargs)
    return model
