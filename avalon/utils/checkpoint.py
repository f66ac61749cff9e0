"""`torch.utils.checkpoint` for ported code: activation checkpointing as a plain call.

Avalon's answer to "store less for the backward" is a pass, not a wrapper: `fuse` recomputes cheap
intermediates in the backward instead of storing them (`avalon.passes.remat`). So `checkpoint(fn,
*args)` runs `fn(*args)` and returns its result, with the same values and gradients as torch's;
what is stored between forward and backward is the compiler's choice, visible in `inspect`."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def checkpoint(function: Callable, *args: Any, use_reentrant: bool | None = None,
               context_fn: Any = None, determinism_check: str = "default", debug: bool = False,
               preserve_rng_state: bool = True, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` (torch's options are accepted; see the module docstring)."""
    return function(*args, **kwargs)


def checkpoint_sequential(functions: Sequence[Callable] | Any, segments: int, input: Any,
                          use_reentrant: bool | None = None, **kwargs: Any) -> Any:
    """Run a Sequential (or a list of modules) on `input`, as torch's does; `segments` is accepted."""
    if segments < 1:
        raise ValueError(f"checkpoint_sequential: segments must be at least 1, got {segments}")
    for f in (list(functions) if not callable(functions) or hasattr(functions, "__iter__") else [functions]):
        input = f(input)
    return input
