"""Parameters, buffers and state dicts of plain-object models, and the optional `Module` base class.

A model needs no base class: its tensors are found by walking its attributes (`avalon.tree`), named
like PyTorch (`layers.0.weight`). The free functions here work on any model; `Module` adds them as
methods, plus `train()/eval()`, torch's forward hooks and a torch-like `repr`.
"""
from __future__ import annotations

import inspect
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from .. import tree
from ..complex import ComplexTensor, complex_dtype, from_data, is_complex_like
from ..ir import dtypes as dt
from ..tensor import Buffer, Tensor, as_array
from ..trace import _STACK as _TRACE_STACK
from ..trace import assign, current_trace, note_number_write
from ..utils.hooks import HookDict, RemovableHandle
from ..views import layout_of

__all__ = [
    "IncompatibleKeys", "Module", "Parameter", "StateDictError", "buffers", "eval", "load_state_dict", "named_buffers",
    "named_modules", "named_parameters", "parameters", "state_dict", "train",
]


class StateDictError(RuntimeError, KeyError):
    """A state dict that does not fit the model: missing or unexpected keys, or a wrong shape.
    A RuntimeError like torch's, and a KeyError because it is about keys."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class IncompatibleKeys(NamedTuple):
    """What `load_state_dict(strict=False)` skipped (torch returns the same pair)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class _ParameterType(type):
    """`nn.Parameter(data)` makes a Tensor (`_parameter`); `isinstance(x, nn.Parameter)` asks whether `x` is
    what Avalon treats as a parameter: a floating-point (or complex) Tensor that is not a buffer, and not a
    traced intermediate. torch code asks it of model attributes and parameters (DeepCTR-Torch's
    `isinstance(weight_list, torch.nn.parameter.Parameter)`, init loops), where it raised a TypeError since
    `Parameter` was a function. Unlike torch it also holds for a plain float tensor outside a model: Avalon
    has no separate parameter type (any floating-point Tensor attribute is a parameter)."""

    def __call__(cls, data: Any, requires_grad: bool = True) -> Tensor:
        return _parameter(data, requires_grad)

    def __instancecheck__(cls, obj: Any) -> bool:
        if isinstance(obj, ComplexTensor):
            return isinstance(obj.real, cls) and isinstance(obj.imag, cls)
        if isinstance(obj, Tensor) and id(obj) in _DECLARED:
            return True
        return (isinstance(obj, Tensor) and not isinstance(obj, Buffer) and obj.dtype.is_float
                and not obj.is_traced)


class Parameter(metaclass=_ParameterType):  # torch's name
    """torch.nn.Parameter: `nn.Parameter(data, requires_grad=True)` returns `data` as a parameter Tensor
    (`_parameter`); `isinstance(x, nn.Parameter)` works as `_ParameterType` says."""


def _parameter(data: Any, requires_grad: bool = True) -> Tensor:
    """torch.nn.Parameter's spelling, for ported code: any floating-point Tensor attribute already is
    a parameter, so this just makes `data` a Tensor (a copy unless it is one already), frozen with
    `requires_grad=False`. Complex data is a ComplexTensor of two real parameters."""
    if is_complex_like(data) and not isinstance(data, (list, tuple)):
        z = data if isinstance(data, ComplexTensor) else from_data(data)
        return ComplexTensor(_parameter(z.real, requires_grad), _parameter(z.imag, requires_grad))
    t = data if isinstance(data, Tensor) and not isinstance(data, Buffer) else Tensor(np.array(as_array(data)))
    if requires_grad and not t.dtype.is_float:  # (an integer "parameter" that av.grad would silently skip)
        raise RuntimeError(f"Only Tensors of floating point and complex dtype can require gradients, got {t.dtype!r}: "
                           "nn.Parameter(data, requires_grad=False) for an integer parameter, or a buffer")
    key = id(t)
    _DECLARED[key] = weakref.ref(t, lambda _: _DECLARED.pop(key, None))
    return t if requires_grad else t.requires_grad_(False)


def NnBuffer(data: Any = None, *, persistent: bool = True) -> Tensor:  # noqa: N802 - torch.nn.Buffer
    """torch.nn.Buffer (`self.mask = nn.Buffer(torch.ones(n))`): `data` as a buffer that becomes one of
    the module's buffers when assigned to its attribute, in `state_dict` unless `persistent=False`."""
    if data is None:
        data = np.zeros((0,), np.float32)
    t = _as_buffer(data if isinstance(data, Tensor) else Tensor(np.array(as_array(data))))
    key = id(t)
    _BUFFERS_MADE[key] = (weakref.ref(t, lambda _: _BUFFERS_MADE.pop(key, None)), bool(persistent))
    return t


_BUFFERS_MADE: dict[int, tuple[weakref.ref, bool]] = {}
"""Tensors made by `nn.Buffer(...)`, by id, with their persistence: registered when assigned to a module."""

_DECLARED: dict[int, weakref.ref] = {}
"""Tensors made by `Parameter(...)`, by id: assigned inside forward, they stay parameters (torch's
lazily created parameters), where a plain tensor becomes a non-persistent buffer (`Module.__setattr__`)."""

_IN_FORWARD: dict[int, int] = {}
"""ids of the modules whose forward is running (with its depth): what `Module.__setattr__` asks."""


def named_parameters(model: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """Trainable tensors with PyTorch's dotted names (buffers and integer tensors excluded)."""
    for name, t in tree.named_parameters(model):
        yield (f"{prefix}.{name}" if prefix and name else prefix or name), t


def parameters(model: Any) -> Iterator[Tensor]:
    for _, t in tree.named_parameters(model):
        yield t


def named_buffers(model: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """Non-trainable state: `Buffer`s (running statistics) and integer tensors."""
    for name, t in tree.named_buffers(model):
        yield (f"{prefix}.{name}" if prefix and name else prefix or name), t


def buffers(model: Any) -> Iterator[Tensor]:
    for _, t in tree.named_buffers(model):
        yield t


def state_dict(model: Any) -> dict[str, Tensor]:
    """Parameters AND persistent buffers under PyTorch's key names, in torch's order: a model's own
    parameters, then its own buffers, then each child's entries, each in attribute (registration)
    order; a tied tensor appears under each of its names, as in torch. The values are the model's
    own tensors, not copies, as in torch."""
    skip = {f"{name}.{b}{part}" if name else f"{b}{part}" for name, m in named_modules(model, remove_duplicate=False)
            for b in getattr(m, "_non_persistent_buffers", ()) for part in ("", ".real", ".imag")}
    under = tuple(f"{s}." for s in skip)  # a tuple or dict of state a traced call left (avalon/trace_state.py)
    return {k: t for k, t in tree.named_state(model) if k not in skip and not k.startswith(under)}


def _complex_as_parts(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    """torch's complex entry `name` as the two entries a ComplexTensor's parts have, `name.real` and
    `name.imag` (avalon/complex.py)."""
    if not any(is_complex_like(v) and not isinstance(v, (list, tuple)) for v in mapping.values()):
        return mapping
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        if is_complex_like(v) and not isinstance(v, (list, tuple)):
            z = v if isinstance(v, ComplexTensor) else from_data(v)
            out[f"{k}.real"], out[f"{k}.imag"] = z.real, z.imag
        else:
            out[k] = v
    return out


def _describe(value: Any) -> str:
    return f"{type(value).__module__.split('.')[0]}.{type(value).__name__}"


def load_state_dict(model: Any, mapping: Mapping[str, Any], strict: bool = True, *,
                    assign: bool = False) -> IncompatibleKeys:
    """Copy `mapping`'s values (Avalon tensors, numpy arrays or torch tensors) into the model's tensors
    IN PLACE, converting to each tensor's dtype, so optimizers holding those tensors keep working.
    `assign=True` (torch's) keeps each value's own dtype instead; the tensors are still the model's
    own objects, updated in place (Avalon's tensors are values: there is no storage to share).
    A norm layer's `num_batches_tracked` missing from a state dict without torch's version metadata
    (or with version < 2: checkpoints from before torch 0.4.1) keeps its value, as torch's
    `_NormBase._load_from_state_dict` fills it in.

    Missing or unexpected keys are errors when `strict` (the default); a shape mismatch is always an
    error. Nothing is written unless everything fits, so a failed load never leaves a half-loaded model.
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(f"load_state_dict expects a mapping from names to tensors, got {type(mapping).__name__}")
    mapping = _complex_as_parts(mapping)
    own = state_dict(model)
    names = _names_by_tensor(model)
    # a shared (tied) tensor may come under any of its names, as torch lists each of them
    source = {k: next((n for n in names[id(t)] if n in mapping), k) for k, t in own.items()}
    known = {n for ns in names.values() for n in ns}
    missing = [k for k in own if source[k] not in mapping and not _old_norm_counter(model, mapping, k)]
    unexpected = [k for k in mapping if k not in known]
    problems = []
    if strict and missing:
        problems.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ".")
    if strict and unexpected:
        problems.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ".")
    arrays: dict[str, Any] = {}
    tr = current_trace()
    for k, target in own.items():
        if source[k] not in mapping:
            continue
        value = mapping[source[k]]
        if tr is not None and isinstance(value, Tensor) and (value.is_traced or id(value) in tr.leaves):
            # inside a compiled step: a value of the trace (DQN's soft update of a target network,
            # `target.load_state_dict({k: tau * p + (1 - tau) * t ...})`) becomes a recorded update
            if tuple(value.shape) != tuple(target.shape):
                problems.append(f'size mismatch for "{k}": copying a param with shape {tuple(value.shape)} from '
                                f"checkpoint, the shape in current model is {tuple(target.shape)}.")
            else:
                arrays[k] = value
            continue
        try:
            arr = as_array(value)
        except Exception as e:  # noqa: BLE001 - report which key could not be read
            problems.append(f'size mismatch for "{k}": cannot read a {_describe(value)} as an array ({e}).')
            continue
        if tuple(arr.shape) != tuple(target.shape):
            problems.append(f'size mismatch for "{k}": copying a param with shape {tuple(arr.shape)} from '
                            f"checkpoint, the shape in current model is {tuple(target.shape)}.")
            continue
        if arr.dtype.kind not in "biuf":
            problems.append(f'dtype mismatch for "{k}": cannot copy {arr.dtype} values into a {target.dtype} tensor.')
            continue
        arrays[k] = arr
    if problems:
        raise StateDictError(f"Error(s) in loading state_dict for {type(model).__name__}:\n\t" + "\n\t".join(problems))
    if tr is not None and not all(isinstance(v, Tensor) for v in arrays.values()):
        raise RuntimeError("load_state_dict inside a traced function takes the function's own tensors (its "
                           "arguments' parameters, values it computed), not fixed arrays that would be baked in; "
                           "load those outside it")
    for k, arr in arrays.items():
        target = own[k]
        if tr is not None:  # (a leaf as its traced value: the write reads it on every call)
            arr = arr if arr.is_traced else Tensor._traced(tr.value_of(arr), tr)
            _assign_state(target, arr.to(target.dtype))
        elif assign:  # the value's own dtype, not the model's
            new = Tensor(np.array(arr), dtype=dt.dtype(_value_dtype(mapping[source[k]], arr)))
            target._data, target._dtype, target._view = new._data, new._dtype, None
        else:
            _assign_state(target, Tensor(np.array(arr), dtype=target.dtype))
    return IncompatibleKeys(missing, unexpected)


_assign_state = assign  # (load_state_dict's `assign` argument, torch's name, hides the function there)


def _value_dtype(value: Any, arr: np.ndarray) -> Any:
    """The dtype a checkpoint value holds: a torch tensor's own (bfloat16 included), else its array's."""
    if hasattr(value, "dtype") and hasattr(value, "detach"):
        return value.dtype
    return arr.dtype


def _old_norm_counter(model: Any, mapping: Mapping[str, Any], key: str) -> bool:
    """Whether `key` is a norm layer's num_batches_tracked that torch's version handling fills in:
    the state dict has no version metadata for the layer, or one below 2."""
    prefix, _, name = key.rpartition(".")
    if name != "num_batches_tracked":
        return False
    layer = dict(named_modules(model)).get(prefix)
    if layer is None or getattr(layer, "running_mean", None) is None:
        return False
    version = (getattr(mapping, "_metadata", None) or {}).get(prefix, {}).get("version")
    return version is None or version < 2


def _names_by_tensor(model: Any) -> dict[int, list[str]]:
    """Every name each tensor is reachable under (tied weights have several), first name first."""
    out: dict[int, list[str]] = {}

    def walk(obj: Any, prefix: str, path: set[int]) -> None:
        if isinstance(obj, Tensor):
            out.setdefault(id(obj), []).append(prefix)
            return
        if id(obj) in path:
            return
        for k, v in _children(obj):
            walk(v, f"{prefix}.{k}" if prefix else k, path | {id(obj)})

    walk(model, "", set())
    return out


# -- training mode --------------------------------------------------------------------------------

def _children(obj: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return [(str(k), v) for k, v in obj.items()]
    if tree.is_model(obj):
        return tree.own_first([(k, v) for k, v in vars(obj).items() if not k.startswith("__")])
    return []


def _walk(obj: Any, prefix: str = "", seen: set[int] | None = None) -> Iterator[tuple[str, Any]]:
    """Every object reachable through attributes, lists, tuples and dicts, once each."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, Tensor):
        return
    seen.add(id(obj))
    yield prefix, obj
    for k, v in _children(obj):
        if isinstance(v, (list, tuple, dict)) or tree.is_model(v):
            yield from _walk(v, f"{prefix}.{k}" if prefix else k, seen)


def train(model: Any, mode: bool = True) -> Any:
    """Set `training = mode` on the model and every object inside it that has a `training`
    attribute (batch norm, dropout, RNNs, user classes), like torch's `Module.train`: each `Module` inside
    is set by its own `train(mode)`, so an override runs as in torch (loralib merging LoRA weights on
    `eval()`, a backbone keeping its batch norms frozen)."""
    if isinstance(model, Module):
        return model.train(mode)
    _check_mode(mode)
    if tree.is_model(model) and hasattr(model, "training") and not callable(model.training):
        model.training = bool(mode)
    _train_children(model, mode)
    return model


def _check_mode(mode: Any) -> None:
    """torch's check: `train("no")` (or `train(0.5)`) would otherwise set training mode, a truthy value."""
    if not isinstance(mode, (bool, np.bool_)):
        raise ValueError(f"training mode is expected to be boolean, got {mode!r}")


_TRAIN_SEEN: list[set[int]] = []  # the objects one outermost train() call has set, each once


def _train_children(obj: Any, mode: bool) -> None:
    outer = not _TRAIN_SEEN
    if outer:
        _TRAIN_SEEN.append(set())
    seen = _TRAIN_SEEN[0]
    seen.add(id(obj))
    try:
        for _, v in _children(obj):
            _train_visit(v, mode, seen)
    finally:
        if outer:
            _TRAIN_SEEN.pop()


def _train_visit(v: Any, mode: bool, seen: set[int]) -> None:
    if isinstance(v, Tensor) or id(v) in seen:
        return
    seen.add(id(v))
    if isinstance(v, Module):
        v.train(mode)
    elif isinstance(v, (list, tuple, dict)):
        for _, x in _children(v):
            _train_visit(x, mode, seen)
    elif tree.is_model(v):
        if hasattr(v, "training") and not callable(v.training):
            v.training = bool(mode)
        for _, x in _children(v):
            _train_visit(x, mode, seen)


def eval(model: Any) -> Any:  # noqa: A001 - torch's name
    return train(model, False)


def named_modules(model: Any, prefix: str = "", remove_duplicate: bool = True,
                  memo: set | None = None) -> Iterator[tuple[str, Module]]:
    """`Module`s inside `model` (itself included when it is one), with dotted names; with
    `remove_duplicate=False` a module shared under several names is listed under each, as torch's. The
    modules in torch's `memo` are skipped with what is inside them, and those listed are added to it."""
    skip = {id(m) for m in memo} if memo else set()
    for name, obj in _walk(model, prefix, skip) if remove_duplicate else _walk_all(model, prefix, frozenset(skip)):
        if isinstance(obj, Module):
            if memo is not None and remove_duplicate:
                memo.add(obj)
            yield name, obj


def _walk_all(obj: Any, prefix: str, path: frozenset[int]) -> Iterator[tuple[str, Any]]:
    """_walk without removing duplicates: only the containers on the current path are skipped (cycles)."""
    if id(obj) in path or isinstance(obj, Tensor):
        return
    yield prefix, obj
    for k, v in _children(obj):
        if isinstance(v, (list, tuple, dict)) or tree.is_model(v):
            yield from _walk_all(v, f"{prefix}.{k}" if prefix else k, path | {id(obj)})


def _named_all(model: Any, prefix: str, parameters: bool) -> Iterator[tuple[str, Tensor]]:
    """torch's `named_parameters` / `named_buffers(remove_duplicate=False)` (accelerate's find_tied_parameters
    reads them): a tensor reachable under several names (a tied weight) under each."""
    for name, t in tree.named_state(model):
        if tree._is_parameter(t) == parameters:
            yield (f"{prefix}.{name}" if prefix and name else prefix or name), t


def _own_entries(module: Any, named: Iterator[tuple[str, Tensor]], prefix: str) -> Iterator[tuple[str, Tensor]]:
    """The entries of `named` (dotted names under `prefix`) whose path crosses no submodule."""
    # every name of a submodule (a shared one too), so that none of its entries counts as the module's own
    subs = {name for name, m in named_modules(module, prefix, remove_duplicate=False) if m is not module}
    for name, t in named:
        parts = name.split(".")
        if not any(".".join(parts[:i]) in subs for i in range(1, len(parts))):
            yield name, t


# -- the optional base class ------------------------------------------------------------------------

class _ForwardSignature:
    """`inspect.signature(module)` is forward's, so a traced module's input is named like forward's
    argument (`%input`, not `%arg0`). None on the class, so `inspect.signature(Linear)` still works."""

    def __get__(self, obj: Any, cls: type | None = None) -> inspect.Signature | None:
        if obj is None:
            return None
        fn = obj.forward if type(obj).__call__ is Module.__call__ else obj.__call__
        try:
            return inspect.signature(fn)
        except (TypeError, ValueError):
            return None


class Module:
    """Optional base class for models and layers, adding torch's methods over the free functions.

    Unlike torch there is no registration: any Tensor attribute (or one inside a list, tuple, dict or
    another object) is part of the model. Subclasses implement `forward`; calling the module calls it.
    """

    training: bool = True
    __signature__ = _ForwardSignature()

    def __init__(self) -> None:
        self.training = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    # forward hooks: tables created by the first registration (a module without hooks has none, so
    # its attributes and the walks over them are unchanged); these empty defaults are what torch-style
    # code reading `module._forward_hooks` sees until then
    _forward_pre_hooks: Mapping[int, Any] = MappingProxyType({})
    _forward_pre_hooks_with_kwargs: Mapping[int, Any] = MappingProxyType({})
    _forward_hooks: Mapping[int, Any] = MappingProxyType({})
    _forward_hooks_with_kwargs: Mapping[int, Any] = MappingProxyType({})
    _forward_hooks_always_called: Mapping[int, Any] = MappingProxyType({})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = id(self)
        _IN_FORWARD[key] = _IN_FORWARD.get(key, 0) + 1
        try:
            d = self.__dict__
            if d.get("_forward_pre_hooks") or d.get("_forward_hooks"):
                return _call_with_hooks(self, args, kwargs)
            return self.forward(*args, **kwargs)
        finally:
            n = _IN_FORWARD.pop(key) - 1
            if n:
                _IN_FORWARD[key] = n

    def _hook_table(self, name: str) -> HookDict:
        table = self.__dict__.get(name)
        if table is None:
            table = self.__dict__[name] = HookDict()
        return table

    def register_forward_pre_hook(self, hook: Callable[..., Any], *, prepend: bool = False,
                                  with_kwargs: bool = False) -> RemovableHandle:
        """torch's: `hook(module, args)` runs before forward and may return new args (a non-tuple is
        wrapped in one); with `with_kwargs`, `hook(module, args, kwargs)` may return `(args, kwargs)`.
        Hooks run in registration order (`prepend`: first). They run in Python, so inside
        `av.compile`/`av.grad` they run while tracing (once per signature), on traced tensors."""
        hooks = self._hook_table("_forward_pre_hooks")
        flags = self._hook_table("_forward_pre_hooks_with_kwargs")
        handle = RemovableHandle(hooks, extra_dict=flags)
        if with_kwargs:
            flags[handle.id] = True
        hooks[handle.id] = hook
        if prepend:
            hooks.move_to_end(handle.id, last=False)
        return handle

    def register_forward_hook(self, hook: Callable[..., Any], *, prepend: bool = False, with_kwargs: bool = False,
                              always_call: bool = False) -> RemovableHandle:
        """torch's: `hook(module, args, output)` (with `with_kwargs`: `hook(module, args, kwargs,
        output)`) runs after forward and may return a replacement output; `always_call` runs it
        even when forward raised. Like pre-hooks, they run while tracing, once per signature: a hook
        that saves activations into a dict is read inside the same traced function (feature
        extraction), and adding or removing a hook makes a compiled function trace again."""
        hooks = self._hook_table("_forward_hooks")
        kw_flags = self._hook_table("_forward_hooks_with_kwargs")
        always = self._hook_table("_forward_hooks_always_called")
        handle = RemovableHandle(hooks, extra_dict=[kw_flags, always])
        if with_kwargs:
            kw_flags[handle.id] = True
        if always_call:
            always[handle.id] = True
        hooks[handle.id] = hook
        if prepend:
            hooks.move_to_end(handle.id, last=False)
        return handle

    def register_full_backward_hook(self, hook: Any, prepend: bool = False) -> RemovableHandle:
        _no_backward_hooks("register_full_backward_hook")

    def register_backward_hook(self, hook: Any) -> RemovableHandle:
        _no_backward_hooks("register_backward_hook")

    def register_full_backward_pre_hook(self, hook: Any, prepend: bool = False) -> RemovableHandle:
        _no_backward_hooks("register_full_backward_pre_hook")

    # parameters and state
    # `recurse=False` (YOLOv5's smart_optimizer groups each module's own `bias`/`weight`): the module's own
    # tensors, none reached through a submodule
    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, Tensor]]:
        named = named_parameters(self, prefix) if remove_duplicate else _named_all(self, prefix, True)
        return named if recurse else _own_entries(self, named, prefix)

    def parameters(self, recurse: bool = True) -> Iterator[Tensor]:
        if recurse:  # nn.parameters' own generator: an optimizer given it knows the tensors' names
            return parameters(self)
        return (t for _, t in self.named_parameters(recurse=False))

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator[tuple[str, Tensor]]:
        named = named_buffers(self, prefix) if remove_duplicate else _named_all(self, prefix, False)
        return named if recurse else _own_entries(self, named, prefix)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        return buffers(self) if recurse else (t for _, t in self.named_buffers(recurse=False))

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "",
                   keep_vars: bool = False) -> dict[str, Tensor]:
        """torch's signature: keys under `prefix`, written into `destination` (returned) when given.
        `keep_vars` changes nothing: Avalon's tensors carry no autograd history to detach."""
        if args:  # torch's deprecated positional form: state_dict(destination, prefix, keep_vars)
            if len(args) > 3:
                raise TypeError(f"state_dict() takes at most 3 positional arguments ({len(args)} given)")
            warnings.warn("Positional args are being deprecated, use kwargs instead. Refer to "
                          "https://pytorch.org/docs/main/generated/torch.nn.Module.html#torch.nn.Module.state_dict "
                          "for details.", FutureWarning, stacklevel=2)
            destination, prefix, keep_vars = (list(args) + [destination, prefix, keep_vars][len(args):])[:3]
        out = destination if destination is not None else {}
        for k, t in state_dict(self).items():
            out[prefix + k] = t
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> IncompatibleKeys:
        return load_state_dict(self, state_dict, strict, assign=assign)

    def get_parameter(self, target: str) -> Tensor:
        """torch's: the parameter at dotted path `target`, an AttributeError naming what is not there."""
        return self._get_own(target, "named_parameters", "an nn.Parameter")

    def get_buffer(self, target: str) -> Tensor:
        """torch's: the buffer at dotted path `target`, an AttributeError naming what is not there."""
        return self._get_own(target, "named_buffers", "a buffer")

    def _get_own(self, target: str, listing: str, kind: str) -> Tensor:
        path, _, name = target.rpartition(".")
        mod = self.get_submodule(path)
        if not hasattr(mod, name):
            raise AttributeError(f"{type(mod).__name__} has no attribute `{name}`")
        t = getattr(mod, name)
        if not any(x is t for _, x in getattr(mod, listing)(recurse=False, remove_duplicate=False)):
            raise AttributeError(f"`{name}` is not {kind}")
        return t

    def type(self, dst_type: Any) -> Module:
        """torch's Module.type: EVERY parameter and buffer cast to `dst_type` (a dtype, or a tensor type
        by name or class), integer buffers such as num_batches_tracked included, in place."""
        for _, t in tree.named_tensors(self):
            moved = t.type(dst_type)
            if moved.dtype != t.dtype:
                t._data, t._dtype, t._view = moved._data, moved._dtype, None
        return self

    def named_modules(self, memo: set | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[tuple[str, Module]]:
        if isinstance(memo, str):  # Avalon's earlier `named_modules(prefix)`, positionally
            memo, prefix = None, memo
        return named_modules(self, prefix, remove_duplicate, memo)

    def modules(self) -> Iterator[Module]:
        for _, m in named_modules(self):
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, v in vars(self).items():
            if isinstance(v, Module):
                yield name, v

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def get_submodule(self, target: str = "") -> Module:
        """The submodule at dotted path `target` ("" is this module), as torch's: peft's and torchao's
        model surgery finds a layer's parent by it before `setattr` replaces the layer. A plain list or
        dict of modules (a submodule here) is entered by index or key."""
        mod: Any = self
        for item in target.split(".") if target else ():
            if isinstance(mod, (list, tuple)) and item.isdigit() and int(item) < len(mod):
                mod = mod[int(item)]
            elif isinstance(mod, dict) and item in mod:
                mod = mod[item]
            elif hasattr(mod, item):
                mod = getattr(mod, item)
            else:
                raise AttributeError(f"{type(mod).__name__} has no attribute `{item}`")
            if not isinstance(mod, (Module, list, tuple, dict)):
                raise AttributeError(f"`{item}` is not an nn.Module")
        if not isinstance(mod, Module):
            raise AttributeError(f"`{target}` is not an nn.Module")
        return mod

    @property
    def _modules(self) -> Mapping[str, Module]:
        """torch's `_modules` as code reads it (`for name, layer in model._modules.items()`): the direct
        submodules by name, in order. Read-only: assign the attribute or `add_module` to change one."""
        return MappingProxyType(dict(self.named_children()))

    def apply(self, fn: Any) -> Module:
        """`fn(m)` for every submodule, children first and this module last, as torch does
        (init functions: `model.apply(_init_weights)`)."""
        for name, v in list(vars(self).items()):
            for _, m in _direct_modules(name, v):
                m.apply(fn)
        fn(self)
        return self

    # registration, torch's spelling (attributes are found without it)
    def register_buffer(self, name: str, tensor: Any, persistent: bool = True, *, _assigned: bool = False) -> None:
        """Keep `tensor` as non-trained state `name`: in `state_dict` when `persistent`, traced and
        moved with the model either way. Assigning to the attribute later keeps it a buffer."""
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"register_buffer: buffer name must be a non-empty string without '.', got {name!r}")
        if not _assigned:  # (an attribute assignment `self.x = nn.Buffer(...)` replaces what was there)
            self._name_free("register_buffer", name, "buffer")
        if is_complex_like(tensor) and not isinstance(tensor, (list, tuple)):
            z = tensor if isinstance(tensor, ComplexTensor) else from_data(tensor)
            tensor = ComplexTensor(_as_buffer(z.real), _as_buffer(z.imag))
        elif tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor(as_array(tensor))
        elif isinstance(tensor, Tensor):
            tensor = _data_base(self, tensor)
        bufs = self.__dict__.setdefault("_buffer_names", set())
        bufs.add(name)
        np_ = self.__dict__.setdefault("_non_persistent_buffers", set())
        (np_.discard if persistent else np_.add)(name)
        setattr(self, name, tensor)

    def register_parameter(self, name: str, param: Any) -> None:
        if not isinstance(name, str) or not name or "." in name:  # ("a.b" made an attribute no name reaches)
            raise KeyError(f"register_parameter: parameter name must be a non-empty string without '.', got {name!r}")
        self._name_free("register_parameter", name, "parameter")
        setattr(self, name, param if param is None or isinstance(param, Tensor) else Parameter(param))

    def add_module(self, name: str, module: Any) -> None:
        if not isinstance(name, str):
            raise TypeError(f"add_module: module name should be a string, got {type(name).__name__}")
        if not name or "." in name:  # ("a.b" made an attribute no dotted name reaches)
            raise KeyError(f"add_module: module name must be a non-empty string without '.', got {name!r}")
        if isinstance(module, (str, bytes, int, float, complex, np.ndarray, Tensor)):  # plain-class layers pass
            raise TypeError(f"add_module: module {name!r} is a {type(module).__name__} ({module!r:.60}), which is "
                            "not a Module subclass")
        self._name_free("add_module", name, "module")
        setattr(self, name, module)

    def _name_free(self, fn: str, name: str, kind: str) -> None:
        """torch's KeyError where `name` already holds something of another kind (a submodule, a
        parameter or a buffer), which the registration would otherwise silently replace (a module
        dropped from the model, a trained weight turned into an untrained buffer)."""
        cur = self.__dict__.get(name)
        if cur is None:
            return
        is_buf = name in self.__dict__.get("_buffer_names", ())
        tensor_like = isinstance(cur, (Tensor, ComplexTensor))
        trained = (not is_buf and isinstance(cur, Tensor) and not isinstance(cur, Buffer) and cur.dtype.is_float
                   or id(cur) in _DECLARED)  # Avalon's parameters: float tensor attributes, not buffers
        taken = {"buffer": isinstance(cur, Module) or (not is_buf and trained),
                 "parameter": is_buf or isinstance(cur, Module),
                 "module": tensor_like}[kind]
        if taken:
            what = "a buffer" if is_buf else "a submodule" if isinstance(cur, Module) else "a parameter"
            raise KeyError(f"{fn}: attribute '{name}' already exists (as {what} of {type(self).__name__})")

    register_module = add_module

    def __getattr__(self, name: str) -> Any:
        """torch's `Module.__getattr__`, which ported code calls by name: CenterNet's heads, set by
        `self.__setattr__(head, fc)` and run by `self.__getattr__(head)(x)`. Python calls it only where the
        usual lookup failed; called directly it gives the attribute, as torch's gives a registered one."""
        d = object.__getattribute__(self, "__dict__")
        if name in d:
            return d[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        """A buffer's name keeps it a buffer. A plain tensor (not made by `Parameter`) assigned inside
        this module's forward where no tensor was (torch's `self.src_mask = mask` cache) is a plain
        attribute in torch, neither trained nor saved: here a non-persistent buffer. An `nn.Buffer`
        registers itself."""
        made = _BUFFERS_MADE.pop(id(value), None) if isinstance(value, Buffer) else None
        if made is not None and made[0]() is value:
            self.register_buffer(name, value, persistent=made[1], _assigned=True)
            return
        if isinstance(value, Tensor) and not isinstance(value, Buffer):
            if name in self.__dict__.get("_buffer_names", ()):
                value = _as_buffer(value)
            elif (id(self) in _IN_FORWARD and not isinstance(self.__dict__.get(name), Tensor)
                  and id(value) not in _DECLARED):
                self.register_buffer(name, value, persistent=False, _assigned=True)
                return
        elif isinstance(value, ComplexTensor):  # the same rules for the pair of parts
            if name in self.__dict__.get("_buffer_names", ()):
                value = ComplexTensor(_as_buffer(value.real), _as_buffer(value.imag))
            elif (id(self) in _IN_FORWARD and not isinstance(self.__dict__.get(name), (Tensor, ComplexTensor))
                  and id(value.real) not in _DECLARED):
                self.register_buffer(name, value, persistent=False, _assigned=True)
                return
        elif (isinstance(value, (int, float)) and not isinstance(value, bool) and _TRACE_STACK
              and isinstance(self.__dict__.get(name), (int, float))):
            note_number_write(name)  # a counter (`self.step += 1`): each call a new signature, said once
        object.__setattr__(self, name, value)

    # modes and placement
    def train(self, mode: bool = True) -> Module:
        """torch's: this module's `training`, then each submodule's own `train(mode)`."""
        _check_mode(mode)
        self.training = bool(mode)
        _train_children(self, mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def to(self, device: Any = None, dtype: Any = None, non_blocking: bool = False,
           memory_format: Any = None) -> Module:
        """Move (in place) every tensor to `device` and/or floating-point tensors to `dtype`
        (`memory_format`: accepted, no effect; the layout pass decides layouts). As in torch,
        `model.to(torch.float16)` and `model.to(tensor)` work too."""
        if isinstance(device, Tensor):
            device, dtype = device.device, device.dtype if dtype is None else dtype
        elif device is not None and not isinstance(device, str) and (_is_dtype(device) or complex_dtype(device)):
            device, dtype = None, device  # (model.to(torch.cfloat) named a device before)
        if dtype is not None:
            _cast_floats(self, dtype)
        if device is not None:
            tree.to_device(self, device)
        return self

    def cuda(self) -> Module:
        return self.to("cuda")

    def cpu(self) -> Module:
        return self.to("cpu")

    # torch's double()/float()/half() cast floating-point tensors only: complex parameters keep their
    # dtype (they became complex128, or a pair of float16 parts, which no complex dtype has)
    def double(self) -> Module:
        _cast_floats(self, dt.float64, complex_parts=False)
        return self

    def float(self) -> Module:
        _cast_floats(self, dt.float32, complex_parts=False)
        return self

    def half(self) -> Module:
        _cast_floats(self, dt.float16, complex_parts=False)
        return self

    def bfloat16(self) -> Module:
        _cast_floats(self, dt.bfloat16, complex_parts=False)
        return self

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Freeze (False) or unfreeze every parameter, as torch's: av.grad leaves frozen ones out."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Gradients are returned by `av.grad`, not stored on tensors; kept for torch-style code."""

    # printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, v in vars(self).items():
            for sub, m in _direct_modules(name, v):
                body = repr(m).replace("\n", "\n  ")
                lines.append(f"  ({sub}): {body}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ")" if not lines else head + "\n" + "\n".join(lines) + "\n)"


def _call_with_hooks(module: Module, args: tuple, kwargs: dict) -> Any:
    """torch's `Module._call_impl` with forward hooks: pre-hooks, forward, hooks; when anything
    raises, the `always_call` hooks that have not run yet run (their own errors only warned)."""
    d = module.__dict__
    result = None
    called: set[int] = set()
    no_hooks: Mapping[int, Any] = MappingProxyType({})
    hooks = d.get("_forward_hooks", no_hooks)
    with_kwargs = d.get("_forward_hooks_with_kwargs", no_hooks)
    always = d.get("_forward_hooks_always_called", no_hooks)
    try:
        pre_kwargs = d.get("_forward_pre_hooks_with_kwargs", no_hooks)
        for hook_id, hook in list(d.get("_forward_pre_hooks", no_hooks).items()):
            if hook_id in pre_kwargs:
                res = hook(module, args, kwargs)
                if res is not None:
                    if not (isinstance(res, tuple) and len(res) == 2):
                        raise RuntimeError(f"forward pre-hook must return None or a tuple of (new_args, new_kwargs), "
                                           f"but got {res}.")
                    args, kwargs = res
            else:
                res = hook(module, args)
                if res is not None:
                    args = res if isinstance(res, tuple) else (res,)
        result = module.forward(*args, **kwargs)
        for hook_id, hook in list(hooks.items()):
            if hook_id in always:
                called.add(hook_id)
            res = hook(module, args, kwargs, result) if hook_id in with_kwargs else hook(module, args, result)
            if res is not None:
                result = res
        return result
    except Exception:
        for hook_id, hook in list(hooks.items()):
            if hook_id not in always or hook_id in called:
                continue
            try:
                res = hook(module, args, kwargs, result) if hook_id in with_kwargs else hook(module, args, result)
                if res is not None:
                    result = res
            except Exception as e:  # noqa: BLE001 - torch silences it too, keeping forward's error
                warnings.warn("module forward hook with ``always_call=True`` raised an exception that was silenced "
                              f"as another error was raised in forward: {e}", stacklevel=3)
        raise


def _no_backward_hooks(name: str) -> Any:
    raise RuntimeError(
        f"Module.{name}: Avalon's gradients are values returned by av.grad / av.value_and_grad, not passed "
        "through hooks during backward(). To transform parameter gradients, change the dict before "
        "`opt.step(grads)`; to get the gradient of an activation (what a backward hook sees as grad_output), "
        "split the model at it and differentiate the second part with respect to it: `act = first(x)`, then "
        "`g = av.grad(lambda a, rest, y: loss_fn(rest(a), y))(act, rest, y)` (`rest` an argument: closed over "
        "outside a compiled function, its weights would be baked in as constants).")


def _as_buffer(t: Tensor) -> Buffer:
    """The same tensor object, now a Buffer (the classes share their layout), so code holding it
    sees the change; a traced tensor becomes a new Buffer object for the same value."""
    if t.is_traced:
        b = Buffer._traced(t._value, t._trace)
        return b
    t.__class__ = Buffer
    return t


def _data_base(module: Any, t: Tensor) -> Tensor:
    """torch's `register_buffer(name, t.data)` of a plain tensor `t` (pytorch-ntm's `init_r_bias`, kept in
    a list as well): the buffer shares `t`'s storage, and `t` needs no gradient, so `t` is that buffer to
    whoever holds it. Here the buffer is `t` itself (made a Buffer in place), not a detached view of it that
    Avalon would list, train and trace apart (`init_r.0`, a parameter torch does not have). A view of a
    part, of a traced value or of a tensor the module already holds (a layer's weight: `fc.weight.data`, a
    parameter) stays a buffer of its own."""
    view = t._view
    if view is None or t.is_traced or len(view.steps) != 1 or type(view.steps[0]).__name__ != "Detach":
        return t
    base = view.base
    if (not isinstance(base, Tensor) or base.is_traced or id(base) in _DECLARED
            or base._view is not None or layout_of(base) != view.layout or base.dtype != t.dtype):
        return t
    if any(x is base for _, x in tree.named_tensors(module)):
        return t
    return base


def _direct_modules(name: str, v: Any) -> list[tuple[str, Module]]:
    if isinstance(v, Module):
        return [(name, v)]
    if isinstance(v, (list, tuple)):
        return [(f"{name}.{i}", m) for i, m in enumerate(v) if isinstance(m, Module)]
    if isinstance(v, dict):
        return [(f"{name}.{k}", m) for k, m in v.items() if isinstance(m, Module)]
    return []


def _cast_floats(model: Any, dtype: Any, complex_parts: bool = True) -> None:
    """Convert the model's floating-point tensors to `dtype` in place (same Tensor objects), the parts of
    its complex values too unless `complex_parts` is False. A complex `dtype` (`model.to(torch.cdouble)`)
    sets the complex values' precision; torch would make every real tensor complex as well, which Avalon's
    real tensors cannot be, so a model holding any is refused rather than converted otherwise."""
    c = complex_dtype(dtype)
    nodes: list = []
    tree._walk_state(model, "", set(), [], [], nodes)
    parts = {id(p) for obj, _ in nodes if isinstance(obj, ComplexTensor) for p in (obj.real, obj.imag)}
    if c is not None:
        real = [n for n, t in tree.named_tensors(model) if t.dtype.is_float and id(t) not in parts]
        if real:
            raise TypeError(f"model.to({c!r}): torch makes every floating-point tensor complex, {real[0]!r} "
                            "among them; Avalon's real tensors stay real. Cast with a real dtype (complex "
                            "parameters follow it), or convert the complex parameters themselves")
        dtype = c.real
    dtype = dt.dtype(dtype)
    if not dtype.is_float:  # (every float parameter would become an integer one: the weights truncated)
        raise TypeError(f"nn.Module.to only accepts floating point or complex dtypes, but got desired "
                        f"dtype={dtype.name}")
    for _, t in tree.named_tensors(model):
        if t.dtype.is_float and t.dtype != dtype and (complex_parts or id(t) not in parts):
            moved = t.to(dtype=dtype)
            t._data, t._dtype = moved._data, moved._dtype
            # new storage, as torch's `param.data = fn(param.data)`: a parameter made from a view (YOLOv5's
            # `mi.bias = nn.Parameter(b.view(-1))`) no longer shares its old base, whose dtype it would
            # round every write to
            t._view = None


def _is_dtype(x: Any) -> bool:
    try:
        dt.dtype(x)
    except (TypeError, ValueError, KeyError):
        return False
    return True
