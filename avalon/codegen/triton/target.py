"""The Triton backend's `Target`: the kernel kinds it emits, each with its emitter.

`build_kernel` picks the emitter from `TRITON.classify`, the same answer the fusion policy reads
when the pipeline runs for this backend, so the policy never makes a group no emitter takes by
design (an emitter may still refuse a detail; the group then runs one kernel per op, with a warning).
Attention comes first: it claims only groups no other kind takes (two matmuls and a softmax).
"""
from __future__ import annotations

from collections.abc import Callable

from avalon.passes.target import Target

from .attention import build_attention
from .attention_bwd import build_attention_bwd
from .contraction import build_contraction
from .pointwise import build_pointwise
from .reduction import build_reduction

EMITTERS: dict[str, Callable] = {
    "attention": build_attention,
    "attention_bwd": build_attention_bwd,
    "contraction": build_contraction,
    "reduction": build_reduction,
    "pointwise": build_pointwise,
}
"""Kernel kind -> `emit(group, input strides, output strides, block policy) -> Kernel`."""

TRITON = Target("triton", kinds=tuple(EMITTERS), memory_plan=True)
