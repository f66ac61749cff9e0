"""torch.utils.hooks' `RemovableHandle`, and `HookDict`, the ordered hook table `avalon.nn.Module` keeps.

A model's state is found by walking its attributes (`avalon.tree`), so a hook table must not be walked
like a dict: a hook that is an object holding the activations it saved would have those tensors counted
as the model's parameters. `HookDict` keeps its hooks in a slot the walkers do not see, and shows them
only its `trace_key` (the registered hook ids, in call order): plain integers a compiled function's
signature includes, so adding or removing a hook traces again, as torch.compile guards on hooks.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

__all__ = ["HookDict", "RemovableHandle"]


class HookDict(MutableMapping):
    """An ordered {hook id: hook} mapping (torch keeps an OrderedDict) invisible to the model walkers
    except for `trace_key`, which is rebound on every change so signature caches notice it."""

    __slots__ = ("_hooks", "__dict__", "__weakref__")

    def __init__(self) -> None:
        self._hooks: OrderedDict[int, Any] = OrderedDict()
        self.trace_key: tuple[int, ...] = ()

    def _changed(self) -> None:
        self.trace_key = tuple(self._hooks)

    def __getitem__(self, key: int) -> Any:
        return self._hooks[key]

    def __setitem__(self, key: int, value: Any) -> None:
        self._hooks[key] = value
        self._changed()

    def __delitem__(self, key: int) -> None:
        del self._hooks[key]
        self._changed()

    def __iter__(self) -> Iterator[int]:
        return iter(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def __contains__(self, key: object) -> bool:
        return key in self._hooks

    def move_to_end(self, key: int, last: bool = True) -> None:
        self._hooks.move_to_end(key, last)
        self._changed()

    def __repr__(self) -> str:
        return f"HookDict({dict(self._hooks)!r})"


class RemovableHandle:
    """A handle removing one hook (torch.utils.hooks.RemovableHandle): `.remove()`, `.id`, and a
    context manager removing it on exit. Holds the hook tables weakly, as torch's."""

    id: int
    next_id: int = 0

    def __init__(self, hooks_dict: Any, *, extra_dict: Any = None) -> None:
        self.hooks_dict_ref: Callable[[], Any] = weakref.ref(hooks_dict)
        self.id = RemovableHandle.next_id
        RemovableHandle.next_id += 1
        self.extra_dict_ref: tuple = ()
        if isinstance(extra_dict, (dict, MutableMapping)):
            self.extra_dict_ref = (weakref.ref(extra_dict),)
        elif isinstance(extra_dict, list):
            self.extra_dict_ref = tuple(weakref.ref(d) for d in extra_dict)

    def remove(self) -> None:
        for ref in (self.hooks_dict_ref, *self.extra_dict_ref):
            d = ref()
            if d is not None and self.id in d:
                del d[self.id]

    def __getstate__(self) -> tuple:
        return (self.hooks_dict_ref(), self.id, tuple(ref() for ref in self.extra_dict_ref))

    def __setstate__(self, state: tuple) -> None:
        self.hooks_dict_ref = weakref.ref(state[0]) if state[0] is not None else (lambda: None)
        self.id = state[1]
        RemovableHandle.next_id = max(RemovableHandle.next_id, self.id + 1)
        self.extra_dict_ref = tuple(weakref.ref(d) for d in state[2] if d is not None) if len(state) > 2 else ()

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, type: Any, value: Any, tb: Any) -> None:  # noqa: A002 - torch's signature
        self.remove()
