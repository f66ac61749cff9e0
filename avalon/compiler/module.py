"""`av.compile(model)`: a compiled model that is still the model (torch's `OptimizedModule`).

torch code writes `model = torch.compile(model)` and then keeps using `model` as a model: it trains it
(`optimizer = Adam(model.parameters())`), saves it (`model.state_dict()`), switches it (`model.eval()`)
and reads its attributes. `OptimizedModule` makes that work here: calling it runs the compiled forward
(`Compiled`, one graph per input signature); everything else is the original model's, kept in
`_orig_mod` as in torch:

- attributes are read from and written to the original (torch forwards them the same way);
- every walk over the model (parameters, state dicts, `av.grad`'s gradient names, optimizers, traces
  of a step that takes it) sees the original's attributes, because the wrapper presents the original's
  attribute dict as its own `__dict__`. So `av.value_and_grad(loss)(compiled, x, y)` differentiates
  the original's parameters, and gradients, optimizers and checkpoints of the compiled model and of
  the original are interchangeable;
- `nn.Module`'s methods are the original's (`parameters()`, `state_dict()`, ...), and those that return
  the module (`train()`, `eval()`, `to()`, `apply()`, ...) return this wrapper, as torch's do.

It is not an `nn.Module` subclass (the compiler sits below `avalon.nn` and does not import it), so
`isinstance(compiled, nn.Module)` is False where torch's is True, and an `nn.Module` holding a compiled
submodule does not list that submodule itself in `modules()`/`children()`/`apply()` (its parameters
and state are found, under the original's names).

What differs from torch, on purpose: torch names the parameters of a compiled module `_orig_mod.<name>`
(its `state_dict()` keys carry that prefix); here they keep the original's names, so a checkpoint of
the compiled model loads into the plain one and the reverse. `load_state_dict` also accepts a torch
checkpoint saved from a compiled torch module (every key prefixed `_orig_mod.`), stripping the prefix.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from .core import Compiled

_OWN = ("_orig_mod", "_compiled")
_FROM_COMPILED = ("backend", "pipeline", "check", "fn")  # Compiled's attributes a model rarely has


class _OrigSignature:
    """`inspect.signature(compiled_model)` is the original model's, so traced inputs keep forward's
    argument names (None on the class)."""

    def __get__(self, obj: Any, cls: type | None = None) -> inspect.Signature | None:
        if obj is None:
            return None
        try:
            return inspect.signature(obj._orig_mod)
        except (TypeError, ValueError):
            return None


class _OrigDict:
    """`compiled_model.__dict__` (and `vars(...)`) is the original model's attribute dict: what every
    walk over a model reads (see the module docstring)."""

    def __get__(self, obj: Any, cls: type | None = None) -> Any:
        if obj is None:
            return self
        return obj._orig_mod.__dict__


class OptimizedModule:
    """The result of `av.compile(model)`: calling it runs the compiled forward; the model itself is
    `_orig_mod`, whose attributes, parameters and state this object shows as its own. `inspect`,
    `cache_info` and `cache_clear` are the compiled function's (`Compiled`)."""

    __slots__ = _OWN
    __dict__ = _OrigDict()  # type: ignore[assignment]
    __signature__ = _OrigSignature()

    def __init__(self, mod: Any, compiled: Compiled) -> None:
        object.__setattr__(self, "_orig_mod", mod)
        object.__setattr__(self, "_compiled", compiled)

    # -- running --------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The compiled forward. Keyword arguments are bound to forward's parameters by position
        (a compiled function takes positional arguments)."""
        if kwargs:
            args = self._positional(args, kwargs)
        return self._compiled(*args)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self(*args, **kwargs)

    def _positional(self, args: tuple, kwargs: dict) -> tuple:
        sig = inspect.signature(self._orig_mod)
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"compiled {type(self._orig_mod).__name__}: {e}") from None
        bound.apply_defaults()
        if bound.kwargs:
            raise TypeError(f"compiled {type(self._orig_mod).__name__}: keyword-only arguments "
                            f"({', '.join(bound.kwargs)}) cannot be passed to a compiled forward; make them "
                            "positional parameters of forward")
        return bound.args

    # -- the compiled function's tools ----------------------------------------------------------
    def inspect(self, *args: Any) -> Any:
        """What the compiler did for the signature of `args` (see `Compiled.inspect`)."""
        return self._compiled.inspect(*args)

    def cache_info(self) -> Any:
        return self._compiled.cache_info()

    def cache_clear(self) -> None:
        self._compiled.cache_clear()

    @property
    def cache(self) -> Any:
        return self._compiled.cache

    @property
    def __name__(self) -> str:  # type: ignore[override]
        return self._compiled.__name__

    @property
    def __self__(self) -> Any:
        """The model (as `Compiled.__self__` of a model is)."""
        return self._orig_mod

    @property
    def __wrapped__(self) -> Any:
        return self._orig_mod

    # -- the original's attributes --------------------------------------------------------------
    @property
    def training(self) -> bool:  # type: ignore[override]
        return bool(getattr(self._orig_mod, "training", True))

    @training.setter
    def training(self, mode: bool) -> None:
        self._orig_mod.training = mode

    def __getattr__(self, name: str) -> Any:
        if name in _OWN:  # not set yet (a half-built copy): no recursion through _orig_mod
            raise AttributeError(name)
        orig = self._orig_mod
        try:
            return getattr(orig, name)
        except AttributeError:
            if name in _FROM_COMPILED:
                return getattr(self._compiled, name)
            raise AttributeError(f"'{type(orig).__name__}' object (compiled) has no attribute '{name}'") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN or isinstance(inspect.getattr_static(type(self), name, None), property):
            object.__setattr__(self, name, value)
        else:
            setattr(self._orig_mod, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._orig_mod, name)

    def __len__(self) -> int:
        return len(self._orig_mod)

    # -- nn.Module's methods that return the module return this wrapper -----------------------------
    def _returning_self(self, name: str, *args: Any, **kwargs: Any) -> OptimizedModule:
        getattr(self._orig_mod, name)(*args, **kwargs)
        return self

    def train(self, mode: bool = True) -> OptimizedModule:
        return self._returning_self("train", mode)

    def eval(self) -> OptimizedModule:  # noqa: A003 - torch's name
        return self._returning_self("eval")

    def to(self, *args: Any, **kwargs: Any) -> OptimizedModule:
        return self._returning_self("to", *args, **kwargs)

    def cuda(self, *args: Any, **kwargs: Any) -> OptimizedModule:
        return self._returning_self("cuda", *args, **kwargs)

    def cpu(self) -> OptimizedModule:
        return self._returning_self("cpu")

    def float(self) -> OptimizedModule:  # noqa: A003
        return self._returning_self("float")

    def double(self) -> OptimizedModule:
        return self._returning_self("double")

    def half(self) -> OptimizedModule:
        return self._returning_self("half")

    def bfloat16(self) -> OptimizedModule:
        return self._returning_self("bfloat16")

    def requires_grad_(self, requires_grad: bool = True) -> OptimizedModule:
        return self._returning_self("requires_grad_", requires_grad)

    def apply(self, fn: Any) -> OptimizedModule:
        """`fn` on every submodule of the original (the original included), then on this wrapper, as
        torch's `apply` visits `_orig_mod` and then the OptimizedModule."""
        self._orig_mod.apply(fn)
        fn(self)
        return self

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any:
        """The original's `load_state_dict`; a torch checkpoint of a compiled torch module (every key
        `_orig_mod.<name>`) loads too."""
        if state_dict and all(isinstance(k, str) and k.startswith("_orig_mod.") for k in state_dict):
            state_dict = {k[len("_orig_mod."):]: v for k, v in state_dict.items()}
        return self._orig_mod.load_state_dict(state_dict, strict)

    def __repr__(self) -> str:
        body = repr(self._orig_mod).replace("\n", "\n  ")
        return f"OptimizedModule(\n  (_orig_mod): {body}\n)"

    def __reduce__(self) -> Any:
        """Copies (`copy.deepcopy`, pickle) copy the original model and compile it anew."""
        c = self._compiled
        return (_rebuild, (self._orig_mod, c.backend, c.pipeline, c.check))


def _rebuild(mod: Any, backend: Any, pipeline: Any, check: bool) -> OptimizedModule:
    return OptimizedModule(mod, Compiled(mod, backend, pipeline, check))
