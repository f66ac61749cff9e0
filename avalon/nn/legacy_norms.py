"""torch's older `nn.utils.weight_norm` / `spectral_norm` (and their `remove_` functions), with
torch's state-dict keys (`weight_g`, `weight_v`; `weight_orig` and the buffers `weight_u`, `weight_v`)
and numbers, without forward hooks.

torch recomputes the weight in a forward pre-hook, once per call. Here the module gets a generated
subclass, named like its class, whose `__call__` computes each normalized weight once (with a power
iteration step in training mode, for spectral norm) before calling the original, and whose
`__getattr__` serves `module.weight`: that call's weight inside it, the weight computed from the
current tensors (no power iteration) outside. The weight is not an attribute, so the walk that finds
parameters sees only `weight_g`/`weight_v` (or `weight_orig`), as torch's `named_parameters` does.
What is registered lives in the instance (`__norm_hooks__`, a dunder the walks skip), so copies of
the module keep their own.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any

from .. import ops
from ..grad_mode import no_grad
from ..tensor import Buffer, Tensor
from ..trace import assign
from . import functional as F
from .module import Module
from .parametrizations import _is_conv_transpose, _weight_norm, norm_except_dim

__all__ = ["SpectralNorm", "WeightNorm", "remove_spectral_norm", "remove_weight_norm", "spectral_norm", "weight_norm"]

_CALLS: dict[int, list[dict[str, Tensor]]] = {}
"""The weights computed for each module call in progress (by module id, innermost last)."""


def _hooks(module: Any) -> dict[str, Any]:
    return module.__dict__.get("__norm_hooks__", {})


def _install(module: Any, fn: Any) -> None:
    """Give `module` the subclass that computes normalized weights, and register `fn` on it."""
    if "_norm_hooks_from" not in type(module).__dict__:
        module.__class__ = _hooked_class(type(module))
    module.__dict__["__norm_hooks__"] = {**_hooks(module), fn.name: fn}  # a new dict: cached walks see it


def _uninstall(module: Any, name: str) -> None:
    hooks = {k: v for k, v in _hooks(module).items() if k != name}
    if hooks:
        module.__dict__["__norm_hooks__"] = hooks
        return
    module.__dict__.pop("__norm_hooks__", None)
    if "_norm_hooks_from" in type(module).__dict__:
        module.__class__ = type(module)._norm_hooks_from


def _hooked_class(cls: type) -> type:
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N807
        training = bool(getattr(self, "training", True))  # (a plain object trains, as a new torch Module does)
        weights = {name: fn.compute_weight(self, do_power_iteration=training) for name, fn in _hooks(self).items()}
        stack = _CALLS.setdefault(id(self), [])
        stack.append(weights)
        try:
            return super(hooked, self).__call__(*args, **kwargs)
        finally:
            stack.pop()
            if not stack:
                del _CALLS[id(self)]

    def __getattr__(self: Any, name: str) -> Any:  # noqa: N807
        fn = _hooks(self).get(name)
        if fn is not None:
            stack = _CALLS.get(id(self))
            return stack[-1][name] if stack else fn.compute_weight(self, do_power_iteration=False)
        parent = getattr(super(hooked, self), "__getattr__", None)
        if parent is not None:
            return parent(name)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self: Any, name: str, value: Any) -> None:  # noqa: N807
        if name in _hooks(self):
            fn = _hooks(self)[name]
            raise AttributeError(f"{name} is computed from {', '.join(fn.sources())} on every call "
                                 f"({type(fn).__name__}); assign to those, or call remove_{fn.kind}(module, "
                                 f"{name!r}) first")
        super(hooked, self).__setattr__(name, value)

    call = next((c.__dict__["__call__"] for c in cls.__mro__ if "__call__" in c.__dict__), None)
    target = getattr(cls, "forward", None) if call is Module.__call__ else call
    if inspect.isfunction(target):  # forward's signature: a traced call names its inputs after it
        __call__.__wrapped__ = target  # type: ignore[attr-defined]
    hooked = type(cls.__name__, (cls,), {"__call__": __call__, "__getattr__": __getattr__, "__setattr__": __setattr__,
                                         "_norm_hooks_from": cls, "__module__": cls.__module__,
                                         "__qualname__": cls.__qualname__})
    return hooked


def _take(module: Any, name: str, fn_name: str) -> Tensor:
    """Remove and return the tensor attribute `name` (a clear error if there is none)."""
    if name in _hooks(module):
        raise RuntimeError(f"Cannot register two {fn_name} hooks on the same parameter {name}")
    t = getattr(module, "__dict__", {}).get(name)
    if not isinstance(t, Tensor):
        what = "it does not exist"
        if name in getattr(module, "__dict__", {}):
            what = "it is None: a lazy layer has its weights after its first call"
        raise AttributeError(f"{fn_name}: '{type(module).__name__}' has no parameter named '{name}' ({what})")
    del module.__dict__[name]
    return t


def _drop(module: Any, *names: str) -> None:
    for n in names:
        module.__dict__.pop(n, None)
        for key in ("_buffer_names", "_non_persistent_buffers"):
            s = module.__dict__.get(key)
            if s is not None:
                s.discard(n)


def _new_parameter(x: Tensor) -> Tensor:
    return Tensor._wrap(x.detach().clone()._data, x.dtype, x.device)


# -- weight norm ----------------------------------------------------------------------------------

class WeightNorm:
    """torch.nn.utils.weight_norm's hook object: `name` = g * v / ||v|| from `<name>_g`, `<name>_v`."""

    kind = "weight_norm"

    def __init__(self, name: str, dim: int | None) -> None:
        self.name = name
        self.dim = -1 if dim is None else dim

    def sources(self) -> tuple[str, str]:
        return self.name + "_g", self.name + "_v"

    def compute_weight(self, module: Any, do_power_iteration: bool = False) -> Tensor:
        return _weight_norm(getattr(module, self.name + "_v"), getattr(module, self.name + "_g"), self.dim)

    @staticmethod
    def apply(module: Any, name: str, dim: int | None) -> WeightNorm:
        warnings.warn("`nn.utils.weight_norm` is deprecated in favor of `nn.utils.parametrizations.weight_norm` "
                      "(as in torch)", FutureWarning, stacklevel=3)
        fn = WeightNorm(name, dim)
        weight = _take(module, name, "weight_norm")
        setattr(module, name + "_g", _new_parameter(norm_except_dim(weight, 2, fn.dim)))
        setattr(module, name + "_v", _new_parameter(weight))
        _install(module, fn)
        return fn

    def remove(self, module: Any) -> None:
        with no_grad():
            weight = self.compute_weight(module)
        _uninstall(module, self.name)
        _drop(module, *self.sources())
        setattr(module, self.name, _new_parameter(weight))


def weight_norm(module: Any, name: str = "weight", dim: int | None = 0) -> Any:
    """torch.nn.utils.weight_norm (the older API; `parametrizations.weight_norm` is the newer):
    `name` replaced by the parameters `<name>_g` (magnitude, the norm over every dim but `dim`, or
    the whole tensor's with `dim=None`) and `<name>_v` (direction), recombined on every call."""
    WeightNorm.apply(module, name, dim)
    return module


def remove_weight_norm(module: Any, name: str = "weight") -> Any:
    """Put back `name` as a plain parameter holding the current g * v / ||v||."""
    fn = _hooks(module).get(name)
    if not isinstance(fn, WeightNorm):
        raise ValueError(f"weight_norm of '{name}' not found in {type(module).__name__}")
    fn.remove(module)
    return module


# -- spectral norm --------------------------------------------------------------------------------

class SpectralNorm:
    """torch.nn.utils.spectral_norm's hook object: `name` = `<name>_orig` / sigma, sigma from the
    power-iteration buffers `<name>_u`, `<name>_v`, updated once per call in training mode."""

    kind = "spectral_norm"

    def __init__(self, name: str = "weight", n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12) -> None:
        self.name = name
        self.dim = dim
        if n_power_iterations <= 0:
            raise ValueError(f"Expected n_power_iterations to be positive, but got n_power_iterations="
                             f"{n_power_iterations}")
        self.n_power_iterations = n_power_iterations
        self.eps = eps

    def sources(self) -> tuple[str, str, str]:
        return self.name + "_orig", self.name + "_u", self.name + "_v"

    def reshape_weight_to_matrix(self, weight: Tensor) -> Tensor:
        if self.dim != 0:
            weight = weight.permute(self.dim, *[d for d in range(weight.ndim) if d != self.dim])
        return weight.reshape(weight.shape[0], -1)

    def compute_weight(self, module: Any, do_power_iteration: bool) -> Tensor:
        weight = getattr(module, self.name + "_orig")
        u, v = getattr(module, self.name + "_u"), getattr(module, self.name + "_v")
        weight_mat = self.reshape_weight_to_matrix(weight)
        if do_power_iteration:  # v first, then u (the newer parametrization goes the other way)
            with no_grad():
                w = weight_mat.detach()
                for _ in range(self.n_power_iterations):
                    assign(v, F.normalize(ops.mv(w.mT, u), dim=0, eps=self.eps))
                    assign(u, F.normalize(ops.mv(w, v), dim=0, eps=self.eps))
        sigma = ops.dot(u, ops.mv(weight_mat, v))
        return weight / sigma

    @staticmethod
    def apply(module: Any, name: str, n_power_iterations: int, dim: int, eps: float) -> SpectralNorm:
        fn = SpectralNorm(name, n_power_iterations, dim, eps)
        weight = _take(module, name, "spectral_norm")
        with no_grad():
            weight_mat = fn.reshape_weight_to_matrix(weight.detach())
            h, w = weight_mat.shape
            u = F.normalize(ops.randn(h, dtype=weight.dtype), dim=0, eps=fn.eps)  # Avalon's generator
            v = F.normalize(ops.randn(w, dtype=weight.dtype), dim=0, eps=fn.eps)
        setattr(module, name + "_orig", weight)  # the same tensor: an optimizer holding it keeps it
        for key, t in ((name + "_u", u), (name + "_v", v)):
            b = Buffer._wrap(t._data, t.dtype, t.device)
            if isinstance(module, Module):
                module.register_buffer(key, b)
            else:
                setattr(module, key, b)
        _install(module, fn)
        return fn

    def remove(self, module: Any) -> None:
        with no_grad():
            weight = self.compute_weight(module, do_power_iteration=False)
        _uninstall(module, self.name)
        _drop(module, *self.sources())
        setattr(module, self.name, _new_parameter(weight))


def spectral_norm(module: Any, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12,
                  dim: int | None = None) -> Any:
    """torch.nn.utils.spectral_norm (the older API; `parametrizations.spectral_norm` is the newer):
    `name` becomes `<name>_orig` / sigma, with buffers `<name>_u`, `<name>_v` for the power
    iteration, run once per call in training mode. `dim` defaults to 0 (1 for transposed convs)."""
    if dim is None:
        dim = 1 if _is_conv_transpose(module) else 0
    SpectralNorm.apply(module, name, n_power_iterations, dim, eps)
    return module


def remove_spectral_norm(module: Any, name: str = "weight") -> Any:
    """Put back `name` as a plain parameter holding the current `<name>_orig` / sigma."""
    fn = _hooks(module).get(name)
    if not isinstance(fn, SpectralNorm):
        raise ValueError(f"spectral_norm of '{name}' not found in {type(module).__name__}")
    fn.remove(module)
    return module
