"""`av.vmap`: the compile driver with a batching program (torch.vmap, jax.vmap).

`vmap(f, in_dims, out_dims)(*args)` traces `f` ONCE on one example's shapes (placeholders: the
mapped dimension taken out of each mapped argument), batches that graph with
`avalon.batching.batch_graph` and runs it like any compiled program, cached per input signature.
Inside an enclosing trace (`av.compile`, `av.grad`, another `av.vmap`) the batched graph is inlined
there instead, so `av.vmap(av.grad(loss))` gives per-example gradients as one graph, `av.grad` of a
vmapped function differentiates the batched graph, and vmaps nest.

`in_dims` is torch's: an int or None for every argument, or a tuple with one entry per positional
argument, each an int, None (the argument is shared by every example: a model, a weight, a Python
number) or a structure matching the argument's (a dict of parameters mapped at 0 next to a shared
one). Keyword arguments are shared. `out_dims` is an int or a tuple with one entry per output.
`chunk_size` (torch's) maps `chunk_size` examples per call of the batched program and concatenates
the results: the same values, less memory at once (a last, shorter chunk compiles a second
signature; with randomness="same" every chunk starts from the same random state, as in torch).
Unlike torch, `f` may not write state (a batch norm's running statistics in training mode): the
error says which.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from avalon.batching import RANDOMNESS, batch_graph
from avalon.ir import dtypes as dt
from avalon.tensor import Tensor
from avalon.trace import Traced, current_trace, signature, trace_call

from .core import Compiled
from .gradients import GRAD_PIPELINE, _name

PIPELINE = GRAD_PIPELINE
"""Cleanup before caching, as for gradients (the rules' reshapes and transposes fold away)."""


class VmapError(ValueError):
    """vmap cannot map these arguments as asked (torch raises ValueError for the same cases)."""


class VmapProgram:
    """The batched program of `fn` for one signature (see the module docstring)."""

    def __init__(self, in_dims: Any, out_dims: Any, randomness: str, name: str):
        self.in_dims, self.out_dims, self.randomness, self.name = in_dims, out_dims, randomness, name

    def prepare(self, fn: Callable, args: tuple) -> tuple:
        if isinstance(self.in_dims, tuple) and len(self.in_dims) != len(args):
            raise VmapError(f"vmap({_name(fn)}, in_dims={self.in_dims!r}, ...)(<inputs>): in_dims is not "
                            f"compatible with the structure of `inputs`. in_dims has structure of length "
                            f"{len(self.in_dims)} but inputs has {len(args)} positional argument(s)")
        return args

    def finish(self, fn: Callable, args: tuple, out: Any) -> Any:
        return out

    def build(self, fn: Callable, args: tuple) -> Traced:
        (head, trees, *_), leaves = signature(fn, args)
        dims: list[int | None] = [None] * (len(head[2]) if head is not None else 0)  # an owning model is shared
        per_arg = self.in_dims if isinstance(self.in_dims, tuple) else (self.in_dims,) * len(args)
        for i, (tr, spec) in enumerate(zip(trees, per_arg)):
            dims += _leaf_dims(tr, spec, f"argument {i}", fn, self.in_dims)
        sizes = {}
        for (name, x), d in zip(leaves, dims):
            if d is not None:
                rank = np.ndim(x)
                if not -rank <= d < rank:
                    raise VmapError(f"vmap({_name(fn)}, in_dims={self.in_dims!r}, ...)(<inputs>): Got in_dim={d} "
                                    f"for {name}, but it has dimension {rank}: in_dim must be in [-{rank}, {rank})")
                sizes[name] = x.shape[d]
        if not sizes:
            raise VmapError(f"vmap({_name(fn)}, in_dims={self.in_dims!r}, ...)(<inputs>): At least one of the "
                            "inputs must be batched: every in_dim is None or names no tensor")
        if len(set(sizes.values())) > 1:
            raise VmapError(f"vmap: Expected all tensors to have the same size in the mapped dimension, got sizes "
                            f"{list(sizes.values())} for the mapped dimension ("
                            + ", ".join(f"{n}: {s}" for n, s in sizes.items()) + ")")
        size = next(iter(sizes.values()))
        dims = [None if d is None else d % np.ndim(x) for (_, x), d in zip(leaves, dims)]

        # one example's arguments: each mapped leaf replaced by a placeholder without its mapped dimension
        stand_in = {id(x): _placeholder(x, d) for (_, x), d in zip(leaves, dims) if d is not None}
        owner_n = len(head[2]) if head is not None else 0
        flat = iter([stand_in.get(id(x), x) for _, x in leaves[owner_n:]])
        from avalon.trace import _count_leaves
        from avalon.tree import unflatten
        example = tuple(unflatten(tr, [next(flat) for _ in range(_count_leaves(tr))], a) for a, tr in zip(args, trees))
        outer = current_trace()
        traced = trace_call(fn, example, keep_custom=outer is not None)
        if traced.update_targets:
            raise VmapError(f"vmap({_name(fn)}): the function writes state ({len(traced.update_targets)} tensor(s), "
                            "e.g. a batch norm's running statistics in training mode, or an in-place update of an "
                            "argument); a batched call cannot write one value per example into it. Put the model in "
                            "eval mode, or return the new values instead")
        n = len(leaves)
        if len(traced.graph.inputs) < n or any(x is not stand_in.get(id(o), o)
                                               for x, (_, o) in zip(traced.leaves, leaves)):
            raise VmapError(f"vmap({_name(fn)}): the same tensor is passed both mapped and unmapped; pass a copy")
        in_axes = dims + [None] * (len(traced.graph.inputs) - n)
        out_axes = self._out_axes(fn, traced)
        graph = batch_graph(traced.graph, in_axes, size, out_axes, randomness=self.randomness, name=self.name)
        if outer is not None and any(op.name == "custom_vjp" for op in graph.ops):
            outer.custom = True  # an enclosing av.grad differentiates them through their own backward
        objs = [x for _, x in leaves] + list(traced.leaves[n:])
        return Traced(graph, objs, traced.out_tree, traced.n_outputs, [])

    def _out_axes(self, fn: Callable, traced: Traced) -> list[int | None]:
        from avalon.trace import _count_leaves
        tr = traced.out_tree
        if isinstance(self.out_dims, (tuple, list)):
            kids = tr[1] if tr[0] in ("tuple", "list") else (tr,)
            if len(kids) != len(self.out_dims):
                raise VmapError(f"vmap({_name(fn)}, ..., out_dims={self.out_dims!r})(<inputs>): out_dims is not "
                                f"compatible with the structure of `outputs`. out_dims has length "
                                f"{len(self.out_dims)} but outputs has length {len(kids)}")
            axes = [d for k, d in zip(kids, self.out_dims) for _ in range(_count_leaves(k))]
        else:
            axes = [self.out_dims] * traced.n_outputs
        out = []
        for v, d in zip(traced.graph.outputs, axes):
            if d is not None and not isinstance(d, int):
                raise VmapError(f"vmap: out_dims must be an int, None or a tuple of them, got {d!r}")
            rank = v.type.rank + 1
            if d is not None and not -rank <= d < rank:
                raise VmapError(f"vmap: out_dim={d} is out of range for an output of dimension {rank} "
                                f"(a result of shape {v.shape} and the mapped dimension)")
            out.append(None if d is None else d % rank)
        return out


def _leaf_dims(tr: Any, spec: Any, where: str, fn: Callable, in_dims: Any) -> list[int | None]:
    """The in_dim of each leaf of one argument (its tree `tr`), from its in_dims entry `spec`."""
    kind = tr[0]
    if isinstance(spec, bool) or not (spec is None or isinstance(spec, (int, tuple, list, dict))):
        raise VmapError(f"vmap({_name(fn)}, in_dims={in_dims!r}, ...): in_dims must be int, None or a structure "
                        f"of them, got {spec!r} for {where}")
    if kind == "leaf":
        if isinstance(spec, (tuple, list, dict)):
            raise VmapError(f"vmap({_name(fn)}, in_dims={in_dims!r}, ...): {where} is a tensor, but its in_dims "
                            f"entry is a {type(spec).__name__}")
        return [spec]
    if kind not in ("dict", "model", "static"):  # a list, a tuple or a namedtuple (named by its class)
        kids = tr[1]
        if isinstance(spec, (tuple, list)):
            if len(spec) != len(kids):
                raise VmapError(f"vmap({_name(fn)}, in_dims={in_dims!r}, ...): in_dims for {where} has "
                                f"{len(spec)} entries for {len(kids)} items")
            return [d for k, s, i in zip(kids, spec, range(len(kids))) for d in _leaf_dims(k, s, f"{where}[{i}]", fn,
                                                                                           in_dims)]
        return [d for i, k in enumerate(kids) for d in _leaf_dims(k, spec, f"{where}[{i}]", fn, in_dims)]
    if kind == "dict":
        keys, kids = tr[1], tr[2]
        if isinstance(spec, dict):
            if set(spec) != set(keys):
                raise VmapError(f"vmap({_name(fn)}, in_dims={in_dims!r}, ...): in_dims for {where} has keys "
                                f"{sorted(map(str, spec))}, the argument {sorted(map(str, keys))}")
            return [d for k, t in zip(keys, kids) for d in _leaf_dims(t, spec[k], f"{where}[{k!r}]", fn, in_dims)]
        return [d for k, t in zip(keys, kids) for d in _leaf_dims(t, spec, f"{where}[{k!r}]", fn, in_dims)]
    if kind == "model":
        if spec is not None:
            raise VmapError(f"vmap({_name(fn)}, in_dims={in_dims!r}, ...): {where} is a model, which every example "
                            "shares; give it in_dims None (to map over stacked weights, pass them as a dict with "
                            "av.func.functional_call)")
        return [None] * len(tr[2])
    if spec is not None:  # a Python number, a string, None: nothing to map over
        raise VmapError(f"vmap({_name(fn)}, in_dims={in_dims!r}, ...)(<inputs>): Got in_dim={spec!r} for {where}, "
                        f"but it is of type {tr[1]}. We cannot vmap over non-Tensor arguments; give it in_dims None")
    return []


def _placeholder(x: Any, d: int) -> Tensor:
    """A tensor of one example's shape (the mapped dimension `d` removed) and `x`'s dtype, without memory."""
    dtype = x.dtype if isinstance(x, Tensor) else dt.dtype(np.asarray(x).dtype)
    shape = tuple(s for i, s in enumerate(x.shape) if i != d)
    return Tensor._wrap(np.broadcast_to(np.zeros((), dtype.np), shape), dtype)


class Vmapped:
    """What `av.vmap` returns: call it like `f`. Positional arguments are mapped per `in_dims`;
    keyword arguments are shared by every example (as torch's)."""

    __slots__ = ("fn", "in_dims", "out_dims", "randomness", "chunk_size", "_compiled", "__weakref__")

    def __init__(self, fn: Callable, in_dims: Any, out_dims: Any, randomness: str, chunk_size: int | None = None):
        self.fn, self.in_dims, self.out_dims, self.randomness = fn, in_dims, out_dims, randomness
        self.chunk_size = chunk_size
        self._compiled: dict[tuple, Compiled] = {}

    @property
    def __name__(self) -> str:
        return f"vmap_{_name(self.fn)}" if _name(self.fn).isidentifier() else "vmap"

    @property
    def __wrapped__(self) -> Callable:
        return self.fn

    def __repr__(self) -> str:
        return f"<vmap of {_name(self.fn)}, in_dims={self.in_dims!r}, out_dims={self.out_dims!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run = self._for(tuple(kwargs), len(args))
        if self.chunk_size is None:
            return run(*args, *kwargs.values())
        return self._chunked(run, args, tuple(kwargs.values()))

    def _chunked(self, run: Compiled, args: tuple, extra: tuple) -> Any:
        """`run` on `chunk_size` examples at a time, the results concatenated along their out_dims."""
        from avalon import ops, random
        from avalon.tree import flatten, unflatten
        per_arg = self.in_dims if isinstance(self.in_dims, tuple) else (self.in_dims,) * len(args)
        if len(per_arg) != len(args):
            return run(*args, *extra)  # the program's own error says what is wrong
        flat = []  # per argument: None (shared) or (leaves, tree, dims)
        size = None
        for i, (a, spec) in enumerate(zip(args, per_arg)):
            if spec is None:
                flat.append(None)
                continue
            leaves, tr = flatten(a, f"argument {i}")
            dims = _leaf_dims(tr, spec, f"argument {i}", self.fn, self.in_dims)
            dims = [None if d is None or not -np.ndim(x) <= d < np.ndim(x) else d % np.ndim(x)
                    for (_, x), d in zip(leaves, dims)]
            flat.append((leaves, tr, dims))
            size = next((np.shape(x)[d] for (_, x), d in zip(leaves, dims) if d is not None), size)
        if size is None or size <= self.chunk_size:
            return run(*args, *extra)
        state = random.get_rng_state() if self.randomness == "same" else None
        outs, tree = [], None
        for lo in range(0, size, self.chunk_size):
            hi = min(lo + self.chunk_size, size)
            part = []
            for a, f in zip(args, flat):
                if f is None:
                    part.append(a)
                    continue
                leaves, tr, dims = f
                cut = [x if d is None else x[(slice(None),) * d + (slice(lo, hi),)] for (_, x), d in zip(leaves, dims)]
                part.append(unflatten(tr, cut, a))
            if state is not None:
                random.set_rng_state(state)
            leaves, tree = flatten(run(*part, *extra), "the result")
            outs.append([x for _, x in leaves])
        axes = self._leaf_out_dims(tree, [np.ndim(x) for x in outs[0]])
        joined = [chunks[0] if d is None else ops.cat(list(chunks), d) for d, chunks in zip(axes, zip(*outs))]
        return unflatten(tree, joined)

    def _leaf_out_dims(self, tree: Any, ranks: list[int]) -> list[int | None]:
        from avalon.trace import _count_leaves
        if isinstance(self.out_dims, (tuple, list)):
            kids = tree[1] if tree[0] in ("tuple", "list") else (tree,)
            axes = [d for k, d in zip(kids, self.out_dims) for _ in range(_count_leaves(k))]
        else:
            axes = [self.out_dims] * len(ranks)
        return [None if d is None else d % r for d, r in zip(axes, ranks)]

    def inspect(self, *args: Any, **kwargs: Any) -> Any:
        """What the compiler did for these arguments (`Compiled.inspect`): the batched graph and passes."""
        return self._for(tuple(kwargs), len(args)).inspect(*args, *kwargs.values())

    def _for(self, keys: tuple[str, ...], n_args: int) -> Compiled:
        """One compiled function per set of keyword names (and positional count, which places them)."""
        key = (keys, n_args) if keys else ()
        c = self._compiled.get(key)
        if c is not None:
            return c
        fn, in_dims = self.fn, self.in_dims
        if keys:
            base = in_dims if isinstance(in_dims, tuple) else (in_dims,) * n_args
            in_dims = (*base, *(None,) * len(keys))

            def fn(*a: Any, _f: Callable = self.fn, _n: int = n_args, _keys: tuple = keys) -> Any:
                return _f(*a[:_n], **dict(zip(_keys, a[_n:])))
            fn.__name__ = _name(self.fn)
        program = VmapProgram(in_dims, self.out_dims, self.randomness, self.__name__)
        c = Compiled(fn, "numpy", PIPELINE, program=program, name=self.__name__)
        self._compiled[key] = c
        return c


def vmap(func: Callable, in_dims: Any = 0, out_dims: Any = 0, randomness: str = "error", *,
         chunk_size: int | None = None) -> Vmapped:
    """`f` mapped over a dimension of its arguments (torch.vmap / torch.func.vmap, jax.vmap): one
    batched graph, not a Python loop (see the module docstring for in_dims / out_dims).

    `randomness` is torch's: "error" (the default) refuses random numbers inside `f`, "same" draws
    one set shared by every example, "different" draws each example its own. `chunk_size` maps that
    many examples per batched call (less memory at once, the same results; the module docstring).
    """
    if not callable(func):
        raise TypeError(f"vmap: {func!r} is not callable")
    if randomness not in RANDOMNESS:
        raise ValueError(f"Only allowed values for randomness are 'error', 'different', or 'same'. Got {randomness}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"vmap: chunk_size should be None or greater than 0. (got {chunk_size})")
    if isinstance(in_dims, list):
        in_dims = tuple(in_dims)
    return Vmapped(func, in_dims, out_dims, randomness, chunk_size)
