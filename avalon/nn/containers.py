"""ModuleDict, ParameterList and ParameterDict: torch's containers, holding their items as
attributes named by key or index, so parameter names come out as torch's (`blocks.attn.weight`,
`params.0`) from the ordinary attribute walk."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..tensor import Tensor
from .module import Module, Parameter


class _Keyed(Module):
    """Items stored as attributes; everything not private and not `training` is an item."""

    def _items(self) -> list[tuple[str, Any]]:
        return [(k, v) for k, v in vars(self).items() if k != "training" and not k.startswith("_")]

    def _set(self, key: Any, value: Any) -> None:
        key = str(key)
        if not key or "." in key or key.startswith("_") or key == "training" or hasattr(type(self), key):
            raise KeyError(f"{type(self).__name__}: key {key!r} cannot be used (empty, dotted, private, or the "
                           "name of a method)")
        setattr(self, key, value)

    def __len__(self) -> int:
        return len(self._items())

    def __repr__(self) -> str:
        lines = [f"  ({k}): " + repr(v).replace("\n", "\n  ") for k, v in self._items()]
        return f"{type(self).__name__}(" + ("\n" + "\n".join(lines) + "\n" if lines else "") + ")"


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
        for k in self.keys():
            delattr(self, k)

    def _convert(self, value: Any) -> Any:
        return value


class ModuleDict(_Mapping):
    """An ordered dict of modules whose parameters are named `<key>.<param>`."""

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
        setattr(self, str(idx % n), value if isinstance(value, Tensor) else Parameter(value))

    def __iter__(self) -> Iterator[Any]:
        return iter([v for _, v in self._items()])


__all__ = ["ModuleDict", "ParameterDict", "ParameterList"]
