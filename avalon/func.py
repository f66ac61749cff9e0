"""torch.func's counterparts: `functional_call`, `grad`, `grad_and_value`, `vjp`, `stack_module_state`.

`functional_call(model, {name: tensor}, args)` runs the model with those tensors in place of its own
(by dotted name, as `named_parameters` and `state_dict` spell them) and puts its own back afterwards,
even when forward raises. It is how a model becomes a function of its parameters: inside
`av.grad(loss)(params, x, y)` the dict is what is differentiated (its gradient is a dict by key), and
MAML's adapted parameters `{k: p - lr * g[k]}` run through the same model, second order included.

`grad`, `grad_and_value` and `vjp` are torch.func's, built on `av.grad` / `av.value_and_grad`: the
gradient has the structure of the differentiated argument (a tensor, or tuples, lists and dicts of
them), every tensor in it differentiated (buffers and frozen ones too, as torch.func does). Being
`av.grad`, each traces the function once per input signature; inside a traced or compiled function
they are recorded into its graph.

`jvp` is forward mode (`avalon.compiler.jvp`, `avalon.autodiff.jvp_graph`); `jacrev` and `jacfwd`
are one `vmap` of `vjp`s and of `jvp`s over a standard basis, and `hessian` is `jacfwd(jacrev)`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from . import ops
from .compiler import value_and_grad as _value_and_grad
from .compiler.jvp import jvp as _compiled_jvp
from .nn.module import _names_by_tensor
from .tensor import FROZEN, Buffer, Tensor

__all__ = ["functional_call", "grad", "grad_and_value", "stack_module_state", "vjp"]


# -- functional_call ------------------------------------------------------------------------------

def functional_call(module: Any, parameter_and_buffer_dicts: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                    args: Any = None, kwargs: Mapping[str, Any] | None = None, *, tie_weights: bool = True,
                    strict: bool = False) -> Any:
    """torch.func.functional_call: `module(*args, **kwargs)` with the given tensors in place of the
    module's parameters and buffers of those names (a tuple of dicts is merged; a key in two of them
    is an error). `tie_weights`: a tensor the module holds under several names (tied embeddings) is
    replaced under all of them by the value given for any one. `strict`: every parameter and buffer
    must be given, and nothing else. The module's own tensors are back when it returns or raises."""
    if isinstance(parameter_and_buffer_dicts, Mapping):
        merged = parameter_and_buffer_dicts
    elif isinstance(parameter_and_buffer_dicts, Sequence) and not isinstance(parameter_and_buffer_dicts, str):
        if not all(isinstance(d, Mapping) for d in parameter_and_buffer_dicts):
            raise ValueError("Expected all elements of parameter_and_buffer_dicts to be dictionaries")
        counts: dict[str, int] = {}
        for d in parameter_and_buffer_dicts:
            for k in d:
                counts[k] = counts.get(k, 0) + 1
        repeated = [k for k, n in counts.items() if n > 1]
        if repeated:
            raise ValueError(f"{repeated} appeared in multiple dictionaries; behavior of functional call is ambiguous")
        merged = {k: v for d in parameter_and_buffer_dicts for k, v in d.items()}
    else:
        raise ValueError("Expected parameter_and_buffer_dicts to be a dict, or a list/tuple of dicts, but got "
                         f"{type(parameter_and_buffer_dicts)}")
    return _functional_call(module, merged, args, kwargs, tie_weights=tie_weights, strict=strict)


def _functional_call(module: Any, parameters_and_buffers: Mapping[str, Any], args: Any = None,
                     kwargs: Mapping[str, Any] | None = None, *, tie_weights: bool = True,
                     strict: bool = False) -> Any:
    """torch.nn.utils.stateless.functional_call (one dict)."""
    if not callable(module):
        raise TypeError(f"functional_call: expected a callable model, got {type(module).__name__}")
    args = () if args is None else args if isinstance(args, tuple) else (args,)
    with _reparametrize(module, parameters_and_buffers, tie_weights, strict):
        return module(*args, **(kwargs or {}))


_MISSING = object()


@contextlib.contextmanager
def _reparametrize(module: Any, given: Mapping[str, Any], tie_weights: bool, strict: bool) -> Iterator[None]:
    names = _names_by_tensor(module)
    values = _untie(module, given, names) if tie_weights else dict(given)
    if strict:
        valid = {n for ns in names.values() for n in ns}
        missing, unexpected = sorted(valid - set(values)), sorted(set(values) - valid)
        msgs = []
        if unexpected:
            msgs.append(f"Unexpected key(s): {', '.join(map(repr, unexpected))}.")
        if missing:
            msgs.append(f"Missing key(s): {', '.join(map(repr, missing))}.")
        if msgs:
            raise RuntimeError(f"Error(s) in reparametrizing for {type(module).__name__}:\n\t" + "\n\t".join(msgs))
    swapped: list[tuple[str, Any, Any]] = []  # (name, slot's owner, what it held)
    try:
        for name, value in values.items():
            owner, key = _slot(module, name)
            swapped.append((name, owner, _swap(owner, key, value, name)))
        yield
    finally:
        now: dict[str, Any] = {}
        for name, owner, orig in reversed(swapped):  # reversed: a slot reached under two names ends as it was
            now[name] = _swap(owner, name.rpartition(".")[2], orig, name)
        if isinstance(given, dict):  # torch writes tensors the forward rebound back into the caller's dict
            for k in given:
                if k in now and now[k] is not _MISSING and now[k] is not given[k]:
                    given[k] = now[k]


def _untie(module: Any, given: Mapping[str, Any], names: dict[int, list[str]]) -> dict[str, Any]:
    """`given` with each tied tensor's value under all of its names."""
    tied = {n: ns for ns in names.values() if len(ns) > 1 for n in ns}
    out = dict(given)
    for name in [n for n in given if n in tied]:
        group = tied[name]
        present = [n for n in group if n in given]
        if len(present) > 1 and len({id(given[n]) for n in present}) != 1:
            raise ValueError(f"functional_call got multiple values for keys {sorted(group)}, which are tied. "
                             "Consider using tie_weights=False")
        for n in group:
            out[n] = given[name]
    return out


def _slot(module: Any, name: str) -> tuple[Any, str]:
    """The object holding `name`'s last part (a module, a list or a dict), found by walking the
    dotted path as the model walkers name it."""
    if not isinstance(name, str) or not name:
        raise KeyError(f"functional_call: a tensor name must be a non-empty string, got {name!r}")
    *path, _ = name.split(".")
    obj = module
    for part in path:
        nxt = _child(obj, part)
        if nxt is _MISSING:
            raise AttributeError(f"{type(obj).__name__} has no attribute `{part}` (looking up '{name}')")
        obj = nxt
    return obj, name.rpartition(".")[2]


def _child(obj: Any, key: str) -> Any:
    if isinstance(obj, (list, tuple)):
        return obj[int(key)] if key.lstrip("-").isdigit() and -len(obj) <= int(key) < len(obj) else _MISSING
    if isinstance(obj, dict):
        return next((v for k, v in obj.items() if str(k) == key), _MISSING)
    d = getattr(obj, "__dict__", None)
    if d is not None and key in d:
        return d[key]
    return getattr(obj, key, _MISSING)


def _swap(owner: Any, key: str, value: Any, name: str) -> Any:
    """Put `value` (`_MISSING`: remove) in `owner`'s slot `key`; return what it held. Written into
    the attribute dict directly, so a module's `__setattr__` does not turn the caller's tensor into
    a Buffer."""
    if value is not _MISSING and value is not None and not isinstance(value, Tensor):
        raise TypeError(f"functional_call: the value for '{name}' is a {type(value).__name__}, not an Avalon Tensor")
    if isinstance(owner, tuple):
        raise TypeError(f"functional_call: '{name}' is inside a tuple, which cannot be changed; hold those tensors in "
                        "a list")
    if isinstance(owner, list):
        i = int(key)
        if not -len(owner) <= i < len(owner):
            raise IndexError(f"functional_call: '{name}': index {i} out of range")
        old, owner[i] = owner[i], value
        return old
    if isinstance(owner, dict):
        k = next((k for k in owner if str(k) == key), key)
        old = owner.get(k, _MISSING)
        if value is _MISSING:
            owner.pop(k, None)
        else:
            owner[k] = value
        return old
    d = getattr(owner, "__dict__", None)
    in_dict = d is not None and key in d
    old = d[key] if in_dict else getattr(owner, key, _MISSING)
    if old is not _MISSING and old is not None and not isinstance(old, Tensor):
        raise TypeError(f"functional_call: attribute '{name}' is a {type(old).__name__}, not a Tensor")
    if d is not None and (in_dict or old is _MISSING):
        if value is _MISSING:
            d.pop(key, None)
        else:
            d[key] = value
    elif value is _MISSING:
        delattr(owner, key)
    else:
        setattr(owner, key, value)  # a property or slot holds it
    return old


# -- stack_module_state ---------------------------------------------------------------------------

def stack_module_state(models: Sequence[Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """torch.func.stack_module_state: the models' parameters and buffers stacked along a new first
    dimension, by name; new tensors, independent of the models' (parameters a trainable Tensor,
    frozen if frozen in every model; buffers Buffers)."""
    from .nn.module import named_buffers, named_parameters
    models = list(models)
    if not models:
        raise RuntimeError("stack_module_state: Expected at least one model, got 0.")
    modes = {bool(getattr(m, "training", True)) for m in models}
    if len(modes) > 1:
        raise RuntimeError("stack_module_state: Expected all models to have the same training/eval mode.")
    if any(type(m) is not type(models[0]) for m in models):
        raise RuntimeError("stack_module_state: Expected all models to be of the same class.")
    all_params = [dict(named_parameters(m)) for m in models]
    params = {}
    for k in all_params[0]:
        ts = [p[k] for p in all_params]
        needs = {t.requires_grad for t in ts}
        if len(needs) > 1:
            raise RuntimeError(f"Expected {k} from each model to have the same .requires_grad")
        params[k] = ops.stack(ts).requires_grad_(needs.pop())
    all_buffers = [dict(named_buffers(m)) for m in models]
    buffers = {}
    for k in all_buffers[0]:
        stacked = ops.stack([b[k] for b in all_buffers])
        buffers[k] = Buffer._wrap(stacked._data, stacked._dtype, stacked._device) if stacked.dtype.is_float else stacked
    return params, buffers


# -- grad, grad_and_value, vjp --------------------------------------------------------------------

def _flatten(x: Any, what: str) -> tuple[list[Tensor], Any]:
    """torch's pytree over tensors, tuples, lists and dicts: the tensors, and a hashable spec."""
    leaves: list[Tensor] = []

    def walk(v: Any) -> Any:
        if isinstance(v, Tensor):
            leaves.append(v)
            return "*"
        if isinstance(v, (tuple, list)):
            kind = type(v) if hasattr(v, "_fields") else type(v).__name__  # a namedtuple keeps its class
            return (kind, tuple(walk(c) for c in v))
        if isinstance(v, dict):
            return ("dict", tuple(v), tuple(walk(c) for c in v.values()))
        raise ValueError(f"Thing passed to transform API must be Tensor, got {type(v)} (in {what})")

    return leaves, walk(x)


def _unflatten(spec: Any, leaves: Iterator[Any]) -> Any:
    if spec == "*":
        return next(leaves)
    if spec[0] == "dict":
        return {k: _unflatten(s, leaves) for k, s in zip(spec[1], spec[2])}
    kids = [_unflatten(s, leaves) for s in spec[1]]
    if spec[0] == "list":
        return kids
    if spec[0] == "tuple":
        return tuple(kids)
    return spec[0](*kids)  # a namedtuple


def _split_aux(out: Any, has_aux: bool, who: str) -> tuple[Any, Any]:
    """`(output, aux)` of what `func` returned: the pair itself with `has_aux`, else `(out, None)`."""
    if not has_aux:
        return out, None
    if not (isinstance(out, tuple) and len(out) == 2):
        raise RuntimeError(f"{who}: output of function f should be a tuple: (output, aux) if has_aux is True")
    return out[0], out[1]


def _argnums(argnums: Any, n_args: int) -> tuple[tuple[int, ...], bool]:
    if isinstance(argnums, int) and not isinstance(argnums, bool):
        nums, multi = (argnums,), False
    elif isinstance(argnums, tuple) and argnums and all(isinstance(i, int) and not isinstance(i, bool)
                                                        for i in argnums):
        nums, multi = argnums, True
    else:
        raise RuntimeError(f"argnums must be int or Tuple[int, ...], got: {argnums!r}")
    if any(not -n_args <= i < n_args for i in nums):
        raise RuntimeError(f"Got argnums={argnums!r}, but only {n_args} positional inputs")
    nums = tuple(i % n_args for i in nums)
    if len(set(nums)) != len(nums):
        raise RuntimeError(f"argnums must be unique, got {argnums!r}")
    return nums, multi


def grad_and_value(func: Callable, argnums: int | tuple[int, ...] = 0, has_aux: bool = False) -> Callable:
    """torch.func.grad_and_value: `(gradient, value)`, or `(gradient, (value, aux))` with `has_aux`
    (note the order: `av.value_and_grad` returns the value first). The gradient has the structure of
    `args[argnums]` (a tuple of them for a tuple `argnums`)."""

    def loss(diff: tuple, specs: tuple, nums: tuple, rest: tuple, kwargs: dict) -> Any:
        args = list(rest)
        for i, leaves, spec in zip(nums, diff, specs):
            args[i] = _unflatten(spec, iter(leaves))
        out = func(*args, **kwargs)
        value = _split_aux(out, has_aux, "grad_and_value(f)(*args)")[0]
        if not isinstance(value, Tensor):
            raise RuntimeError(f"grad_and_value(f)(*args): Expected f(*args) to return a Tensor, got {type(value)}")
        if value.dim() != 0:
            raise RuntimeError(f"grad_and_value(f)(*args): Expected f(*args) to return a scalar Tensor, got tensor "
                               f"with {value.dim()} dims. Maybe you wanted to use the vjp or jacrev APIs instead?")
        return out

    name = str(getattr(func, "__name__", ""))
    loss.__name__ = name if name.isidentifier() else "f"  # av.grad names its graph and messages after it
    transformed = _value_and_grad(loss, argnums=0, has_aux=has_aux)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nums, multi = _argnums(argnums, len(args))
        diff, specs = [], []
        seen: set[int] = set()
        for i in nums:
            leaves, spec = _flatten(args[i], f"argument {i}")
            for t in leaves:
                if not t.dtype.is_float:
                    raise RuntimeError("only Tensors of floating point dtype can require gradients")
            # each leaf its own input, differentiated: a Buffer, a frozen tensor or a repeated one is
            # stood for by a copy (what torch.func's wrapping does)
            fresh = []
            for t in leaves:
                fresh.append(t.clone() if type(t) is not Tensor or id(t) in FROZEN or id(t) in seen else t)
                seen.add(id(t))
            diff.append(fresh)
            specs.append(spec)
        rest = tuple(None if i in nums else a for i, a in enumerate(args))
        value, g = transformed(tuple(diff), tuple(specs), nums, rest, dict(kwargs))
        grads = tuple(_unflatten(spec, iter(_leaf_grads(g, k, leaves)))
                      for k, (leaves, spec) in enumerate(zip(diff, specs)))
        return (grads if multi else grads[0]), value

    return wrapper


def _leaf_grads(g: Mapping[str, Tensor], k: int, leaves: list[Tensor]) -> list[Tensor]:
    return [g[f"{k}.{j}"] if f"{k}.{j}" in g else ops.zeros_like(t) for j, t in enumerate(leaves)]


def grad(func: Callable, argnums: int | tuple[int, ...] = 0, has_aux: bool = False) -> Callable:
    """torch.func.grad: the gradient of the scalar `func(*args)` w.r.t. `args[argnums]`, shaped like
    it; with `has_aux`, `(gradient, aux)`."""
    gv = grad_and_value(func, argnums, has_aux)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        g, value = gv(*args, **kwargs)
        return (g, value[1]) if has_aux else g

    return wrapper


def vjp(func: Callable, *primals: Any, has_aux: bool = False) -> tuple:
    """torch.func.vjp: `(output, vjp_fn)` (`(output, vjp_fn, aux)` with `has_aux`), where
    `vjp_fn(cotangents)` is a tuple with the gradient of `sum(output * cotangents)` w.r.t. each
    primal. `vjp_fn` runs `func` again, under `av.grad`."""
    out, aux = _split_aux(func(*primals), has_aux, "vjp(f, *primals)")
    out_leaves, out_spec = _flatten(out, "the output of f")
    for i, p in enumerate(primals):
        _flatten(p, f"primal {i}")

    def dot(*args: Any) -> Tensor:
        *ps, cts = args
        o = func(*ps)
        leaves, _ = _flatten(o[0] if has_aux else o, "the output of f")
        total = None
        for a, c in zip(leaves, cts):
            term = ops.sum(a * c)
            total = term if total is None else total + term
        return total if total is not None else ops.zeros(())

    pullback = grad(dot, argnums=tuple(range(len(primals))))

    def vjp_fn(cotangents: Any, *, retain_graph: bool | None = None, create_graph: bool | None = None) -> tuple:
        ct_leaves, ct_spec = _flatten(cotangents, "the cotangents")
        if ct_spec != out_spec:
            raise RuntimeError("Expected pytree structure of cotangents to be the same as pytree structure of "
                               f"outputs to the function. cotangents: {ct_spec}, primal output: {out_spec}")
        for i, (c, o) in enumerate(zip(ct_leaves, out_leaves)):
            if tuple(c.shape) != tuple(o.shape):
                raise RuntimeError(f"Mismatch in shape: grad_output[{i}] has a shape of {tuple(c.shape)} and "
                                   f"output[{i}] has a shape of {tuple(o.shape)}.")
        if not primals:
            return ()
        return tuple(pullback(*primals, list(ct_leaves)))

    return (out, vjp_fn, aux) if has_aux else (out, vjp_fn)


# -- Jacobians and forward products: vmap over reverse and forward mode ----------------------------

def jacrev(func: Callable, argnums: int | tuple[int, ...] = 0, *, has_aux: bool = False,
           chunk_size: int | None = None) -> Callable:
    """torch.func.jacrev: the Jacobian of `func` w.r.t. `args[argnums]`, one vector-Jacobian product
    per output element, all of them one `vmap` over the rows of an identity (one batched graph).
    Each output leaf of shape `So` gets, per differentiated argument leaf of shape `Sa`, a block
    of shape `So + Sa`, in the structure torch gives (outputs outside, arguments inside)."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nums, multi = _argnums(argnums, len(args))
        out, aux = _split_aux(func(*args, **kwargs), has_aux, "jacrev(f, ...)(*args)")
        out_leaves, out_spec = _flatten(out, "the output of f")
        sizes = [t.numel() for t in out_leaves]
        n = sum(sizes)
        eye = ops.eye(n, dtype=out_leaves[0].dtype) if out_leaves else None
        cts, start = [], 0
        for t, k in zip(out_leaves, sizes):
            cts.append(ops.reshape(eye[:, start:start + k], (n, *t.shape)))
            start += k

        def row(cts: list, *a: Any) -> Any:
            def dot(*p: Any) -> Tensor:
                o = func(*p, **kwargs)
                leaves, _ = _flatten(o[0] if has_aux else o, "the output of f")
                return sum((ops.sum(x * c) for x, c in zip(leaves, cts)), ops.zeros((), dtype=cts[0].dtype))
            return grad(dot, argnums=nums if multi else nums[0])(*a)

        rows = vmap(row, in_dims=(0, *(None,) * len(args)), chunk_size=chunk_size)(cts, *args)  # leaves (n, *Sa)
        row_leaves, row_spec = _flatten(rows, "the gradient")
        blocks, start = [], 0
        for t, k in zip(out_leaves, sizes):
            per = [ops.reshape(r[start:start + k], (*t.shape, *r.shape[1:])) for r in row_leaves]
            blocks.append(_unflatten(row_spec, iter(per)))
            start += k
        jac = _unflatten(out_spec, iter(blocks))
        return (jac, aux) if has_aux else jac

    return wrapper


def jacfwd(func: Callable, argnums: int | tuple[int, ...] = 0, has_aux: bool = False, *,
           randomness: str = "error") -> Callable:
    """torch.func.jacfwd: the Jacobian of `func` w.r.t. `args[argnums]` by forward mode, one
    Jacobian-vector product per input element, all of them one `vmap` of `jvp` over the standard
    basis (one batched graph). Same values and structure as `jacrev` (outputs outside, arguments
    inside); cheaper when the inputs are fewer than the outputs. `randomness` is vmap's."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nums, multi = _argnums(argnums, len(args))
        flat = [_flatten(args[i], f"argument {i}") for i in nums]
        leaves = [t for ls, _ in flat for t in ls]
        for t in leaves:
            if not t.dtype.is_float:
                raise RuntimeError(f"jacfwd: only floating-point inputs can be differentiated, got {t.dtype}")
        sizes = [t.numel() for t in leaves]
        n = sum(sizes)
        columns, start = [], 0  # the standard basis, one (n, *shape) block per differentiated leaf
        for t, k in zip(leaves, sizes):
            columns.append(ops.reshape(ops.eye(n, dtype=t.dtype)[:, start:start + k], (n, *t.shape)))
            start += k
        it = iter(columns)
        basis = tuple(_unflatten(spec, it) for _, spec in flat)

        def push(f: Callable, basis: tuple, *a: Any) -> Any:
            def at(*diff: Any) -> Any:
                full = list(a)
                for i, d in zip(nums, diff):
                    full[i] = d
                return f(*full, **kwargs)
            res = jvp(at, tuple(a[i] for i in nums), basis, has_aux=has_aux)
            return (res[1], res[2]) if has_aux else res[1]

        out_dims = (-1, 0) if has_aux else -1  # each output's directions last, as its Jacobian's columns
        # (`func` passed, not closed over: a model's parameters are then inputs, not constants)
        res = vmap(push, in_dims=(None, 0, *(None,) * len(args)), out_dims=out_dims,
                   randomness=randomness)(func, basis, *args)
        tangents, aux = res if has_aux else (res, None)
        out_leaves, out_spec = _flatten(tangents, "the output of f")
        blocks = []
        for o in out_leaves:  # (*So, n) -> per differentiated leaf (*So, *Sa), in the arguments' structure
            per, start = [], 0
            for t, k in zip(leaves, sizes):
                per.append(ops.reshape(o[..., start:start + k], (*o.shape[:-1], *t.shape)))
                start += k
            it = iter(per)
            args_jac = tuple(_unflatten(spec, it) for _, spec in flat)
            blocks.append(args_jac if multi else args_jac[0])
        jac = _unflatten(out_spec, iter(blocks))
        if has_aux:
            aux_leaves, aux_spec = _flatten(aux, "the aux output of f")
            return jac, _unflatten(aux_spec, iter(a[0] for a in aux_leaves))  # (every direction's aux is the same)
        return jac

    return wrapper


def hessian(func: Callable, argnums: int | tuple[int, ...] = 0) -> Callable:
    """torch.func.hessian: `jacfwd(jacrev(func))`, as torch's: forward mode over the reverse-mode
    gradient, one batched graph."""
    return jacfwd(jacrev(func, argnums), argnums)


def jvp(func: Callable, primals: Any, tangents: Any, *, strict: bool = False, has_aux: bool = False) -> tuple:
    """torch.func.jvp: `(func(*primals), J @ tangents)` (`(..., aux)` with `has_aux`) by forward mode:
    `func` is traced once and `avalon.autodiff.jvp_graph` computes the output and its tangent in one
    graph (inlined into an enclosing trace: `av.compile`, `av.grad`, `av.vmap`). Only the primals
    are differentiated (a model's own parameters are constants); an integer output's tangent is zeros.
    An `av.autograd.Function` reached by a tangent needs a `jvp` staticmethod (torch's); without one
    this raises, as torch does (avalon/autodiff/forward.py)."""
    if not isinstance(primals, tuple) or not isinstance(tangents, tuple):
        raise RuntimeError("jvp(f, primals, tangents): Expected primals and tangents to be tuples. E.g. "
                           "it should be valid to call f(*primals).")
    if len(primals) != len(tangents):
        raise RuntimeError("jvp(f, primals, tangents): Expected primals and tangents to have the same python "
                           f"structure. For example, if primals is a tuple of 3 tensors, tangents also must be. Got "
                           f"primals with structure {len(primals)} and tangents with structure {len(tangents)}")
    fresh = []
    for i, (p, t) in enumerate(zip(primals, tangents)):
        pl, ps = _flatten(p, f"primal {i}")
        tl, ts = _flatten(t, f"tangent {i}")
        if ps != ts or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(pl, tl)):
            raise RuntimeError(f"jvp(f, primals, tangents): the tangent {i} must have the structure and shapes of "
                               "its primal")
        # each tangent in its primal's dtype
        fresh.append(_unflatten(ts, iter(b if b.dtype == a.dtype else ops.cast(b, a.dtype)
                                         for a, b in zip(pl, tl))))
    if not any(_flatten(p, "")[0] for p in primals):
        raise RuntimeError("jvp(f, primals, tangents): Expected primals to contain at least one Tensor.")
    return tuple(_compiled_jvp(func, len(primals), has_aux=has_aux, strict=strict)(*primals, *fresh))


from .compiler import vmap  # noqa: E402  (torch.func.vmap is torch.vmap)

__all__ += ["hessian", "jacfwd", "jacrev", "jvp", "vmap"]


# -- the rest of torch.func ---------------------------------------------------------------------------

def linearize(func: Callable, *primals: Any) -> tuple[Any, Callable]:
    """torch.func.linearize: `(func(*primals), jvp_fn)`, `jvp_fn(*tangents)` the Jacobian-vector
    product at `primals` (forward mode, `jvp`: its graph is traced once per signature and reused)."""
    out = func(*primals)

    def jvp_fn(*tangents: Any) -> Any:
        return jvp(func, primals, tangents)[1]
    return out, jvp_fn


def functionalize(func: Callable, *, remove: str = "mutations") -> Callable:
    """torch.func.functionalize: `func` itself. Avalon's traced graphs have no mutation to remove:
    an in-place write is a new value in the IR (the graph prints it so), and a write to an
    argument or a model's state is returned and written back after the call."""
    if remove not in ("mutations", "mutations_and_views"):
        raise RuntimeError(f"functionalize(f, remove='mutations'): received invalid argument for remove={remove}. "
                           "Valid options are:\n     remove='mutations'\n     remove='mutations_and_views'")
    return func


def debug_unwrap(tensor: Any, *, recurse: bool = True) -> Any:
    """torch.func.debug_unwrap: the tensor itself (Avalon's transforms trace; they do not wrap)."""
    return tensor


def replace_all_batch_norm_modules_(root: Any) -> Any:
    """torch.func's: every batch norm under `root` stops tracking running statistics (it normalizes
    with the batch's own in both modes and writes no state), so `vmap` can map a model that has
    them in training mode. In place; returns `root`."""
    from .nn.layers import _BatchNorm
    for m in root.modules():
        if isinstance(m, _BatchNorm):
            m.running_mean = m.running_var = m.num_batches_tracked = None
            m.track_running_stats = False
    return root


__all__ += ["debug_unwrap", "functionalize", "linearize", "replace_all_batch_norm_modules_"]
