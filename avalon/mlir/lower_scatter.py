"""Linalg lowering of `index_add` and `index_max`: upstream MLIR has no scatter that IREE compiles well
(`tensor.scatter` is unimplemented in bufferization, `iree_linalg_ext.scatter` is not upstream, and
the "linalg" dialect promises upstream ops only), so it is lowered as the one-hot matmul that
`take`'s gradient used to be: onehot(idx, size)^T @ values, built as primitives for the operands'
types, then lowered op by op through this table. 2*K*M*D flops where the Triton and numpy backends
do M*D adds; an index outside [0, size) adds nothing (its one-hot row is zero), as `take` clamps, unless the
caller asked for index checks (`lower_gather.check_bounds`; the IREE backend does).
`index_max` is the same one-hot selecting with `where` (-inf elsewhere) and a max over the M rows:
an (size, M, D) intermediate, fine for the small graphs IREE is checked on.
"""
from __future__ import annotations

import math

from avalon.ir import Builder, Graph, Op, TensorType

from .emitter import LinalgEmitter, V
from .linalg import lower_block, rule
from .lower_gather import check_bounds


def one_hot_form(vals: TensorType, idx: TensorType, size: int) -> Graph:
    """The graph (values, idx) -> onehot(idx, size)^T @ values, shaped (size, *rest)."""
    g = Graph("index_add_one_hot")
    b = Builder(g)
    v, i = g.add_input(vals, "values"), g.add_input(idx, "idx")
    m, rest = vals.shape[0], list(vals.shape[1:])
    hot = b("one_hot", i, num_classes=size, dtype=vals.dtype)  # (M, K)
    flat = v if len(rest) == 1 else b("reshape", v, shape=[m, math.prod(rest)])
    out = b("matmul", b("transpose", hot, perm=[1, 0]), flat)  # (K, D)
    g.set_outputs([out if len(rest) == 1 else b("reshape", out, shape=[size] + rest)])
    return g


def one_hot_max_form(vals: TensorType, idx: TensorType, size: int) -> Graph:
    """The graph (values, idx) -> max over m of where(onehot[m, k], values[m], -inf), shaped (size, *rest)."""
    g = Graph("index_max_one_hot")
    b = Builder(g)
    v, i = g.add_input(vals, "values"), g.add_input(idx, "idx")
    m, rest = vals.shape[0], list(vals.shape[1:])
    d = math.prod(rest)
    hot = b("transpose", b("one_hot", i, num_classes=size, dtype="i1"), perm=[1, 0])  # (K, M)
    sel = b("broadcast", b("reshape", hot, shape=[size, m, 1]), shape=[size, m, d])
    flat = b("broadcast", b("reshape", v, shape=[1, m, d]), shape=[size, m, d])
    low = b.constant(float("-inf"), (size, m, d), vals.dtype)
    out = b("max", b("where", sel, flat, low), axes=[1])  # (K, D)
    g.set_outputs([b("reshape", out, shape=[size] + rest) if rest != [d] else out])
    return g


def _unchecked(e: LinalgEmitter, g: Graph, args: list[V]) -> list[V]:
    """`g` lowered without checking its one-hot's indices again (the caller checked them, naming its op)."""
    saved, e.checks = e.checks, None
    try:
        return lower_block(e, g.body, args)
    finally:
        e.checks = saved


@rule("index_max")
def _index_max(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    vals, idx = args
    check_bounds(e, idx, op.attrs["size"], op)
    return _unchecked(e, one_hot_max_form(vals.t, idx.t, op.attrs["size"]), [vals, idx])


@rule("index_add")
def _index_add(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    vals, idx = args  # (f16/bf16 arrive widened to f32 and the result is rounded back once)
    check_bounds(e, idx, op.attrs["size"], op)
    return _unchecked(e, one_hot_form(vals.t, idx.t, op.attrs["size"]), [vals, idx])
