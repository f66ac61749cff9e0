"""ModuleDict, ParameterList and ParameterDict: torch's containers, holding their items as
attributes named by key or index, so parameter names come out as torch's (`blocks.attn.weight`,
`params.0`) from the ordinary attribute walk."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from ..tensor import Tensor
from .module import Module, Parameter


class _Items(Module):
    """A container whose items are attributes, so parameter names come out as torch's from the
    ordinary attribute walk, and whose item keys are recorded, in order, under `__items__` (a
    dunder, which the walks skip). So a subclass's plain attributes (torchvision's
    Conv2dNormActivation sets `self.out_channels = ...` on a Sequential) are not items; as in torch,
    assigning a value of type `_auto` (a Module, for module containers) to an attribute registers it."""

    _auto: type | tuple[type, ...] = ()

    def _keys(self) -> tuple[str, ...]:
        return self.__dict__.get("__items__", ())

    def _register(self, key: str) -> None:
        """Make attribute `key` an item (a new tuple each time, so a cached walk sees the change)."""
        if key not in self._keys():
            self.__dict__["__items__"] = (*self._keys(), key)

    def _items(self) -> list[tuple[str, Any]]:
        d = self.__dict__
        return [(k, d[k]) for k in self._keys() if k in d]

    def _set(self, key: Any, value: Any) -> None:
        """Store `value` as item `key` (any value: a Sequential may hold plain callables)."""
        key = str(key)
        if not key or "." in key or key.startswith("_") or key == "training" or hasattr(type(self), key):
            raise KeyError(f"{type(self).__name__}: key {key!r} cannot be used (empty, dotted, private, or the "
                           "name of a method)")
        setattr(self, key, value)
        self._register(key)

    def _reset(self, values: list[Any]) -> None:
        """Replace every item by `values`, keyed 0, 1, ... (torch renumbers after a deletion)."""
        for k in self._keys():
            self.__dict__.pop(k, None)
        self.__dict__["__items__"] = ()
        for i, v in enumerate(values):
            self._set(str(i), v)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if isinstance(value, self._auto) and not name.startswith("_") and name != "training":
            self._register(name)

    def __delattr__(self, name: str) -> None:
        super().__delattr__(name)
        if name in self._keys():
            self.__dict__["__items__"] = tuple(k for k in self._keys() if k != name)

    def add_module(self, name: str, module: Any) -> None:
        self._set(name, module)

    register_module = add_module

    def __len__(self) -> int:
        return len(self._keys())

    def __repr__(self) -> str:
        lines = [f"  ({k}): " + repr(v).replace("\n", "\n  ") for k, v in self._items()]
        return f"{type(self).__name__}(" + ("\n" + "\n".join(lines) + "\n" if lines else "") + ")"


class _Keyed(_Items):
    """ParameterList/ParameterDict/ModuleDict: items stored with `_set`."""


class _Mapping(_Keyed):
    def __getitem__(self, key: str) -> Any:
        for k, v in self._items():
            if k == key:
                return v
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self._set(key, self._convert(value))

    def __delitem__(self, key: str) -> None:
        self[key]  # noqa: B018 - raises KeyError when absent
        delattr(self, key)

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self._items())

    def __iter__(self) -> Iterator[str]:
        return iter([k for k, _ in self._items()])

    def keys(self) -> list[str]:
        return [k for k, _ in self._items()]

    def values(self) -> list[Any]:
        return [v for _, v in self._items()]

    def items(self) -> list[tuple[str, Any]]:
        return self._items()

    def update(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
        for k, v in (items.items() if isinstance(items, Mapping) else items):
            self[k] = v

    def pop(self, key: str) -> Any:
        v = self[key]
        del self[key]
        return v

    def clear(self) -> None:
        self._reset([])

    def _convert(self, value: Any) -> Any:
        return value


def _module_item(container: str, key: Any, value: Any) -> Any:
    """torch's TypeError for a container item that is plainly not a layer (a string such as "relu", a
    number, a tensor): refused where it is added rather than when the model first runs. Plain-class
    modules (Avalon needs no base class) and None pass, as torch's add_module lets None pass."""
    if isinstance(value, (str, bytes, int, float, complex, np.ndarray, Tensor)):
        raise TypeError(f"{container}: item {key!r} is a {type(value).__name__} ({value!r:.60}), which is not a "
                        "Module subclass; pass a layer such as nn.ReLU()")
    return value


class ModuleDict(_Mapping):
    """An ordered dict of modules whose parameters are named `<key>.<param>`."""

    _auto = Module

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, _module_item("ModuleDict", key, value))

    def __init__(self, modules: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.update(modules)


class ParameterDict(_Mapping):
    """An ordered dict of parameters named by key."""

    def __init__(self, parameters: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None) -> None:
        super().__init__()
        if parameters is not None:
            self.update(parameters)

    def _convert(self, value: Any) -> Any:
        return value if value is None or isinstance(value, Tensor) else Parameter(value)


class ParameterList(_Keyed):
    """A list of parameters named `0`, `1`, ..."""

    def __init__(self, values: Iterable[Any] | None = None) -> None:
        super().__init__()
        for v in values or ():
            self.append(v)

    def append(self, value: Any) -> ParameterList:
        self._set(str(len(self)), value if isinstance(value, Tensor) else Parameter(value))
        return self

    def extend(self, values: Iterable[Any]) -> ParameterList:
        for v in values:
            self.append(v)
        return self

    def __getitem__(self, idx: int) -> Any:
        items = self._items()
        if isinstance(idx, slice):
            return ParameterList([v for _, v in items[idx]])
        if not -len(items) <= idx < len(items):
            raise IndexError(f"ParameterList: index {idx} is out of range")
        return items[idx][1]

    def __setitem__(self, idx: int, value: Any) -> None:
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"ParameterList: index {idx} is out of range")
        self._set(str(idx % n), value if isinstance(value, Tensor) else Parameter(value))

    def __iter__(self) -> Iterator[Any]:
        return iter([v for _, v in self._items()])


__all__ = ["ModuleDict", "ParameterDict", "ParameterList"]
