"""Walking nested structures: models (plain objects), lists, tuples, dicts and tensors.

A model is any object with attributes; its tensors are found by walking `vars(obj)` in order,
recursing into lists, tuples, dicts and other objects, with PyTorch's dotted names
(`layers.0.weight`). A tensor reachable twice (shared weights) is reported once, under its first name,
by the walks that feed traces and optimizers; `named_state` lists it under every name, as torch's
`state_dict` does.
"""
from __future__ import annotations

import operator
import types
from collections.abc import Iterator
from typing import Any

import numpy as np

from .complex import ComplexTensor
from .device import device
from .sparse import SparseTensor
from .tensor import Buffer, Tensor, _mark_literal, mark_model_array, tensor

_ATOMS = (int, float, complex, bool, str, bytes, type(None), np.generic, np.dtype, slice, type(Ellipsis))
_OPAQUE = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType, type,
           np.ndarray, property, staticmethod, classmethod)


def is_array_like(x: Any) -> bool:
    """A numpy array or a torch tensor (anything Avalon accepts where a Tensor goes)."""
    return isinstance(x, np.ndarray) or (not isinstance(x, Tensor) and hasattr(x, "detach") and hasattr(x, "data_ptr"))


def is_model(x: Any) -> bool:
    return hasattr(x, "__dict__") and not isinstance(x, (Tensor, *_OPAQUE, *_ATOMS)) and not is_array_like(x)


def _children(obj: Any) -> list[tuple[str, Any]] | None:
    """What a walk descends into, with the name each adds to the path: a list's or tuple's items by
    index, a dict's by key, an object's attributes (dunders skipped); None for anything else."""
    if isinstance(obj, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return [(str(k), v) for k, v in obj.items()]
    if hasattr(obj, "__dict__"):
        return own_first([(k, v) for k, v in vars(obj).items() if not k.startswith("__")])
    return None


def own_first(attrs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """A model's attributes in torch's order: its own parameters, then its own buffers, then what
    holds more (submodules, lists, dicts), each group in attribute (registration) order, as torch's
    `named_parameters` and `state_dict` list a module's own tensors before its children's."""
    # a complex value counts as its parts: torch lists a complex parameter among the module's own, so
    # after submodules it put torch's parameter order, which optimizer state pairs by, out of step
    def own(v: Any) -> Any:
        return v.real if isinstance(v, ComplexTensor) else v
    shadows = shadowing(attrs)
    if shadows:  # those containers go last: their items are named by the attributes, as torch names them
        attrs = [a for a in attrs if a[0] not in shadows] + [a for a in attrs if a[0] in shadows]
    params = [(k, v) for k, v in attrs if isinstance(own(v), Tensor) and _is_parameter(own(v))]
    buffers = [(k, v) for k, v in attrs if isinstance(own(v), Tensor) and not _is_parameter(own(v))]
    if not params and not buffers:
        return attrs
    return params + buffers + [(k, v) for k, v in attrs if not isinstance(own(v), Tensor)]


def shadowing(attrs: list[tuple[str, Any]]) -> set[str]:
    """The names of a model's plain lists, tuples and dicts every item of which (a model or a tensor) the
    model also holds under an attribute of its own: pyGAT's `self.attentions = [GraphAttentionLayer(...)]`
    followed by `self.add_module('attention_{}'.format(i), attention)`. torch registers only the
    attributes (`attention_0.W`), so these containers add no names: they are walked last, where their
    items are already seen, and `named_state` skips them."""
    if not any(type(v) in (list, tuple, dict) for _, v in attrs):
        return set()
    direct = {id(v) for _, v in attrs if isinstance(v, Tensor) or is_model(v)}
    out = set()
    for k, v in attrs:
        if type(v) in (list, tuple, dict):
            items = list(v.values()) if isinstance(v, dict) else v
            if items and all(id(x) in direct for x in items):
                out.add(k)
    return out


def _is_parameter(t: Tensor) -> bool:
    """Trainable: a floating-point tensor that is not a Buffer (the rest is buffers)."""
    return not isinstance(t, Buffer) and t.dtype.is_float


def named_tensors(obj: Any, prefix: str = "", seen: set[int] | None = None) -> Iterator[tuple[str, Tensor]]:
    """Every Tensor reachable from `obj` with its dotted name, parameters and buffers alike."""
    tensors: list[tuple[str, Tensor]] = []
    _walk_state(obj, prefix, set() if seen is None else seen, tensors, [], None)
    return iter(tensors)


def named_state(obj: Any) -> list[tuple[str, Tensor]]:
    """Every (name, Tensor) pair reachable from `obj`, a tensor reachable under several names (a
    tied weight) once per name, as torch's `state_dict` lists it. Only the containers on the
    current path are skipped (cycles), so shared submodules are listed under each name too.
    A tensor that is also reachable without crossing a plain list, tuple or dict is not listed again under a
    name that crosses one (DeepCTR-Torch's `self.regularization_weight = [(list(embeddings.parameters()), l1,
    l2)]`): torch registers no such container, so its state_dict has no `regularization_weight.0.0.0` alias.
    (load_state_dict still accepts those names, which earlier checkpoints hold: `_names_by_tensor`.)"""
    out: list[tuple[str, Tensor, bool]] = []

    def walk(x: Any, prefix: str, path: frozenset[int], plain: bool) -> None:
        if isinstance(x, Tensor):
            out.append((prefix, x, plain))
            return
        if isinstance(x, (*_ATOMS, *_OPAQUE)) or is_array_like(x) or id(x) in path:
            return
        items = _children(x) or ()
        if hasattr(x, "__dict__") and items:  # a container of the model's own attributes adds no names
            skip = shadowing(items)
            items = [(k, v) for k, v in items if k not in skip] if skip else items
        inner = plain or (isinstance(x, (list, tuple, dict)) and not hasattr(x, "__dict__") and bool(prefix))
        for k, v in items:
            walk(v, f"{prefix}.{k}" if prefix else k, path | {id(x)}, inner)

    walk(obj, "", frozenset(), False)
    registered = {id(t) for _, t, plain in out if not plain}
    return [(name, t) for name, t, plain in out if not plain or id(t) not in registered]


def named_parameters(obj: Any) -> Iterator[tuple[str, Tensor]]:
    """Trainable tensors: floating-point tensors that are not Buffers."""
    for name, t in named_tensors(obj):
        if _is_parameter(t):
            yield name, t


def named_buffers(obj: Any) -> Iterator[tuple[str, Tensor]]:
    """Non-trainable state: Buffers and integer tensors."""
    for name, t in named_tensors(obj):
        if not _is_parameter(t):
            yield name, t


def to_device(obj: Any, dev: Any) -> Any:
    """`av.to_device(obj, device)`: move every tensor inside a model (in place, so whatever holds
    those tensors sees them moved) or a nested structure (a new structure) to `dev`."""
    dev = device(dev)
    if isinstance(obj, Tensor):
        return obj.to(dev)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(x, dev) for x in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, dev) for k, v in obj.items()}
    if is_model(obj):
        for _, t in named_tensors(obj):
            moved = t.to(dev)
            t._data, t._device = moved._data, moved._device
            t._view = None  # its own storage now, as after a cast: writes must not reach the old base
        return obj
    if hasattr(obj, "shape"):
        return tensor(obj, device=dev)
    return obj


def model_leaves(obj: Any) -> list[tuple[str, Tensor]]:
    """A model's tensors in trace order: parameters first, then buffers."""
    return model_state(obj)[0]


_STATIC = (bool, int, float, str, type(None))


def model_state(obj: Any, seen: set[int] | None = None) -> tuple[list[tuple[str, Tensor]], tuple]:
    """One walk over a model: its tensors in trace order (parameters, then buffers) and the plain
    Python values it holds (a layer's `training` flag, a dropout rate), which shape a trace as much
    as tensor shapes do and so belong in a trace's cache key."""
    tensors: list[tuple[str, Tensor]] = []
    static: list[Any] = []
    _walk_state(obj, "", set() if seen is None else seen, tensors, static)
    return _trace_order(tensors), tuple(static)


def _trace_order(tensors: list[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
    """Parameters first, then buffers (a stable split, so filtering keeps the order)."""
    params = [(n, t) for n, t in tensors if _is_parameter(t)]
    buffers = [(n, t) for n, t in tensors if not _is_parameter(t)]
    return params + buffers


def _walk_state(obj: Any, prefix: str, seen: set[int], tensors: list, static: list,
                nodes: list | None = None) -> None:
    """`nodes` (when given) collects every container walked with its children (`_kids`), which is
    what `StateCache` compares to tell that nothing was reassigned since."""
    if isinstance(obj, _STATIC):
        static.append((prefix, obj))
        return
    if id(obj) in seen:
        return
    if isinstance(obj, Tensor):
        seen.add(id(obj))
        tensors.append((prefix, obj))
        return
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf" and obj.size <= 65536:
        # a small numpy array a model holds (pytorch-fm's `self.offsets = np.array((0, *np.cumsum(dims)[:-1]))`,
        # read by `x.new_tensor(self.offsets)`): part of the signature by value, as a Python number is, so
        # a trace may keep it as literal data (tensor.MODEL_ARRAYS) and a change traces again (a large one,
        # compared on every call, stays opaque: data captured, which the compile warns of)
        key = ArrayValue(obj)
        static.append((prefix, key))
        mark_model_array(obj)
        if nodes is not None:
            nodes.append((obj, (key,)))
        return
    if isinstance(obj, SparseTensor) and _constant_sparse(obj):
        # a sparse matrix a model holds (LightGCN's normalised adjacency `self.Graph`), not state: part of the
        # signature by value, as a small numpy array is, so a trace keeps its indices and values as literal
        # data (tensor.LITERALS) and stays cached; it was captured data, traced and compiled again on every call
        key = _sparse_value(obj)
        static.append((prefix, key))
        _mark_literal(obj._i)
        _mark_literal(obj._v)
        if nodes is not None:
            nodes.append((obj, (key,)))
        return
    if isinstance(obj, _ATOMS) or isinstance(obj, _OPAQUE) or is_array_like(obj):
        return
    seen.add(id(obj))
    items = _children(obj)
    if items is None:
        return
    if nodes is not None and not isinstance(obj, tuple):  # a tuple cannot change: its parent's check covers it
        nodes.append((obj, _kids(obj)))
    for k, v in items:
        _walk_state(v, f"{prefix}.{k}" if prefix else k, seen, tensors, static, nodes)


_NUMBERS = (bool, int, float)


def number_slots(obj: Any) -> tuple[dict[str, tuple[Any, Any, Any]], dict[str, Any]]:
    """The Python numbers (bool, int, float) a model holds where a write can reach them, by the dotted
    path `model_state`'s walk names them: path -> (holder, key, value), the holder an object (its
    attribute `key`), a list (its index) or a dict (its key); and every holder walked, by its path ("" the
    model). A compiled call replays what its trace wrote to them (torchdiffeq's `self.nfe += 1`; see
    compiler/core.py)."""
    out: dict[str, tuple[Any, Any, Any]] = {}
    holders: dict[str, Any] = {}
    _number_slots(obj, "", set(), out, holders)
    return out, holders


def _number_slots(obj: Any, prefix: str, seen: set[int], out: dict, holders: dict) -> None:
    if id(obj) in seen or isinstance(obj, (Tensor, *_ATOMS, *_OPAQUE)) or is_array_like(obj):
        return
    seen.add(id(obj))
    if not isinstance(obj, tuple):
        holders[prefix] = obj
    if isinstance(obj, dict):
        items: list[tuple[Any, str, Any]] = [(k, str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(i, str(i), v) for i, v in enumerate(obj)]
    elif hasattr(obj, "__dict__"):
        items = [(k, k, v) for k, v in vars(obj).items() if not k.startswith("__")]
    else:
        return
    for key, name, v in items:
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(v, _NUMBERS) and not isinstance(obj, tuple):
            out[path] = (obj, key, v)
        else:
            _number_slots(v, path, seen, out, holders)


def _kids(obj: Any) -> tuple:
    """Everything a walk of `obj` reads: a sequence's items, a dict's (or an object's attribute
    dict's) keys then values."""
    if isinstance(obj, (list, tuple)):
        return tuple(obj)
    d = obj if isinstance(obj, dict) else obj.__dict__
    return (*d, *d.values())


class ArrayValue:
    """A numpy array's dtype, shape and bytes when read: equal and hashed by those values."""

    __slots__ = ("key",)

    def __init__(self, arr: np.ndarray):
        self.key = (arr.dtype.str, arr.shape, arr.tobytes())

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ArrayValue) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"ArrayValue({self.key[0]}, {self.key[1]})"


def _constant_sparse(obj: SparseTensor) -> bool:
    """A model's eager SparseTensor small enough to compare by value on every call (as small numpy arrays)."""
    return not (obj._i.is_traced or obj._v.is_traced) and obj._i.numel() + obj._v.numel() <= 65536


def _sparse_value(obj: SparseTensor) -> tuple:
    return ("sparse", ArrayValue(obj._i.numpy()), ArrayValue(obj._v.numpy()), tuple(obj.shape), obj.is_coalesced())


def _unchanged(nodes: list[tuple[Any, tuple]]) -> bool:
    for obj, kids in nodes:
        if isinstance(obj, np.ndarray):  # compared by value (written in place: walked again)
            if ArrayValue(obj) != kids[0]:
                return False
            continue
        if isinstance(obj, SparseTensor):
            if not _constant_sparse(obj) or _sparse_value(obj) != kids[0]:
                return False
            continue
        now = _kids(obj)
        if len(now) != len(kids) or not all(map(operator.is_, now, kids)):
            return False
    return True


class StateCache:
    """`model_state` for the models a compiled function keeps being called with, without walking
    them on every call.

    A walk's result depends only on the objects it reads: each container's items, each object's
    attribute dict. The cache keeps, per model, every container walked and the exact objects it
    held then (strong references, so identities cannot be reused), and on the next call compares
    them by identity: reassigning any attribute (`model.training = False`, `layer.weight = new`),
    adding one, or mutating a walked list or dict shows up as a different object and the model
    is walked again. Tensors are compared by identity only; their shapes, dtypes and devices can
    change in place (`av.to_device`), so callers read those on every call. Holding references
    keeps up to `size` models alive until the cache (a compiled function's) is dropped.
    """

    def __init__(self, size: int = 4):
        self.size = size
        self._entries: dict[int, tuple[Any, list, list[tuple[str, Tensor]], tuple]] = {}
        self.walks = 0  # full walks made (a test hook: a hit makes none)

    def model_state(self, obj: Any, seen: set[int]) -> tuple[list[tuple[str, Tensor]], tuple]:
        """`model_state(obj, seen)`: the cached walk (which ignored `seen`) less the tensors in `seen`."""
        entry = self._entries.get(id(obj))
        if entry is None or entry[0] is not obj or not _unchanged(entry[1]):
            nodes: list = []
            tensors: list[tuple[str, Tensor]] = []
            static: list = []
            _walk_state(obj, "", set(), tensors, static, nodes)
            self.walks += 1
            entry = (obj, nodes, _trace_order(tensors), tuple(static))
            self._entries.pop(id(obj), None)
            self._entries[id(obj)] = entry
            while len(self._entries) > self.size:
                del self._entries[next(iter(self._entries))]
        tensors, static = entry[2], entry[3]
        if seen:
            tensors = [(n, t) for n, t in tensors if id(t) not in seen]
        return tensors, static


# -- flattening arguments -------------------------------------------------------------------

def flatten(obj: Any, name: str) -> tuple[list[tuple[str, Any]], Any]:
    """Leaves (name, tensor-or-array) of `obj` and a hashable description of its structure."""
    leaves: list[tuple[str, Any]] = []
    return leaves, _flatten(obj, name, leaves)


def _flatten(obj: Any, name: str, leaves: list, seen: set[int] | None = None,
             cache: StateCache | None = None) -> Any:
    """`seen` (ids of leaves already taken) lets several arguments share a model, or an optimizer
    hold the model it updates, without feeding the same tensor twice. `cache` remembers the walks
    of models between calls."""
    seen = set() if seen is None else seen
    if isinstance(obj, Tensor) or is_array_like(obj):
        leaves.append((name, obj))
        seen.add(id(obj))
        return ("leaf",)
    if isinstance(obj, SparseTensor):  # indices and values; the size and coalesced flag are static
        return ("sparse", tuple(_flatten(v, f"{name}.{k}", leaves, seen, cache)
                                for k, v in (("indices", obj._i), ("values", obj._v))), obj.shape, obj.is_coalesced())
    if isinstance(obj, ComplexTensor):  # its two real parts, rebuilt as a ComplexTensor
        return ("complex", tuple(_flatten(v, f"{name}.{k}", leaves, seen, cache)
                                 for k, v in (("real", obj.real), ("imag", obj.imag))))
    if isinstance(obj, (list, tuple)):
        kids = tuple(_flatten(v, f"{name}.{i}", leaves, seen, cache) for i, v in enumerate(obj))
        if isinstance(obj, tuple) and type(obj) is not tuple:  # a namedtuple (max's values/indices, a record)
            return ("tuple", kids, type(obj))  # rebuilt as its class
        return ("list" if isinstance(obj, list) else "tuple", kids)
    if isinstance(obj, dict):
        keys = tuple(obj.keys())
        kids = tuple(_flatten(obj[k], f"{name}.{k}", leaves, seen, cache) for k in keys)
        return ("dict", keys, kids)
    if is_model(obj):
        tensors, static = model_state(obj, set(seen)) if cache is None else cache.model_state(obj, seen)
        seen.update(id(t) for _, t in tensors)
        leaves.extend(tensors)
        return ("model", id(obj), tuple(n for n, _ in tensors), static)
    try:
        hash(obj)
        return ("static", type(obj).__name__, obj)
    except TypeError:
        return ("static", type(obj).__name__, id(obj))


def unflatten(tree: Any, leaves: list, originals: Any = None) -> Any:
    """Rebuild a structure from `tree`, taking leaves in order; models are passed through as is."""
    it = iter(leaves)
    return _unflatten(tree, it, originals)


def _unflatten(tree, it, orig):
    kind = tree[0]
    if kind == "leaf":
        return next(it)
    if kind in ("list", "tuple"):
        vals = [_unflatten(t, it, orig[i] if orig is not None else None) for i, t in enumerate(tree[1])]
        if len(tree) > 2:
            return tree[2](*vals)
        return vals if kind == "list" else tuple(vals)
    if kind == "sparse":
        return SparseTensor(_unflatten(tree[1][0], it, None), _unflatten(tree[1][1], it, None), tree[2], tree[3])
    if kind == "complex":
        return ComplexTensor(_unflatten(tree[1][0], it, None), _unflatten(tree[1][1], it, None))
    if kind == "dict":
        return {k: _unflatten(t, it, orig[k] if orig is not None else None) for k, t in zip(tree[1], tree[2])}
    if kind == "model":
        for _ in tree[2]:
            next(it)
        return orig
    if kind == "static":
        return orig if orig is not None else tree[2]
    raise ValueError(f"bad tree node {kind}")
