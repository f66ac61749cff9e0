"""torch's gradient switches (`no_grad`, `enable_grad`, `set_grad_enabled`, `inference_mode`) for
code ported by renaming imports. Avalon's gradients are functional (`av.grad`), so outside a
trace there is nothing to switch off; inside one, values computed with gradients disabled are
recorded behind `stop_gradient` (the tracer reads `enabled()`), so an EMA teacher or a target
network evaluated under `no_grad` in a differentiated loss sends no gradient back, as in torch."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

_ENABLED = [True]


def enabled() -> bool:
    """Whether gradients flow through values computed now (torch.is_grad_enabled)."""
    return _ENABLED[0]


is_grad_enabled = enabled


class set_grad_enabled:  # noqa: N801  (torch's name)
    """Switch gradients on or off: a call (`set_grad_enabled(False)`), a context manager, or a
    decorator, as in torch."""

    def __init__(self, mode: bool = True):
        self.prev = _ENABLED[0]
        self.mode = bool(mode)
        _ENABLED[0] = self.mode

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        _ENABLED[0] = self.prev

    def __call__(self, fn: Callable) -> Callable:
        _ENABLED[0] = self.prev  # used as a decorator: the switch applies per call, not now
        mode = self.mode

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with set_grad_enabled(mode):
                return fn(*args, **kwargs)
        return wrapped


class _Mode:
    """Base of no_grad / enable_grad: a context manager, a decorator, and `@no_grad()` alike."""

    mode = True

    def __init__(self, *args: Any):
        self.prev = True

    def __enter__(self) -> None:
        self.prev = _ENABLED[0]
        _ENABLED[0] = self.mode

    def __exit__(self, *exc: Any) -> None:
        _ENABLED[0] = self.prev

    def __call__(self, fn: Callable) -> Callable:
        cls = type(self)

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with cls():
                return fn(*args, **kwargs)
        return wrapped


class no_grad(_Mode):  # noqa: N801
    """`with av.no_grad():` / `@av.no_grad()`: no gradient flows through what is computed inside."""

    mode = False


class enable_grad(_Mode):  # noqa: N801
    """Gradients on again inside a `no_grad` block."""

    mode = True


class inference_mode(_Mode):  # noqa: N801
    """torch's inference_mode: here the same as no_grad (Avalon keeps no autograd records to skip)."""

    def __init__(self, mode: bool = True):
        super().__init__()
        self.mode = not mode
