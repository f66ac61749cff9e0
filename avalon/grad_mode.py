"""torch's gradient switches (`no_grad`, `enable_grad`, `set_grad_enabled`, `inference_mode`) for
code ported by renaming imports. Avalon's gradients are functional (`av.grad`), so outside a
trace there is nothing to switch off; inside one, values computed with gradients disabled are
recorded behind `stop_gradient` (the tracer reads `enabled()`), so an EMA teacher or a target
network evaluated under `no_grad` in a differentiated loss sends no gradient back, as in torch."""
from __future__ import annotations

import functools
import inspect
import sys
import warnings
from collections.abc import Callable
from typing import Any

_ENABLED = [True]
_INFERENCE = [False]


def enabled() -> bool:
    """Whether gradients flow through values computed now (torch.is_grad_enabled)."""
    return _ENABLED[0]


is_grad_enabled = enabled


def _check_bool(mode: Any, where: str) -> bool:
    """torch's switches take a bool only (`set_grad_enabled("no")`, `set_grad_enabled(None)` are
    TypeErrors there; `bool()` of them silently switched gradients on or off)."""
    if not isinstance(mode, bool):
        raise TypeError(f"{where}(): argument 'mode' must be bool, not {type(mode).__name__}")
    return mode


def _decorate(fn: Callable, make: Callable[[], Any]) -> Callable:
    """`fn` run under a fresh context `make()` per call, as torch's decorators: a generator function's
    body runs under it at each step (`next`/`send`/`throw`), between which the caller's mode is back;
    a class (deprecated in torch, with its FutureWarning) gets its constructor call wrapped."""
    if inspect.isclass(fn):
        warnings.warn("Decorating classes is deprecated and will be disabled in future versions. You should only "
                      "decorate functions or methods. To preserve the current behavior of class decoration, you can "
                      "directly decorate the `__init__` method and nothing else.", FutureWarning, stacklevel=3)
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any) -> Any:
            with make():
                g = fn(*args, **kwargs)
                try:
                    response = g.send(None)
                except StopIteration as stop:
                    return stop.value
            while True:
                try:
                    request = yield response
                except GeneratorExit:
                    with make():
                        g.close()
                    raise
                except BaseException:  # noqa: BLE001 - thrown into the generator, as torch's wrapper does
                    with make():
                        try:
                            response = g.throw(*sys.exc_info())
                        except StopIteration as stop:
                            return stop.value
                else:
                    with make():
                        try:
                            response = g.send(request)
                        except StopIteration as stop:
                            return stop.value
        return gen

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with make():
            return fn(*args, **kwargs)
    return wrapped


class set_grad_enabled:  # noqa: N801  (torch's name)
    """Switch gradients on or off: a call (`set_grad_enabled(False)`), a context manager, or a
    decorator, as in torch."""

    def __init__(self, mode: bool):
        self.prev = _ENABLED[0]
        self.mode = _check_bool(mode, "set_grad_enabled")
        _ENABLED[0] = self.mode

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        _ENABLED[0] = self.prev

    def clone(self) -> set_grad_enabled:
        new = object.__new__(set_grad_enabled)
        new.prev, new.mode = _ENABLED[0], self.mode
        return new

    def __call__(self, fn: Callable) -> Callable:
        _ENABLED[0] = self.prev  # used as a decorator: the switch applies per call, not now
        mode = self.mode
        return _decorate(fn, lambda: set_grad_enabled(mode))


class _Mode:
    """Base of no_grad / enable_grad: a context manager, a decorator, and `@no_grad()` alike; as in
    torch, `@no_grad` without parentheses decorates too (it used to make a context object, so the
    decorated function returned a function instead of its value)."""

    mode = True
    inference = False

    def __new__(cls, orig_func: Any = None) -> Any:
        if orig_func is None:
            return super().__new__(cls)
        return cls()(orig_func)

    def __init__(self, orig_func: Any = None):
        self.prev = True
        self.prev_inference = False

    def __enter__(self) -> None:
        self.prev, self.prev_inference = _ENABLED[0], _INFERENCE[0]
        _ENABLED[0] = self.mode
        if type(self).inference:
            _INFERENCE[0] = not self.mode

    def __exit__(self, *exc: Any) -> None:
        _ENABLED[0], _INFERENCE[0] = self.prev, self.prev_inference

    def clone(self) -> _Mode:
        return type(self)()

    def __call__(self, fn: Callable) -> Callable:
        return _decorate(fn, self.clone)


class no_grad(_Mode):  # noqa: N801
    """`with av.no_grad():` / `@av.no_grad()` / `@av.no_grad`: no gradient flows through what is computed inside."""

    mode = False


class enable_grad(_Mode):  # noqa: N801
    """Gradients on again inside a `no_grad` block."""

    mode = True


class inference_mode(_Mode):  # noqa: N801
    """torch's inference_mode: here the same as no_grad (Avalon keeps no autograd records to skip);
    `inference_mode(False)` switches gradients on, as torch's does. `is_inference_mode_enabled()` tells."""

    inference = True

    def __new__(cls, mode: Any = True) -> Any:
        if isinstance(mode, bool):
            return object.__new__(cls)
        return cls()(mode)  # `@inference_mode` without parentheses

    def __init__(self, mode: Any = True):
        super().__init__()
        self.mode = not mode

    def clone(self) -> inference_mode:
        return inference_mode(not self.mode)


def is_inference_mode_enabled() -> bool:
    """torch.is_inference_mode_enabled: inside an `inference_mode()` block."""
    return _INFERENCE[0]
