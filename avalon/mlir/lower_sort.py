"""Linalg lowering of `sort` and `argsort`: upstream MLIR has no sort op (IREE's
`iree_linalg_ext.sort` is not upstream, and the "linalg" dialect promises upstream ops only), so
each is lowered as the bitonic network of primitives that `avalon.ops.sorting.bitonic_sort`
builds for axes too long for the Triton kernel: traced for the operand's type, then lowered op by
op through this table. Same order as the reference (stable, nan largest, descending stable), every
op in it an upstream linalg.generic; O(n log^2 n) work, which IREE compiles like any other graph.
"""
from __future__ import annotations

import numpy as np

from avalon.ir import Op, TensorType

from .emitter import LinalgEmitter, V
from .linalg import lower_block, rule


@rule("sort", "argsort")
def _sort(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    from avalon.ops.sorting import bitonic_sort
    from avalon.trace import trace

    x = args[0]  # (f16/bf16 arrive widened to f32 and the result is rounded back: exact for a permutation)
    ax, desc = op.attrs["axis"] % x.t.rank, op.attrs["descending"]
    pick = 0 if op.name == "sort" else 1
    network = trace(lambda a: bitonic_sort(a, ax, desc)[pick], np.zeros(x.t.shape, x.d.np))
    return lower_block(e, network.body, [x])
