"""The reference rule of `all_reduce`, and the hook that connects it to a process group.

`avalon.ir` may not import `torch.distributed` (nor `avalon.distributed`, a layer above it), so the
rule asks a hook that `avalon.distributed.init()` installs (`set_collective`). With no hook, or a
group of one process, the op is the identity, which is also what makes every graph holding it
interpretable, testable and differentiable on one machine. Backends that keep tensors in torch
storage (Triton) call `collective()` directly to reduce in place, on the device.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .core import rule


class Collective(Protocol):
    """What a process group offers the IR: the all-reduce of an array and of torch storage."""

    def world_size(self, group: str) -> int: ...

    def all_reduce_array(self, x: np.ndarray, reduction: str, group: str) -> np.ndarray:
        """A new array: `x` reduced over the group (the caller's array is not written)."""

    def all_reduce_tensor_(self, x: Any, reduction: str, group: str) -> None:
        """Reduce a contiguous torch tensor over the group, in place."""


_HOOK: Collective | None = None


def set_collective(hook: Collective | None) -> Collective | None:
    """Install the process group behind `all_reduce` (None: the identity); returns the previous one."""
    global _HOOK
    old, _HOOK = _HOOK, hook
    return old


def collective() -> Collective | None:
    """The installed hook, or None when `all_reduce` is the identity (one process)."""
    return _HOOK


@rule("all_reduce")
def _all_reduce(attrs: dict, x: np.ndarray) -> np.ndarray:
    hook = _HOOK
    if hook is None or hook.world_size(attrs["group"]) == 1:
        return np.array(x, copy=True)
    return hook.all_reduce_array(x, attrs["reduction"], attrs["group"])
