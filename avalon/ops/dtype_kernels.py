"""Which dtypes torch has no CPU kernel for, per op: one check shared by every op that torch refuses
at some dtype (`abs` of bool, `frac` of integers, the Bessel functions of f16, `gelu` of integers,
...). Avalon's numpy code computes at every dtype, so without this check such a call computed in
silence (often after promoting to float32) what raises in torch; ported code would then differ from
torch exactly where torch would have told the user. Round 8 of the silent-failure hunt.

An op declares what it refuses with `@refuses(op, kernel, what)`; `what` names dtype classes:

- ``"bool"``: bool tensors;
- ``"integer"``: integer and bool tensors (torch's floating-only kernels);
- ``"half"``: f16 and bf16 (torch's double/float-only kernels, most special functions);
- ``"int"``: integer tensors but not bool (im2col/col2im, whose kernels take floats and bool);
- ``"nonbyte"``: integer and bool tensors except uint8 (the image kernels, nearest/bilinear/bicubic
  resizing, that take floats and uint8 images);
- ``"nonlong"``: integer and bool tensors except int64 (the transposed convolutions' slow kernels).

The dtype checked is the operands' promoted dtype (torch dispatches on the common dtype:
`hypot(uint8, int8)` is refused for 'Short'), and the error is torch's: a
`DTypeNotImplementedError` ('"hypot_cpu" not implemented for 'Long''), or, where torch raises a
RuntimeError for the dtype (`argmax` of bool), a `DTypeRuntimeError`, both naming the user's line.
The check reads only dtypes, so it holds under tracing and `av.compile` too.

This module imports `core` lazily: `core` itself declares its ops' refusals with it.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from ..ir import dtypes as dt

# torch's spelling of a dtype in its "not implemented for 'Long'" messages
TORCH_NAMES = {"i1": "Bool", "ui8": "Byte", "i8": "Char", "i16": "Short", "i32": "Int", "i64": "Long",
               "f16": "Half", "bf16": "BFloat16", "f32": "Float", "f64": "Double"}

_CLASSES: dict[str, Callable[[dt.DType], bool]] = {
    "bool": lambda d: d is dt.bool_,
    "integer": lambda d: not d.is_float,
    "half": lambda d: d.name in ("f16", "bf16"),
    "int": lambda d: not d.is_float and d is not dt.bool_,
    "nonbyte": lambda d: not d.is_float and d.name != "ui8",
    "nonlong": lambda d: not d.is_float and d.name != "i64",
}


class DTypeRuntimeError(TypeError, RuntimeError):
    """An op torch refuses at an operand's dtype with a RuntimeError (argmax of bool, relu of bool,
    heaviside of two dtypes), and the TypeError a dtype error is in Python."""


def refused(what: str, d: dt.DType) -> bool:
    """Whether dtype `d` falls in one of the comma-separated classes `what`."""
    return any(_CLASSES[c.strip()](d) for c in what.split(","))


def check_kernel(op: str, kernel: str, what: str, *operands: Any, message: str | None = None) -> None:
    """Raise torch's error if the operands' promoted dtype is one `kernel` has no case for.
    `message` (then a `DTypeRuntimeError`, torch's RuntimeError text naming the op) replaces the
    'not implemented' wording."""
    from .core import _as_operand, _is_scalar, result_dtype
    xs = [_as_operand(x) for x in operands if x is not None]
    if not xs or all(_is_scalar(x) for x in xs):
        return  # Python numbers: the function's own rules decide their dtype
    check_dtype(op, kernel, what, result_dtype(*xs), message=message)


def check_dtype(op: str, kernel: str, what: str, d: dt.DType, *, message: str | None = None) -> None:
    """`check_kernel` for a dtype itself (a creation function's `dtype=`)."""
    from .core import DTypeNotImplementedError, fail
    if not refused(what, d):
        return
    if message is not None:
        raise fail(DTypeRuntimeError(message))
    raise fail(DTypeNotImplementedError(f"{op}: \"{kernel}\" not implemented for '{TORCH_NAMES[d.name]}'"))


def refuses(op: str, kernel: str, what: str, operands: Sequence[int] = (0,), *,
            message: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the function checks its positional arguments at `operands` (or the same-named
    keywords) with `check_kernel` before it runs."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        import inspect
        names = list(inspect.signature(fn).parameters)

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            xs = [args[i] if i < len(args) else kwargs.get(names[i]) for i in operands]
            check_kernel(op, kernel, what, *xs, message=message)
            return fn(*args, **kwargs)
        # the frame is named as the op: errors that read the caller's frame name (complex inputs) name it
        checked.__code__ = checked.__code__.replace(co_name=fn.__name__)
        return checked
    return wrap
