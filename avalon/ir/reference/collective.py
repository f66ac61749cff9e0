"""The reference rules of `all_reduce` and `all_gather`, and the hook that connects them to a process group.

`avalon.ir` may not import `torch.distributed` (nor `avalon.distributed`, a layer above it), so the
rule asks a hook that `avalon.distributed.init()` installs (`set_collective`). With no hook, or a
group of one process, the op is the identity, which is also what makes every graph holding it
interpretable, testable and differentiable on one machine. Backends that keep tensors in torch
storage (Triton) call `collective()` directly to reduce in place, on the device.

`all_gather` records the group's size when it is traced (its `world_size` attribute: the result's
dim 0 is world_size * the operand's); the hook must have that size when the op runs. Its gradient
needs this process's rank (`rank`), which the VJP rule asks the hook for, so a differentiated graph
is specific to its rank, as each process traces its own.
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

    def rank(self, group: str) -> int:
        """This process's rank in the group (all_gather's gradient takes its slice)."""

    def all_gather_array(self, x: np.ndarray, group: str) -> np.ndarray:
        """A new array: every process's `x` (same shape and dtype) concatenated along axis 0, in rank order."""

    def all_gather_tensor_(self, out: Any, x: Any, group: str) -> None:
        """Write every process's contiguous torch tensor `x` into the contiguous `out` (dim 0 =
        world size * x's), in rank order (torch.distributed.all_gather_into_tensor)."""


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


@rule("all_gather")
def _all_gather(attrs: dict, x: np.ndarray) -> np.ndarray:
    hook, n = _HOOK, attrs["world_size"]
    have = 1 if hook is None else hook.world_size(attrs["group"])
    if have != n:
        raise RuntimeError(f"all_gather: traced for a group of {n} process(es), run in one of {have}; trace it "
                           "again in this group")
    if n == 1:
        return np.array(x, copy=True)
    return hook.all_gather_array(x, attrs["group"])
