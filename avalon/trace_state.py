"""Model attributes a traced call rebinds: written back after each run, as Python keeps them eagerly.

PyTorch code keeps per-sequence and per-batch state on its modules: pytorch-ntm's
`self.previous_state = self.ntm.create_new_state(batch_size)` (a tuple of lists of tensors made from
parameters) and `self.memory = self.mem_bias.clone().repeat(...)`, word_language_model's
`self.hidden = (h, c)`, Transformer-XL's `mems`, `self.last_attn = attn` kept for plots. A traced call
(`av.compile`, `av.grad`) runs that Python once; what it leaves in the model's attributes is, at the
end of the trace, a structure of traced tensors, which must not outlive the trace.

`avalon.trace._settle_state` turns each such attribute into an `AttrWrite`: the attribute's holder
and key, and a template of its value (tuples, namedtuples, lists and dicts rebuilt as they were; every
tensor that depends on the call a hole). Each hole is one extra output of the graph, whose update
target is an `AttrSlot`; after every run (the first and every cached one) the driver hands the hole
its result (`avalon.compiler.execute`), and when all holes of an attribute are filled the value is
rebuilt and stored, fresh objects every call, as torch's forward makes new tensors every call.
Inside an enclosing trace the holes receive that trace's values, which it settles in turn.

What the written tensors are (torch: a plain attribute, neither a parameter nor a buffer, not in
`state_dict`): Avalon's rule is that a float tensor attribute is a parameter unless it is a Buffer,
so they are stored as `Buffer`s (never trained, never in gradients), and on an `nn.Module` the
attribute is a non-persistent buffer (left out of `state_dict`; a tuple's or dict's entries too).
The next call sees them as state inputs of its graph; a new attribute or a new shape changes the
compiled signature, so that call traces again, and later calls with the same structure reuse it.
"""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from .tensor import Buffer, Tensor, TracerError

_PLAIN: dict[int, weakref.ref] = {}
"""Tensors an `AttrWrite` stored (by id): plain state, replaced by a fresh tensor every call."""


def is_plain_state(t: Any) -> bool:
    r = _PLAIN.get(id(t))
    return r is not None and r() is t


def _mark(t: Tensor) -> Tensor:
    key = id(t)
    _PLAIN[key] = weakref.ref(t, lambda _: _PLAIN.pop(key, None))
    return t


class Hole:
    """A tensor's place in an `AttrWrite`'s template."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __repr__(self) -> str:
        return f"<hole {self.index}>"


_MISSING = object()


class AttrWrite:
    """One model attribute (or list item, dict entry) a traced call rebinds: `holder[key]` (a model's
    `__dict__`, a list or a dict; `owner` the object it belongs to) gets `template` with its holes
    filled after every run."""

    __slots__ = ("holder", "key", "owner", "name", "template", "n", "pending")

    def __init__(self, holder: Any, key: Any, owner: Any, name: str, template: Any, n: int):
        self.holder, self.key, self.owner, self.name = holder, key, owner, name
        self.template, self.n = template, n
        self.pending: dict[int, Any] = {}

    def slots(self) -> list[AttrSlot]:
        return [AttrSlot(self, i) for i in range(self.n)]

    def put(self, i: int, value: Tensor) -> None:
        if not value.is_traced:  # a run's result (storage it may reuse next call): a Buffer of its own
            data = value._data
            data = data.copy() if isinstance(data, np.ndarray) else data.clone()
            value = _mark(Buffer._wrap(data, value.dtype, value.device))
        self.pending[i] = value
        if len(self.pending) == self.n:
            values, self.pending = self.pending, {}
            new = fill(self.template, values)
            store(self.holder, self.key, new)
            if not any(v.is_traced for v in values.values()):
                _register(self.owner, self.key, new)

    def __repr__(self) -> str:
        return f"<attribute write {self.name!r}, {self.n} tensor(s)>"


class AttrSlot:
    """An update target of a traced graph: hole `index` of `write` (`avalon.trace.assign` and the
    driver's write-back call `set` with the new value)."""

    __slots__ = ("write", "index")

    def __init__(self, write: AttrWrite, index: int):
        self.write, self.index = write, index

    def set(self, value: Tensor) -> None:
        self.write.put(self.index, value)

    def __repr__(self) -> str:
        return f"<{self.write.name}[{self.index}]>"


def template(value: Any, hole: Any, name: str) -> tuple[Any, list[Any]]:
    """`value` with `hole(x)`'s tensors made `Hole`s: (template, what each hole stands for). `hole(x)`
    gives what the hole is filled from (a traced tensor), or None to keep `x` as it is. Tuples
    (namedtuples too), lists, dicts and complex pairs are walked; a tensor anywhere else (an object
    inside a tuple) is refused with what to store instead."""
    holes: list[Any] = []

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, Tensor):
            src = hole(x)
            if src is None:
                return x
            holes.append(src)
            return Hole(len(holes) - 1)
        if isinstance(x, tuple):
            items = [walk(v, f"{path}[{i}]") for i, v in enumerate(x)]
            return type(x)(*items) if hasattr(x, "_fields") else tuple(items) if type(x) is tuple else type(x)(items)
        if isinstance(x, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, dict):
            out = {k: walk(v, f"{path}[{k!r}]") for k, v in x.items()}
            return out if type(x) is dict else type(x)(out)
        if getattr(type(x), "_complex_pair", False):
            return type(x)(walk(x.real, f"{path}.real"), walk(x.imag, f"{path}.imag"))
        if _holds_traced(x, hole):
            raise TracerError(
                f"the traced function stored a {type(x).__name__} holding tensors that depend on its inputs in the "
                f"model's attribute '{path}'; Avalon writes back tensors and tuples, lists and dicts of them "
                f"after the call. Store the tensors themselves (`self.{name.rsplit('.', 1)[-1]} = (a, b)` or a "
                f"dict), or make the {type(x).__name__} an attribute of the model (its tensors are then "
                "attributes too)")
        return x

    return walk(value, name), holes


def _holds_traced(x: Any, hole: Any) -> bool:
    try:
        items = list(vars(x).values())
    except TypeError:
        items = [getattr(x, s) for s in getattr(type(x), "__slots__", ()) if isinstance(s, str) and hasattr(x, s)]
    return any(isinstance(v, Tensor) and hole(v) is not None for v in items)


def fill(tmpl: Any, values: dict[int, Any]) -> Any:
    if isinstance(tmpl, Hole):
        return values[tmpl.index]
    if isinstance(tmpl, tuple):
        items = [fill(v, values) for v in tmpl]
        return type(tmpl)(*items) if hasattr(tmpl, "_fields") else tuple(items) if type(tmpl) is tuple \
            else type(tmpl)(items)
    if isinstance(tmpl, list):
        return [fill(v, values) for v in tmpl]
    if isinstance(tmpl, dict):
        out = {k: fill(v, values) for k, v in tmpl.items()}
        return out if type(tmpl) is dict else type(tmpl)(out)
    if getattr(type(tmpl), "_complex_pair", False):
        return type(tmpl)(fill(tmpl.real, values), fill(tmpl.imag, values))
    return tmpl


def store(holder: Any, key: Any, value: Any) -> None:
    """`holder[key] = value`; a list grows by the item a replayed trace appended."""
    if isinstance(holder, list):
        if key < len(holder):
            holder[key] = value
        else:
            holder.extend([None] * (key - len(holder)))
            holder.append(value)
        return
    holder[key] = value


def unset(holder: Any, key: Any, prior: Any) -> None:
    """Put back what `holder[key]` held before the trace (`_MISSING`: nothing), until the run writes it."""
    if prior is not _MISSING:
        holder[key] = prior
    elif isinstance(holder, list):
        holder[key] = None
    else:
        holder.pop(key, None)


def _register(owner: Any, key: Any, value: Any) -> None:
    """On an nn.Module: the attribute is a non-persistent buffer (torch's plain attribute: not in
    `state_dict`), and a single tensor stays a buffer when assigned again."""
    if not isinstance(key, str) or getattr(type(owner), "register_buffer", None) is None:
        return
    d = owner.__dict__
    d.setdefault("_non_persistent_buffers", set()).add(key)
    if isinstance(value, Tensor):
        d.setdefault("_buffer_names", set()).add(key)
