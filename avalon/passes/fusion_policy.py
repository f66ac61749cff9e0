"""The fusion policy: which ops may share a kernel, and which pairs to try first.

The `fuse` pass (`fuse.py`) owns the mechanics that are the same for every policy: it proposes
producer/consumer pairs, keeps groups acyclic and under `max-ops`, spends fuel, logs and builds the
`fusion` ops. Everything that is a *judgement* lives here, in one replaceable object:

* `inlinable(op)`: cheap producers (splat constants, broadcasts, reshapes, transposes) that are
  cloned into every group reading them, so a kernel reads the small operand with stride 0 instead
  of a materialized broadcast;
* `can_fuse(group, other) -> Decision`: may these two groups become one kernel? A refusal carries
  the reason that the pass logs on `avalon.fusion`;
* `can_inline(group, op) -> Decision`: is it worth making a lone op a group of one, only to read an
  inlinable producer through index math?
* `score(producer, consumer, nbytes)`: which candidate pairs are tried first (a tuple, larger first).

The default policy only makes groups the Triton backend compiles as ONE kernel
(`avalon/codegen/triton/compiler.py:build_kernel`):

* a *contraction* kernel: exactly one matmul/conv (any of the conv2d forms), no reduction, every
  output one element per element of the contraction result. Ops that read the contraction result
  must be elementwise on its shape (the epilogue runs on the accumulator tile); its operands may
  only be index math over group inputs (a transposed weight is a strided read, but a computed
  prologue would be recomputed for every output tile);
* a *reduction* kernel: every reduction reduces the same shape over the same axes, outputs have one
  element per row or per (row, reduced element), and values computed from a reduction are read back
  along their own row (elementwise ops, keepdims reshapes, a broadcast back over the reduced axes);
* a *pointwise* kernel: every output has the same number of elements.

Pooling ops (and their gradients) read windows, so they join a group only when their operands come
from outside it (their producer would otherwise be recomputed for every window tap); what consumes
them fuses after them. Register another policy with `register_policy`, select it with
`fuse{policy=name}`, or replace the default with `avalon.passes.fuse.set_policy`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from avalon.ir import OPS, Op, Value

# ops that only move or replicate elements: fusable anywhere as index math
INDEX_OPS = frozenset({"broadcast", "reshape", "transpose", "slice", "pad", "concat"})
# traits whose ops the default policy fuses
FUSABLE_TRAITS = ("elementwise", "reduction", "contraction", "pool", "gather", "random")


@dataclass(frozen=True)
class Decision:
    """The answer to "may these fuse?": `ok`, and `reason` (why not, or what kernel it makes)."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def has_trait(op: Op, trait: str) -> bool:
    """`op.has_trait`, without its import on every call (the pass asks this very often)."""
    d = OPS.get(op.name)
    return d is not None and trait in d.traits


def is_splat_constant(op: Op) -> bool:
    return op.name == "constant" and np.asarray(op.attrs["value"]).size == 1


def is_dense_constant(op: Op) -> bool:
    return op.name == "constant" and not is_splat_constant(op)


class FusionGroup:
    """A group as the policy sees it: `ops`, the member ops (top-level ops of the graph, in program
    order); `inlined`, the inlinable producers the group would clone; `inputs`, the values it reads
    from outside; `outputs`, member values used outside it (graph outputs included). A lone op is a
    group of one (`group.op`). Groups are built by the pass; `union` merges two of them."""

    def __init__(self, ops: Iterable[Op], order: dict[Op, int], inlinable: Callable[[Op], bool],
                 fused: bool = False):
        self.order = order
        self.is_inlinable = inlinable
        self.ops: list[Op] = sorted(set(ops), key=order.__getitem__)
        self.members = frozenset(self.ops)
        self.fused = fused or len(self.ops) > 1  # becomes a fusion op (a lone op may, to inline producers)

    def union(self, other: FusionGroup) -> FusionGroup:
        return FusionGroup(self.ops + other.ops, self.order, self.is_inlinable, fused=True)

    @property
    def op(self) -> Op:
        """The only op of a group of one."""
        if len(self.ops) != 1:
            raise ValueError(f"a group of {len(self.ops)} ops has no single op")
        return self.ops[0]

    def _clonable(self, op: Op | None) -> bool:
        return op is not None and op not in self.members and op in self.order and self.is_inlinable(op)

    @cached_property
    def inlined(self) -> list[Op]:
        """Inlinable producers (transitively) of member operands, cloned into the region."""
        found: dict[Op, None] = {}
        stack = [v.op for m in self.ops for v in m.operands]
        while stack:
            p = stack.pop()
            if self._clonable(p) and p not in found:
                found[p] = None
                stack.extend(v.op for v in p.operands)
        return sorted(found, key=self.order.__getitem__) if self.fused else []

    @cached_property
    def region_ops(self) -> list[Op]:
        """Members and inlined producers in program order: the ops the region will hold."""
        return sorted(self.ops + self.inlined, key=self.order.__getitem__)

    @cached_property
    def inputs(self) -> list[Value]:
        inside = set(self.region_ops)
        seen: dict[Value, None] = {}
        for op in self.region_ops:
            for v in op.operands:
                if v.op not in inside:
                    seen.setdefault(v, None)
        return list(seen)

    def used_outside(self, v: Value) -> bool:
        """Read by an op outside the group (looking through inlinable ops, which are cloned)."""
        for user, _ in v.uses:
            if user.parent is None or user not in self.order:
                return True  # the graph's return (or an op the pass does not know)
            if user in self.members:
                continue
            if self.is_inlinable(user):
                if any(self.used_outside(r) for r in user.results):
                    return True
                continue
            return True
        return False

    @cached_property
    def outputs(self) -> list[Value]:
        return [r for op in self.ops for r in op.results if self.used_outside(r)]

    @property
    def size(self) -> int:
        """Ops the region would hold (what `max-ops` limits)."""
        return len(self.ops) + len(self.inlined)

    def with_trait(self, trait: str) -> list[Op]:
        return [op for op in self.ops if has_trait(op, trait)]

    @property
    def op_names(self) -> list[str]:
        return [op.name for op in self.ops]

    def __repr__(self) -> str:
        return f"<FusionGroup {'+'.join(self.op_names)}>"


def reduced_axes(op: Op) -> tuple[int, ...]:
    rank = op.operands[0].type.rank
    axes = op.attrs["axes"] if "axes" in op.attrs else [op.attrs["axis"]]
    return tuple(sorted(a % rank for a in axes)) if rank else ()


def _depends_on(region: Sequence[Op], roots: set[Op]) -> set[Op]:
    """Region ops that read (transitively, inside the region) a result of `roots`."""
    dep: set[Op] = set()
    for op in region:
        if op in roots or any(v.op in roots or v.op in dep for v in op.operands):
            dep.add(op)
    return dep


class FusionPolicy:
    """The default policy (see the module docstring). Subclass it and override what you want.

    `epilogue=False` keeps matmuls and convolutions out of groups; `reductions=False` keeps
    reductions out of groups (both are `fuse` options)."""

    name = "default"

    def __init__(self, *, epilogue: bool = True, reductions: bool = True):
        self.epilogue = epilogue
        self.reductions = reductions

    # -- what may join a group ----------------------------------------------------------------------
    def inlinable(self, op: Op) -> bool:
        """Cheap producers cloned into every group that reads them."""
        return op.name in ("broadcast", "reshape", "transpose") or is_splat_constant(op)

    def op_veto(self, op: Op) -> str | None:
        """Why `op` can never be in a group (None: it can)."""
        if op.regions:
            return "it is already a fused group"
        if has_trait(op, "contraction") and not self.epilogue:
            return "contraction fusion is off (epilogue=false)"
        if has_trait(op, "reduction") and not self.reductions:
            return "reduction fusion is off (reductions=false)"
        if op.name in INDEX_OPS or any(has_trait(op, t) for t in FUSABLE_TRAITS):
            return None
        return f"'{op.name}' has no fusable trait"

    def can_fuse(self, group: FusionGroup, other: FusionGroup) -> Decision:
        """May `group` and `other` become one kernel? (max-ops and cycles are the pass's checks.)"""
        for g in (other, group):
            for op in g.ops:
                why = self.op_veto(op)
                if why:
                    return Decision(False, why)
        merged = group.union(other)
        why = self.kernel_problem(merged)
        return Decision(False, why) if why else Decision(True, f"{self.kernel_kind(merged)} kernel")

    def can_inline(self, group: FusionGroup, op: Op) -> Decision:
        """Make the lone op of `group` a fusion group just to clone its producer `op` into it?"""
        if op.name == "reshape":
            return Decision(False, "a reshape is a free view; nothing to save")
        why = self.op_veto(group.op)
        if why:
            return Decision(False, why)
        fused = FusionGroup(group.ops, group.order, group.is_inlinable, fused=True)
        why = self.kernel_problem(fused)
        return Decision(False, why) if why else Decision(True, f"{self.kernel_kind(fused)} kernel")

    def score(self, producer: FusionGroup, consumer: FusionGroup, nbytes: int) -> tuple:
        """Larger first: epilogues of contractions, then row patterns around reductions, then
        pointwise chains; within a tier, the pair that saves the most memory traffic."""
        if producer.with_trait("contraction") and not consumer.with_trait("contraction"):
            tier = 3
        elif producer.with_trait("reduction") or consumer.with_trait("reduction"):
            tier = 2
        else:
            tier = 1
        return (tier, nbytes)

    # -- the backend's kernel shapes ------------------------------------------------------------------
    def kernel_kind(self, g: FusionGroup) -> str:
        if g.with_trait("contraction"):
            return "contraction"
        return "reduction" if g.with_trait("reduction") else "pointwise"

    def kernel_problem(self, g: FusionGroup) -> str | None:
        """Why `g` cannot be one kernel (None: it can)."""
        region = g.region_ops
        for op in g.with_trait("pool"):
            if any(self._computed(v, g) for v in op.operands):
                return f"'{op.name}' reads windows of a value computed in the group (it would be recomputed per tap)"
        cons, reds = g.with_trait("contraction"), g.with_trait("reduction")
        if len(cons) > 1:
            names = ", ".join(o.name for o in cons)
            return f"a kernel holds one contraction, the group would hold {len(cons)} ({names})"
        if cons and reds:
            return f"a contraction ('{cons[0].name}') and a reduction ('{reds[0].name}') cannot share a kernel"
        if cons:
            return self._contraction_problem(g, cons[0], region)
        if reds:
            return self._reduction_problem(g, reds, region)
        sizes = {o.type.numel for o in g.outputs}
        if len(sizes) > 1:
            return "pointwise outputs differ in element count (" + ", ".join(str(o.type) for o in g.outputs) + ")"
        return None

    def _computed(self, v: Value, g: FusionGroup) -> bool:
        """Is `v` computed inside the group (not just index math over its inputs)?"""
        p = v.op
        if p is None or (p not in g.members and p not in g.inlined):
            return False
        if p.name in INDEX_OPS or p.name == "constant":
            return any(self._computed(x, g) for x in p.operands)
        return True

    def _contraction_problem(self, g: FusionGroup, c: Op, region: list[Op]) -> str | None:
        for v in c.operands:
            if self._computed(v, g):
                return f"the operands of '{c.name}' must be group inputs (computed prologues are not fused)"
        shape = c.results[0].shape
        for op in _depends_on(region, {c}):
            if op is c:
                continue
            if not has_trait(op, "elementwise") or op.results[0].shape != shape:
                return f"'{op.name}' reads the '{c.name}' result at another index (epilogues are elementwise)"
        n = c.results[0].type.numel
        for o in g.outputs:
            if o.type.numel != n:
                return f"output {o.type} of a '{c.name}' group must have one element per result element"
        return None

    def _reduction_problem(self, g: FusionGroup, reds: list[Op], region: list[Op]) -> str | None:
        first = reds[0]
        full = first.operands[0].shape
        axes = reduced_axes(first)
        for r in reds[1:]:
            if r.operands[0].shape != full or reduced_axes(r) != axes:
                return (f"'{r.name}' reduces {r.operands[0].type} over {list(reduced_axes(r))}, the group reduces "
                        f"{first.operands[0].type} over {list(axes)}")
        kept = tuple(s for d, s in enumerate(full) if d not in axes)
        keep = tuple(1 if d in axes else s for d, s in enumerate(full))
        rows, per_row = math.prod(kept), math.prod(full)
        for o in g.outputs:
            if o.type.numel not in (rows, per_row):
                return f"output {o.type} has neither one element per row ({rows}) nor per row element ({per_row})"
        prefix = axes == tuple(range(len(axes)))
        row_shapes = {kept, keep}
        for op in _depends_on(region, set(reds)):
            if has_trait(op, "reduction"):
                continue
            src = op.operands[0].shape if op.operands else ()
            out = op.results[0].shape
            if has_trait(op, "elementwise") and out in row_shapes | {full}:
                continue
            if op.name == "reshape" and src in row_shapes and out in row_shapes:
                continue
            if op.name == "broadcast" and out == full and (src == keep or (src == kept and prefix)):
                continue
            return f"'{op.name}' reads a reduced value off its row (only elementwise ops and broadcasts back fuse)"
        return None


POLICIES: dict[str, Callable[..., FusionPolicy]] = {"default": FusionPolicy}


def register_policy(name: str, factory: Callable[..., FusionPolicy]) -> None:
    """Make `fuse{policy=name}` use `factory(epilogue=..., reductions=...)` (a FusionPolicy subclass works)."""
    POLICIES[name] = factory


def make_policy(name: str = "default", **options) -> FusionPolicy:
    """The policy registered as `name`, built with the `fuse` pass's options."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown fusion policy '{name}'; known: {', '.join(sorted(POLICIES))}") from None
    return factory(**options)
