"""canonicalize: fold constants, drop no-op ops, apply algebraic identities, compose shape ops.

Everything here is exact: a canonicalized graph computes bit-for-bit what the original computed under
the numpy reference (up to the sign of a zero for `x + 0`, which XLA and others accept too). Rules
that are not exact in IEEE arithmetic stay out: `x * 0 -> 0` is wrong for inf and nan, `x - x -> 0`
likewise, and `cast(cast(x))` loses precision in between.

Extension points, both keyed like every other rule table:
- `FOLD[op name]`: `fold(op, operands) -> Value | array | scalar | None`, MLIR's `fold` hook.
  `operands[i]` is operand i's constant array, or None when it is not a constant. Return an existing
  value to replace the op with, an array/scalar to replace it with a constant, or None to decline.
- `PATTERNS`: rewrite patterns (`Rule`s or `RewritePattern`s) applied next to the folds.
Ops whose operands are all constants are folded through the reference interpreter (`evaluate`),
so a folded constant holds exactly what the interpreter would have computed.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from avalon.ir import Graph, Op, TensorType, Value
from avalon.ir.registry import register_table

from .registry import register
from .rewriter import (
    P,
    RewritePattern,
    Rewriter,
    Rule,
    Var,
    apply_patterns,
    as_splat,
    constant_value,
    pattern,
    producer,
    splat_value,
)

FoldResult = Value | np.ndarray | int | float | bool | None
FoldFn = Callable[[Op, list[np.ndarray | None]], FoldResult]
FOLD: dict[str, FoldFn] = register_table("fold", {}, required=False)  # optional: most ops have no fold
MAX_FOLD_COMPUTE = 1 << 16  # never evaluate an op touching more elements than this while folding


def fold(*names: str):
    """Register `fn(op, operands) -> FoldResult` as the fold hook of each op in `names`."""
    def deco(fn):
        for n in names:
            FOLD[n] = fn
        return fn
    return deco


# -- per-op folds: ops that do nothing on these operands


@fold("reshape", "broadcast")
def _same_shape(op: Op, operands: list) -> FoldResult:
    x = op.operands[0]
    return x if x.shape == op.result.shape else None


@fold("cast")
def _same_dtype(op: Op, operands: list) -> FoldResult:
    x = op.operands[0]
    return x if x.dtype == op.attrs["dtype"] else None


@fold("transpose")
def _identity_perm(op: Op, operands: list) -> FoldResult:
    return op.operands[0] if list(op.attrs["perm"]) == list(range(len(op.attrs["perm"]))) else None


@fold("slice")
def _full_slice(op: Op, operands: list) -> FoldResult:
    x = op.operands[0]
    return x if x.shape == op.result.shape else None  # in-range slices keep a dim's size only by taking all of it


@fold("sum", "max")
def _no_axes(op: Op, operands: list) -> FoldResult:
    return op.operands[0] if not op.attrs["axes"] else None


@fold("cumsum")
def _single_element_axis(op: Op, operands: list) -> FoldResult:
    x = op.operands[0]
    return x if x.type.rank == 0 or x.shape[op.attrs["axis"] % x.type.rank] == 1 else None


@fold("concat")
def _single(op: Op, operands: list) -> FoldResult:
    return op.operands[0] if len(op.operands) == 1 else None


@fold("pad")
def _no_padding(op: Op, operands: list) -> FoldResult:
    return op.operands[0] if not any(op.attrs["low"]) and not any(op.attrs["high"]) else None


@fold("where")
def _known_condition(op: Op, operands: list) -> FoldResult:
    c, x, y = op.operands
    if x is y:
        return x
    cond = splat_value(c)
    if cond is None:
        return None
    return x if cond else y


# -- the folding pattern


def _evaluate(op: Op, arrays: list[np.ndarray], result_type: TensorType) -> np.ndarray:
    from avalon.ir import evaluate
    return evaluate(op.name, op.attrs, arrays, result_type)


def _has_reference(name: str) -> bool:
    from avalon.ir import REFERENCE
    return name in REFERENCE


class FoldPattern(RewritePattern):
    """Apply `FOLD` hooks, then fold ops whose operands are all constants.

    Splats stay cheap at any size: elementwise ops on splats are evaluated on one element, and shape
    ops of a splat give a splat. Other results are kept only when small (`max_elements`), so folding
    never bloats the IR with big dense constants.
    """

    benefit = 2

    def __init__(self, max_elements: int = 1024):
        self.max_elements = max_elements

    def applies_to(self, op: Op) -> bool:
        # an op without operands (iota) computes from its attributes: folding it would only trade an
        # index formula the backends fuse for a dense array they must load
        return (op.name != "constant" and bool(op.operands) and not op.regions and len(op.results) == 1
                and op.has_trait("pure"))

    def match_and_rewrite(self, op: Op, rw: Rewriter) -> bool:
        consts = [constant_value(v) for v in op.operands]
        hook = FOLD.get(op.name)
        if hook is not None:
            r = hook(op, consts)
            if r is not None and self._replace(op, r, rw):
                return True
        if any(c is None for c in consts) or not _has_reference(op.name):
            return False
        t = op.result.type
        splats = [splat_value(v) for v in op.operands]
        if op.operands and all(s is not None for s in splats):
            if op.has_trait("selects"):  # each result element is an operand element: a splat stays one
                return self._replace(op, _scalar(splats[0], op.operands[0]), rw)
            if op.has_trait("elementwise"):
                one = _evaluate(op, [np.asarray(s, dtype=v.dtype.np) for s, v in zip(splats, op.operands)],
                                TensorType((), t.dtype))
                return self._replace(op, one.item(), rw)
        if sum(math.prod(v.shape) for v in op.operands) + t.numel > MAX_FOLD_COMPUTE:
            return False
        return self._replace(op, _evaluate(op, consts, t), rw)

    def _replace(self, op: Op, r: FoldResult, rw: Rewriter) -> bool:
        t = op.result.type
        if isinstance(r, Value):
            if r.type != t:
                return False
            rw.replace_op(op, r)
            return True
        arr = np.asarray(r)
        if arr.size != 1 and as_splat(arr) is None and arr.size > self.max_elements:
            return False
        rw.replace_op(op, rw.constant(arr, t))
        return True


def _scalar(s: Any, v: Value) -> np.ndarray:
    return np.asarray(s, dtype=v.dtype.np)


# -- algebraic identities (exact in IEEE arithmetic, for every dtype; see the module docstring)

X = Var("x")
ALGEBRAIC = [
    Rule(P.mul(X, 1), X),
    Rule(P.div(X, 1), X),
    Rule(P.add(X, 0), X),
    Rule(P.sub(X, 0), X),
    Rule(P.pow(X, 1), X),
    Rule(P.neg(P.neg(X)), X),
    Rule(P.logical_not(P.logical_not(X)), X),
    Rule(P.maximum(X, X), X),
    Rule(P.minimum(X, X), X),
]


# -- shape op chains


def _replace_checked(op: Op, new: Value, rw: Rewriter) -> bool:
    """Replace `op` by `new` when the types agree (layouts included); otherwise undo `new`."""
    if new.type == op.result.type:
        rw.replace_op(op, new)
        return True
    if new.op is not None and not new.uses and new.op is not op:
        rw.erase_op(new.op)
    return False


@pattern("transpose")
def compose_transposes(op: Op, rw: Rewriter) -> bool:
    """transpose(transpose(x, p), q) -> transpose(x, [p[i] for i in q]); an identity perm vanishes."""
    inner = producer(op.operands[0], "transpose")
    if inner is None:
        return False
    p, q = inner.attrs["perm"], op.attrs["perm"]
    perm = [p[i] for i in q]
    src = inner.operands[0]
    new = src if perm == list(range(len(perm))) else rw.build("transpose", src, perm=perm)
    return _replace_checked(op, new, rw)


@pattern("transpose")
def transpose_of_matmul(op: Op, rw: Rewriter) -> bool:
    """transpose(a @ b) over the last two dims -> b^T @ a^T. The product is then computed in the
    order its users read it, and the operand transposes become strided reads inside the matmul's
    kernel instead of a copy of the result (the weight gradients of a linear layer)."""
    mm = producer(op.operands[0], "matmul")
    r = op.result.type.rank
    if mm is None or len(mm.result.uses) != 1 or op.attrs["perm"] != [*range(r - 2), r - 1, r - 2]:
        return False
    a, b = mm.operands
    perm = op.attrs["perm"]
    new = rw.build("matmul", rw.build("transpose", b, perm=perm), rw.build("transpose", a, perm=perm))
    return _replace_checked(op, new, rw)


@pattern("reshape")
def compose_reshapes(op: Op, rw: Rewriter) -> bool:
    """reshape(reshape(x)) -> reshape(x) (row-major order makes the middle shape irrelevant)."""
    inner = producer(op.operands[0], "reshape")
    if inner is None:
        return False
    src = inner.operands[0]
    new = src if src.shape == op.result.shape else rw.build("reshape", src, shape=list(op.result.shape))
    return _replace_checked(op, new, rw)


@pattern("broadcast")
def compose_broadcasts(op: Op, rw: Rewriter) -> bool:
    """broadcast(broadcast(x, s1), s2) -> broadcast(x, s2): stretching twice is stretching once."""
    inner = producer(op.operands[0], "broadcast")
    if inner is None:
        return False
    new = rw.build("broadcast", inner.operands[0], shape=list(op.result.shape))
    return _replace_checked(op, new, rw)


@pattern("constant")
def splat_dense_constants(op: Op, rw: Rewriter) -> bool:
    """A dense constant whose elements are all equal is written as a splat (shorter, and foldable)."""
    v = op.attrs["value"]
    if not isinstance(v, np.ndarray) or v.size <= 1:
        return False
    s = splat_value(op.result)
    if s is None:
        return False
    rw.replace_op(op, rw.constant(s, op.result.type))
    return True


PATTERNS: list[RewritePattern] = [*ALGEBRAIC, compose_transposes, transpose_of_matmul, compose_reshapes,
                                  compose_broadcasts, splat_dense_constants]


@register("canonicalize")
@dataclass
class Canonicalize:
    """Fold constants, remove no-op ops, apply exact algebraic identities and compose shape-op chains."""

    name = "canonicalize"
    version = 1
    max_fold_elements: int = 1024
    max_iterations: int = 10

    def run(self, graph: Graph) -> bool:
        patterns = [FoldPattern(self.max_fold_elements), *PATTERNS]
        return apply_patterns(graph, patterns, max_iterations=self.max_iterations)
