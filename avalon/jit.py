"""The pieces of `torch.jit` that model code (torchvision's, timm's) calls while running
normally, so it ports by renaming imports. Avalon has no TorchScript: `script` and `trace` say
what to use instead (`av.compile`, `av.trace`) rather than pretend."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from typing import Final as Final  # torch.jit.Final is typing.Final (timm's `fused_attn: Final[bool]` annotations)

F = TypeVar("F", bound=Callable[..., Any])


def is_scripting() -> bool:
    """Never: Avalon runs the Python code as written (and traces it under `av.compile`)."""
    return False


def is_tracing() -> bool:
    """torch.jit tracing never happens here (Avalon's own tracer needs no special casing)."""
    return False


def _same(fn: F) -> F:
    return fn


unused = ignore = export = _overload = _overload_method = script_if_tracing = _script_if_tracing = _same


def annotate(the_type: Any, the_value: Any) -> Any:
    return the_value


def script(obj: Any, *args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("avalon.jit.script: Avalon has no TorchScript; av.compile(fn) compiles a "
                              "function or model to kernels (and av.trace(fn, *args) shows its graph)")


def trace(obj: Any, *args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("avalon.jit.trace: Avalon has no TorchScript; av.trace(fn, *example_args) "
                              "records the graph and av.compile(fn) compiles it")
