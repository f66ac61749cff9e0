"""Walking nested structures: models (plain objects), lists, tuples, dicts and tensors.

A model is any object with attributes; its tensors are found by walking `vars(obj)` in order,
recursing into lists, tuples, dicts and other objects, with PyTorch's dotted names
(`layers.0.weight`). A tensor reachable twice (shared weights) is reported once, under its first name.
"""
from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import numpy as np

from .tensor import Buffer, Tensor

_ATOMS = (int, float, complex, bool, str, bytes, type(None), np.generic, np.dtype, slice, type(Ellipsis))
_OPAQUE = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType, type,
           np.ndarray, property, staticmethod, classmethod)


def is_array_like(x: Any) -> bool:
    """A numpy array or a torch tensor (anything Avalon accepts where a Tensor goes)."""
    return isinstance(x, np.ndarray) or (hasattr(x, "detach") and hasattr(x, "data_ptr"))


def is_model(x: Any) -> bool:
    return hasattr(x, "__dict__") and not isinstance(x, (Tensor, *_OPAQUE, *_ATOMS)) and not is_array_like(x)


def named_tensors(obj: Any, prefix: str = "", seen: set[int] | None = None) -> Iterator[tuple[str, Tensor]]:
    """Every Tensor reachable from `obj` with its dotted name, parameters and buffers alike."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    if isinstance(obj, Tensor):
        seen.add(id(obj))
        yield prefix, obj
        return
    if isinstance(obj, _ATOMS) or isinstance(obj, _OPAQUE) or is_array_like(obj):
        return
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(obj)]
    elif isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
    elif hasattr(obj, "__dict__"):
        items = [(k, v) for k, v in vars(obj).items() if not k.startswith("__")]
    else:
        return
    for k, v in items:
        yield from named_tensors(v, f"{prefix}.{k}" if prefix else k, seen)


def named_parameters(obj: Any) -> Iterator[tuple[str, Tensor]]:
    """Trainable tensors: floating-point tensors that are not Buffers."""
    for name, t in named_tensors(obj):
        if not isinstance(t, Buffer) and t.dtype.is_float:
            yield name, t


def named_buffers(obj: Any) -> Iterator[tuple[str, Tensor]]:
    """Non-trainable state: Buffers and integer tensors."""
    for name, t in named_tensors(obj):
        if isinstance(t, Buffer) or not t.dtype.is_float:
            yield name, t


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
    params = [(n, t) for n, t in tensors if not isinstance(t, Buffer) and t.dtype.is_float]
    buffers = [(n, t) for n, t in tensors if isinstance(t, Buffer) or not t.dtype.is_float]
    return params + buffers, tuple(static)


def _walk_state(obj: Any, prefix: str, seen: set[int], tensors: list, static: list) -> None:
    if isinstance(obj, _STATIC):
        static.append((prefix, obj))
        return
    if id(obj) in seen:
        return
    if isinstance(obj, Tensor):
        seen.add(id(obj))
        tensors.append((prefix, obj))
        return
    if isinstance(obj, _ATOMS) or isinstance(obj, _OPAQUE) or is_array_like(obj):
        return
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(obj)]
    elif isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
    elif hasattr(obj, "__dict__"):
        items = [(k, v) for k, v in vars(obj).items() if not k.startswith("__")]
    else:
        return
    for k, v in items:
        _walk_state(v, f"{prefix}.{k}" if prefix else k, seen, tensors, static)


# -- flattening arguments -------------------------------------------------------------------

def flatten(obj: Any, name: str) -> tuple[list[tuple[str, Any]], Any]:
    """Leaves (name, tensor-or-array) of `obj` and a hashable description of its structure."""
    leaves: list[tuple[str, Any]] = []
    return leaves, _flatten(obj, name, leaves)


def _flatten(obj: Any, name: str, leaves: list, seen: set[int] | None = None) -> Any:
    """`seen` (ids of leaves already taken) lets several arguments share a model, or an optimizer
    hold the model it updates, without feeding the same tensor twice."""
    seen = set() if seen is None else seen
    if isinstance(obj, Tensor) or is_array_like(obj):
        leaves.append((name, obj))
        seen.add(id(obj))
        return ("leaf",)
    if isinstance(obj, (list, tuple)):
        kids = tuple(_flatten(v, f"{name}.{i}", leaves, seen) for i, v in enumerate(obj))
        return (type(obj).__name__, kids)
    if isinstance(obj, dict):
        keys = tuple(obj.keys())
        kids = tuple(_flatten(obj[k], f"{name}.{k}", leaves, seen) for k in keys)
        return ("dict", keys, kids)
    if is_model(obj):
        tensors, static = model_state(obj, set(seen))
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
        return vals if kind == "list" else tuple(vals)
    if kind == "dict":
        return {k: _unflatten(t, it, orig[k] if orig is not None else None) for k, t in zip(tree[1], tree[2])}
    if kind == "model":
        for _ in tree[2]:
            next(it)
        return orig
    if kind == "static":
        return orig if orig is not None else tree[2]
    raise ValueError(f"bad tree node {kind}")
