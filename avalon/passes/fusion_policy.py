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

Whether a group can be ONE kernel is not the policy's to say: it asks the backend's `Target`
(`avalon.passes.target`), whose kernel kinds (contraction, reduction, pointwise for the default and
Triton targets) the backend's code generator dispatches on as well, so the two cannot disagree.
Register another policy with `register_policy`, select it with
`fuse{policy=name}`, or replace the default with `avalon.passes.fuse.set_policy`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from avalon.ir import Op, Value
from avalon.ir.fusion import is_splat_constant

from .target import DEFAULT_TARGET, KERNEL_KINDS, KernelGroup, Kind, Target, has_trait

# traits whose ops the default policy fuses (movement ops are index math, fusable anywhere)
FUSABLE_TRAITS = ("movement", "elementwise", "reduction", "contraction", "pool", "gather", "random")


@dataclass(frozen=True)
class Decision:
    """The answer to "may these fuse?": `ok`, and `reason` (why not, or what kernel it makes)."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


MAX_RECOMPUTE = 8
"""Index maps one member of a group may be computed at (`FusionGroup.recompute`): a few shifted
reads are cheaper recomputed than stored; chains of them grow exponentially."""


def inlinable(op: Op) -> bool:
    """Cheap producers cloned into every group reading them: ops that select elements of their
    operand (broadcasts, reshapes, transposes, slices), splat constants and index math over iotas
    (`generated`). A slice read through
    index math moves the bytes its consumer needs, no more; materialized, it is one more kernel
    that writes them and another that reads them back (GPT's q, k and v, cut from one
    projection)."""
    if is_splat_constant(op):
        return True
    return has_trait(op, "selects") or generated(op)


def generated(op: Op, depth: int = 8) -> bool:
    """Computed from nothing but iotas and splat constants (a causal mask: `not(j - i <= 0)`): index
    math any kernel recomputes for free. Materialized, GPT's [T, T] mask was one more kernel, and the
    attention kernels read it as a tensor instead of recognizing the causal pattern (which skips
    the blocks above the diagonal)."""
    if op.name == "iota" or is_splat_constant(op):
        return True
    if depth == 0 or op.regions or has_trait(op, "random") or not (
            has_trait(op, "elementwise") or has_trait(op, "selects")):
        return False
    return all(v.op is not None and generated(v.op, depth - 1) for v in op.operands)


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
        # the last union is kept: the policy's `can_fuse` and the pass both ask for it, each merge tried
        last = self.__dict__.get("_union")
        if last is not None and last[0] is other:
            return last[1]
        merged = FusionGroup(self.ops + other.ops, self.order, self.is_inlinable, fused=True)
        self.__dict__["_union"] = (other, merged)
        return merged

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
    def recompute(self) -> tuple[int, Op | None]:
        """The most index maps at which one member must be computed per element, and that member.
        A kernel holds no member value in memory: a member read through a slice or pad (`x[i-1]`
        beside `x[i]`) is recomputed at each map, and a chain of such shifts multiplies them (a
        cumprod by doubling steps became one 6,000-line kernel computing every prefix again)."""
        maps: dict[Op, set[tuple]] = {}
        worst, at = 1, None
        members, clonable = self.members, self._clonable
        for op in reversed(self.ops):  # users before producers
            mine = maps.get(op) or {()}
            for v in op.operands:
                chain, p = [], v.op
                while clonable(p) and len(p.operands) == 1:
                    chain.append(id(p))
                    p = p.operands[0].op
                if p in members:
                    got = maps.setdefault(p, set())
                    got.update(m + tuple(chain) for m in mine)
                    if len(got) > 64:  # far past any limit: stop growing
                        return len(got), p
                    if len(got) > worst:
                        worst, at = len(got), p
        return worst, at

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

    def kernel_group(self) -> KernelGroup:
        """The group as a target classifies it: its region's ops and its outputs."""
        return KernelGroup.of(self.region_ops, self.outputs)

    @property
    def op_names(self) -> list[str]:
        return [op.name for op in self.ops]

    def __repr__(self) -> str:
        return f"<FusionGroup {'+'.join(self.op_names)}>"


class FusionPolicy:
    """The default policy (see the module docstring). Subclass it and override what you want.

    `epilogue=False` keeps matmuls and convolutions out of groups; `reductions=False` keeps
    reductions out of groups (both are `fuse` options). `target` says which groups are one kernel
    (the `fuse` pass sets the pipeline's target)."""

    name = "default"

    def __init__(self, *, epilogue: bool = True, reductions: bool = True, target: Target | None = None):
        self.epilogue = epilogue
        self.reductions = reductions
        self.target = target or DEFAULT_TARGET

    # -- what may join a group ----------------------------------------------------------------------
    def inlinable(self, op: Op) -> bool:
        """Cheap producers cloned into every group that reads them."""
        return inlinable(op)

    def op_veto(self, op: Op) -> str | None:
        """Why `op` can never be in a group (None: it can)."""
        if op.regions:
            return "it is already a fused group"
        if has_trait(op, "contraction") and not self.epilogue:
            return "contraction fusion is off (epilogue=false)"
        if has_trait(op, "reduction") and not self.reductions:
            return "reduction fusion is off (reductions=false)"
        if any(has_trait(op, t) for t in FUSABLE_TRAITS):
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
        n, op = merged.recompute
        if n > MAX_RECOMPUTE:
            return Decision(False, f"one kernel would compute '{op.name}' at {n} different index maps per "
                                   f"element (read through shifts of shifts; max {MAX_RECOMPUTE})")
        kind = self.classify(merged)
        return Decision(bool(kind), kind.reason)

    def can_inline(self, group: FusionGroup, op: Op) -> Decision:
        """Make the lone op of `group` a fusion group just to clone its producer `op` into it?"""
        if op.name == "reshape":
            return Decision(False, "a reshape is a free view; nothing to save")
        why = self.op_veto(group.op)
        if why:
            return Decision(False, why)
        kind = self.classify(FusionGroup(group.ops, group.order, group.is_inlinable, fused=True))
        return Decision(bool(kind), kind.reason)

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

    def prepare(self, graph) -> None:
        """Let the target's kinds rewrite what their patterns need first (the attention backward
        recomputes the forward's probabilities instead of storing them)."""
        for name in self.target.kinds:
            prep = getattr(KERNEL_KINDS[name], "prepare", None)
            if prep is not None:
                prep(graph)

    def seed_groups(self, ops: Sequence[Op]) -> Iterator[tuple[list[Op], Decision]]:
        """Whole patterns that the target's kinds find in `ops` (top-level, program order) and that
        the pass outlines before greedy fusion (attention: no pair on the way to it is a kernel).
        Each comes with the decision: fuse it, or why not."""
        order = {op: i for i, op in enumerate(ops)}
        for name in self.target.kinds:
            find = getattr(KERNEL_KINDS[name], "find", None)
            if find is None:
                continue
            for members, why in find(ops, self.inlinable):
                if why is not None:
                    yield members, Decision(False, why)
                    continue
                veto = next((w for w in map(self.op_veto, members) if w), None)
                if veto:
                    yield members, Decision(False, veto)
                    continue
                kind = self.classify(FusionGroup(members, order, self.inlinable, fused=True))
                yield members, Decision(bool(kind) and kind.name == name, kind.reason)

    # -- the backend's kernel shapes ------------------------------------------------------------------
    def classify(self, g: FusionGroup) -> Kind:
        """The kernel kind the target would compile `g` as, or why it cannot be one kernel."""
        return self.target.classify(g.kernel_group())

    def kernel_problem(self, g: FusionGroup) -> str | None:
        """Why `g` cannot be one kernel (None: it can)."""
        kind = self.classify(g)
        return None if kind else kind.reason


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
