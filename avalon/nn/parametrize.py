"""`torch.nn.utils.parametrize`: a tensor of a module computed, on every access, from other tensors.

`register_parametrization(module, "weight", P())` moves the weight to
`module.parametrizations.weight.original` (or `original0`, `original1`, ... when `P.right_inverse`
returns several tensors) and gives the module a generated subclass (`ParametrizedLinear`) whose
`weight` is a property computing `P(original)`, as torch does. A class-level property is not in
`vars(module)`, so Avalon's attribute walk (parameters, gradients, optimizers, traces) sees only
the originals, under torch's names (`parametrizations.weight.original`), and torch's state dicts
of parametrized models load as they are. Assigning to the property calls `right_inverse`.
"""
from __future__ import annotations

import copyreg
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from copy import deepcopy
from typing import Any

from ..grad_mode import no_grad
from ..tensor import Buffer, Tensor
from ..trace import assign, current_trace
from .containers import ModuleDict
from .layers import ModuleList
from .module import Module
from .module import train as _train

__all__ = ["ParametrizationList", "cached", "is_parametrized", "register_parametrization", "remove_parametrizations",
           "transfer_parametrizations_and_params", "type_before_parametrizations"]

_cache_enabled = 0
_cache: dict[tuple[int, str, int], tuple[Any, Tensor]] = {}


@contextmanager
def cached() -> Iterator[None]:
    """Compute each parametrized tensor once inside the block, as torch's `P.cached()` (an RNN
    reading its parametrized recurrent weight every step). Values are kept per trace as well as
    per module and name, so a traced value never leaks into eager code or into another trace."""
    global _cache, _cache_enabled
    _cache_enabled += 1
    try:
        yield
    finally:
        _cache_enabled -= 1
        if not _cache_enabled:
            _cache = {}


def _is_buffer(t: Tensor) -> bool:
    """Avalon's buffers: Buffer objects and integer tensors (the rest is trained, torch's Parameters)."""
    return isinstance(t, Buffer) or not t.dtype.is_float


def _register_parameter_or_buffer(module: Any, name: str, t: Tensor) -> None:
    if _is_buffer(t) and isinstance(module, Module):
        module.register_buffer(name, t)
    else:
        setattr(module, name, t)


def _forget_buffer(module: Any, name: str) -> None:
    """The name is no buffer's any more (torch deletes it from `_buffers`), so a tensor assigned to
    it later goes to the property, not into `register_buffer`'s conversion."""
    for key in ("_buffer_names", "_non_persistent_buffers"):
        names = module.__dict__.get(key)
        if names is not None:
            names.discard(name)


def _set(dest: Tensor, src: Any) -> None:
    """torch's `dest.set_(src)`: the same tensor object (held by optimizers, frozen flags, other
    modules) takes `src`'s values; a traced `src` is a recorded state update."""
    if src is dest:
        return
    if not isinstance(src, Tensor):
        src = Tensor(src, dtype=dest.dtype)
    if tuple(src.shape) == tuple(dest.shape) or src.is_traced or current_trace() is not None:
        assign(dest, src.detach().to(dest.dtype))
        return
    moved = src.detach().to(dest.device).clone()  # an unsafe parametrization may change the shape
    dest._data, dest._dtype = moved._data, moved._dtype


def _fresh(x: Tensor, like: Tensor) -> Tensor:
    """A new tensor holding `x`'s values, a buffer when `like` is one (torch's
    `Parameter(x, like.requires_grad)`), frozen when `like` is."""
    t = x.detach().clone()
    if _is_buffer(like):
        t = Buffer._wrap(t._data, t._dtype, t._device)
    elif not like.requires_grad:
        t.requires_grad_(False)
    return t


class ParametrizationList(ModuleList):
    """`module.parametrizations[name]`: the parametrizations of one tensor, applied in registration
    order, and the unconstrained tensor(s) they read, `original` (or `original0`, `original1`, ...
    when the first parametrization's `right_inverse` returns a sequence). Built by
    `register_parametrization`, not by users (as in torch)."""

    def __init__(self, modules: Sequence[Any], original: Tensor, unsafe: bool = False) -> None:
        if len(modules) == 0:
            raise ValueError("ParametrizationList requires one or more modules.")
        super().__init__(modules)
        self.unsafe = unsafe
        original_shape, original_dtype = tuple(original.shape), original.dtype
        with no_grad():
            new = original
            for module in reversed(list(self)):
                if hasattr(module, "right_inverse"):
                    try:
                        new = module.right_inverse(new)
                    except NotImplementedError:
                        pass
        if not isinstance(new, (Tensor, Sequence)):
            raise ValueError("'right_inverse' must return a Tensor or a Sequence of tensors (list, tuple...). "
                             f"Got {type(new).__name__}")
        self.is_tensor = isinstance(new, Tensor)
        self.ntensors = 1 if self.is_tensor else len(new)
        if self.is_tensor:
            if original.dtype != new.dtype:
                raise ValueError("When `right_inverse` outputs one tensor, it may not change the dtype.\n"
                                 f"original.dtype: {original.dtype}\nright_inverse(original).dtype: {new.dtype}")
            if str(original.device) != str(new.device):
                raise ValueError("When `right_inverse` outputs one tensor, it may not change the device.\n"
                                 f"original.device: {original.device}\n"
                                 f"right_inverse(original).device: {new.device}")
            _set(original, new)
            _register_parameter_or_buffer(self, "original", original)
        else:
            for i, originali in enumerate(new):
                if not isinstance(originali, Tensor):
                    raise ValueError("'right_inverse' must return a Tensor or a Sequence of tensors (list, tuple...). "
                                     f"Got element {i} of the sequence with type {type(originali).__name__}.")
                _register_parameter_or_buffer(self, f"original{i}", _fresh(originali, original))
        if not self.unsafe:
            z = self()
            if not isinstance(z, Tensor):
                raise ValueError(f"A parametrization must return a tensor. Got {type(z).__name__}.")
            if z.dtype != original_dtype:
                raise ValueError("Registering a parametrization may not change the dtype of the tensor, unless "
                                 f"`unsafe` flag is enabled.\nunparametrized dtype: {original_dtype}\n"
                                 f"parametrized dtype: {z.dtype}")
            if tuple(z.shape) != original_shape:
                raise ValueError("Registering a parametrization may not change the shape of the tensor, unless "
                                 f"`unsafe` flag is enabled.\nunparametrized shape: {original_shape}\n"
                                 f"parametrized shape: {tuple(z.shape)}")

    def right_inverse(self, value: Tensor) -> None:
        """Store the right inverses of `value` (through every parametrization, last first) in the
        original(s), in place: what assigning to the parametrized attribute does."""
        with no_grad():
            for module in reversed(list(self)):
                if not hasattr(module, "right_inverse"):
                    raise RuntimeError(f"parametrization {type(module).__name__} does not implement right_inverse.")
                value = module.right_inverse(value)
            if self.is_tensor:
                if not isinstance(value, Tensor):
                    raise ValueError(f"`right_inverse` should return a tensor. Got {type(value).__name__}")
                if value.dtype != self.original.dtype:
                    raise ValueError(f"The tensor returned by `right_inverse` has dtype {value.dtype} while "
                                     f"`original` has dtype {self.original.dtype}")
                _set(self.original, value)
                return
            if not isinstance(value, Sequence):
                raise ValueError(f"'right_inverse' must return a sequence of tensors. Got {type(value).__name__}.")
            if len(value) != self.ntensors:
                raise ValueError(f"'right_inverse' must return a sequence of tensors of length {self.ntensors}. "
                                 f"Got a sequence of length {len(value)}.")
            for i, t in enumerate(value):
                original_i = getattr(self, f"original{i}")
                if not isinstance(t, Tensor):
                    raise ValueError("'right_inverse' must return a sequence of tensors. "
                                     f"Got element {i} of type {type(t).__name__}.")
                if original_i.dtype != t.dtype:
                    raise ValueError(f"Tensor {i} returned by `right_inverse` has dtype {t.dtype} while "
                                     f"`original{i}` has dtype {original_i.dtype}")
                _set(original_i, t)

    def forward(self) -> Tensor:
        modules = list(self)
        if self.is_tensor:
            x = modules[0](self.original)
        else:
            x = modules[0](*(getattr(self, f"original{i}") for i in range(self.ntensors)))
        for module in modules[1:]:
            x = module(x)
        return x


# -- the generated class --------------------------------------------------------------------------

def _parametrized_class(module: Any) -> type | None:
    """The class `register_parametrization` generated for `module` (in its class's MRO), if any."""
    for cls in type(module).__mro__:
        if "_parametrized_from" in cls.__dict__:
            return cls
    return None


def _inject_new_class(module: Any) -> None:
    """Give `module` a subclass of its class (torch's `Parametrized<Name>`) to hold the properties."""
    cls = module.__class__
    dct: dict[str, Any] = {"__getstate__": _getstate, "__setattr__": _setattr, "_parametrized_from": cls,
                           "__module__": cls.__module__}
    if not hasattr(cls, "__deepcopy__"):
        dct["__deepcopy__"] = _default_deepcopy
    module.__class__ = type(f"Parametrized{cls.__name__}", (cls,), dct)


def _setattr(self: Any, name: str, value: Any) -> None:
    """A parametrized name goes to its property's setter (right_inverse), past Module's buffer rules."""
    if is_parametrized(self, name):
        object.__setattr__(self, name, value)
    else:
        super(_parametrized_class(self), self).__setattr__(name, value)


def _getstate(self: Any) -> Any:
    raise RuntimeError("Serialization of parametrized modules is only supported through state_dict() "
                       "(avalon.save(model.state_dict(), path)), as in torch.")


def deepcopy_with_own_class(marker: str) -> Any:
    """A `__deepcopy__` for modules whose class was generated for them (marked by the class
    attribute `marker`): torch's deepcopy, except that the copy gets a class of its own, so removing
    a parametrization or pruning from one (which deletes a property of the class) leaves the other."""
    def __deepcopy__(self: Any, memo: dict) -> Any:
        obj = memo.get(id(self), None)
        if obj is not None:
            return obj
        cls = type(self)
        if marker in cls.__dict__:
            cls = type(cls.__name__, cls.__bases__, {k: v for k, v in cls.__dict__.items()
                                                     if k not in ("__dict__", "__weakref__")})
        replica = self.__new__(cls)
        memo[id(self)] = replica
        replica.__dict__ = deepcopy(self.__dict__, memo)
        for slot in copyreg._slotnames(type(self)):  # type: ignore[attr-defined]
            if hasattr(self, slot):
                setattr(replica, slot, deepcopy(getattr(self, slot), memo))
        return replica
    return __deepcopy__


_default_deepcopy = deepcopy_with_own_class("_parametrized_from")


def _inject_property(module: Any, tensor_name: str) -> None:
    """`module.<tensor_name>`: the parametrization's output, computed on access (or cached)."""
    if hasattr(module, tensor_name):
        raise AssertionError(f"Module already has an attribute named '{tensor_name}'")

    def get_parametrized(self: Any) -> Tensor:
        parametrization = self.parametrizations[tensor_name]
        if not _cache_enabled:
            return parametrization()
        tr = current_trace()
        key = (id(self), tensor_name, id(tr))
        hit = _cache.get(key)
        if hit is None:
            hit = _cache[key] = (tr, parametrization())  # (the trace kept alive: its id stays unique)
        return hit[1]

    def set_original(self: Any, value: Tensor) -> None:
        self.parametrizations[tensor_name].right_inverse(value)

    setattr(_parametrized_class(module), tensor_name, property(get_parametrized, set_original))


def _add_item(container: ModuleDict, key: str, value: Any) -> None:
    """`container[key] = value` for any tensor name (ModuleDict refuses `_`-prefixed keys, which
    torch's parametrized tensor names may have)."""
    object.__setattr__(container, key, value)
    container._register(key)


def register_parametrization(module: Any, tensor_name: str, parametrization: Any, *, unsafe: bool = False) -> Any:
    """torch's `register_parametrization`: `module.<tensor_name>` becomes `parametrization(original)`,
    the tensor moving to `module.parametrizations.<tensor_name>.original` (set to
    `parametrization.right_inverse(tensor)` when it has one; several tensors, `original0`, ...,
    when that returns a sequence). A second registration on the same name chains after the first.
    `unsafe=True` skips the checks that the result keeps the tensor's shape and dtype."""
    if hasattr(module, "training") and not callable(module.training):
        _train(parametrization, bool(module.training))
    if is_parametrized(module, tensor_name):
        if not unsafe:
            y = getattr(module, tensor_name)
            x = parametrization(y)
            if not isinstance(x, Tensor):
                raise ValueError(f"A parametrization must return a tensor. Got {type(x).__name__}.")
            if x.dtype != y.dtype:
                raise ValueError("Registering a parametrization may not change the dtype of the tensor, unless the "
                                 f"`unsafe` flag is enabled.\nmodule.{tensor_name}.dtype: {y.dtype}\n"
                                 f"parametrization(module.{tensor_name}).dtype: {x.dtype}")
            if tuple(x.shape) != tuple(y.shape):
                raise ValueError("Registering a parametrization may not change the shape of the tensor, unless the "
                                 f"`unsafe` flag is enabled.\nmodule.{tensor_name}.shape: {tuple(y.shape)}\n"
                                 f"parametrization(module.{tensor_name}).shape: {tuple(x.shape)}")
            if hasattr(parametrization, "right_inverse"):
                try:
                    with no_grad():
                        z = parametrization.right_inverse(x)
                except NotImplementedError:
                    pass
                else:
                    if not isinstance(z, Tensor):
                        raise ValueError(f"parametrization.right_inverse must return a tensor. Got: {type(z).__name__}")
                    if z.dtype != y.dtype or tuple(z.shape) != tuple(y.shape):
                        raise ValueError("The tensor returned by parametrization.right_inverse must have the same "
                                         f"dtype and shape as module.{tensor_name}, unless the `unsafe` flag is "
                                         f"enabled.\nmodule.{tensor_name}: {y.dtype} {tuple(y.shape)}\n"
                                         f"returned: {z.dtype} {tuple(z.shape)}")
        plist = module.parametrizations[tensor_name]
        plist.append(parametrization)
        plist.unsafe = plist.unsafe or unsafe
    elif isinstance(getattr(module, "__dict__", {}).get(tensor_name), Tensor):
        original = module.__dict__[tensor_name]
        plist = ParametrizationList([parametrization], original, unsafe=unsafe)
        del module.__dict__[tensor_name]
        _forget_buffer(module, tensor_name)
        if not is_parametrized(module):
            _inject_new_class(module)
            module.parametrizations = ModuleDict()
        _inject_property(module, tensor_name)
        _add_item(module.parametrizations, tensor_name, plist)
    else:
        raise ValueError(f"Module '{type(module).__name__}' does not have a parameter, a buffer, or a parametrized "
                         f"element with name '{tensor_name}'")
    return module


def is_parametrized(module: Any, tensor_name: str | None = None) -> bool:
    """Whether `module` has a parametrization on `tensor_name` (on any tensor when None)."""
    parametrizations = getattr(module, "__dict__", {}).get("parametrizations")
    if not isinstance(parametrizations, ModuleDict):
        return False
    return len(parametrizations) > 0 if tensor_name is None else tensor_name in parametrizations


def remove_parametrizations(module: Any, tensor_name: str, leave_parametrized: bool = True) -> Any:
    """Undo `register_parametrization` on `tensor_name`: the tensor becomes a plain parameter (or
    buffer) again, holding its current parametrized value (`leave_parametrized=True`, the same
    tensor object as `original` when there is one original) or the original itself."""
    if not is_parametrized(module, tensor_name):
        raise ValueError(f"Module {type(module).__name__} does not have a parametrization on {tensor_name}")
    plist = module.parametrizations[tensor_name]
    if plist.is_tensor:
        original = plist.original
        if leave_parametrized:
            with no_grad():
                t = getattr(module, tensor_name)
            _set(original, t)
    elif leave_parametrized:
        with no_grad():
            t = getattr(module, tensor_name)
        originals = [getattr(plist, f"original{i}") for i in range(plist.ntensors)]
        original = _fresh(t, originals[0] if all(_is_buffer(o) for o in originals) else t)
    else:
        raise ValueError("Cannot leave unparametrized (`leave_parametrized=False`) a tensor that is parametrized "
                         "in terms of a sequence of tensors.")
    cls = _parametrized_class(module)
    delattr(cls, tensor_name)
    del module.parametrizations[tensor_name]
    _register_parameter_or_buffer(module, tensor_name, original)
    if not is_parametrized(module):
        del module.__dict__["parametrizations"]
        if type(module) is cls:  # (a class another wrapper put on top stays, its base now property-free)
            module.__class__ = cls._parametrized_from
    return module


def type_before_parametrizations(module: Any) -> type:
    """The module's class before `register_parametrization` replaced it (its class if it did not)."""
    cls = _parametrized_class(module)
    return cls._parametrized_from if is_parametrized(module) and cls is not None else type(module)


def transfer_parametrizations_and_params(from_module: Any, to_module: Any, tensor_name: str | None = None) -> Any:
    """Register `from_module`'s parametrizations (all, or those of `tensor_name`) on `to_module`,
    sharing the parametrization modules and original tensors, as torch's."""
    if not is_parametrized(from_module):
        return to_module
    names = list(from_module.parametrizations) if tensor_name is None else [tensor_name]
    for name in names:
        if not hasattr(to_module, name):
            setattr(to_module, name, getattr(from_module, name).detach().clone())
        for fn in from_module.parametrizations[name]:
            register_parametrization(to_module, name, fn)
        src, dst = from_module.parametrizations[name], to_module.parametrizations[name]
        keys = ["original"] if src.is_tensor else [f"original{i}" for i in range(src.ntensors)]
        for k in keys:
            object.__setattr__(dst, k, getattr(src, k))
    return to_module
