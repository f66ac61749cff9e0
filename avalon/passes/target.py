"""`Target`: what a backend can do, in one object the passes read instead of knowing the backend.

* `classify(group)`: the kernel kind a group would be compiled as, and why one kernel of that kind
  cannot (or should not) compute it. The fusion policy refuses what this refuses (logging the
  reason) and a backend's code generator picks its emitter from the same answer, so the two cannot
  disagree;
* `is_view(op)`: a top-level op that moves no data under its types' layouts (the backend aliases its
  result to its operand's storage; the memory plan counts on it);
* `reads_strided(op)`: an op whose kernels load operands through strides (any layout is fine);
* `memory_plan`: whether the backend wants the `memory-plan` pass's buffer plan.

Kernel kinds are registered once (`KERNEL_KINDS`, `register_kind`) and a Target lists the ones it
emits, in the order they are asked: the first kind that `claims` a group decides, through its
`issues`, whether one kernel of that kind can (and should) compute it. A new kind (attention, scan) or a new
backend (a CPU code generator, an MLIR lowering) plugs in here without editing any pass.

Classification reads a neutral view of a group (`KernelGroup`): the region's ops in program order,
the values it yields, and which ops are inside; the fusion pass and the backends each build one.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

from avalon.ir import OPS, Op, Value


def has_trait(op: Op, trait: str) -> bool:
    """`op.has_trait`, without its import on every call (the passes ask this very often)."""
    d = OPS.get(op.name)
    return d is not None and trait in d.traits


@dataclass(frozen=True)
class KernelGroup:
    """A group as a kernel sees it: `ops` (the region's ops in program order, cheap producers cloned
    into it included), `outputs` (the values it yields) and `inside` (the ops it holds)."""

    ops: Sequence[Op]
    outputs: Sequence[Value]
    inside: Collection[Op]

    @classmethod
    def of(cls, ops: Sequence[Op], outputs: Sequence[Value]) -> KernelGroup:
        return cls(ops, outputs, frozenset(ops))

    def with_trait(self, trait: str) -> list[Op]:
        return [op for op in self.ops if has_trait(op, trait)]

    def computed(self, v: Value) -> bool:
        """Is `v` computed inside the group (not just index math over its inputs)?"""
        p = v.op
        if p is None or p not in self.inside:
            return False
        if has_trait(p, "movement") or not p.operands:
            return any(self.computed(x) for x in p.operands)
        return True


@dataclass(frozen=True)
class Issue:
    """Why one kernel should not compute a group: it cannot (`waste` False), or it can but would
    recompute work per tile or per window tap (`waste` True)."""

    text: str
    waste: bool = False


@dataclass(frozen=True)
class Kind:
    """The answer of `Target.classify`: `name`, the kind that claims the group (None: no kind
    does), and its `issues` in the order they are checked. The fusion policy wants none; a code
    generator handed a group anyway (by hand, by another policy) only refuses a non-waste one."""

    name: str | None
    issues: tuple[Issue, ...] = ()

    @property
    def ok(self) -> bool:
        return self.name is not None and not self.issues

    @property
    def problem(self) -> str | None:
        """Why no kernel of this kind can compute the group (None: one can, maybe wastefully)."""
        if self.name is None:
            return self.reason
        return next((i.text for i in self.issues if not i.waste), None)

    @property
    def reason(self) -> str:
        return self.issues[0].text if self.issues else f"{self.name} kernel"

    def __bool__(self) -> bool:
        return self.ok


class KernelKind:
    """One shape of kernel. `claims(g)`: is this the kind a group like `g` would be (by its ops'
    traits)? `issues(g)`: why one kernel of this kind cannot or should not compute `g`."""

    name = ""

    def claims(self, g: KernelGroup) -> bool:
        raise NotImplementedError

    def issues(self, g: KernelGroup) -> Iterator[Issue]:
        yield from window_issues(g)


def window_issues(g: KernelGroup) -> Iterator[Issue]:
    """Ops reading windows of a value computed in the group would recompute it for every tap."""
    for op in g.with_trait("pool"):
        if any(g.computed(v) for v in op.operands):
            yield Issue(f"'{op.name}' reads windows of a value computed in the group (it would be recomputed "
                        "per tap)", waste=True)


def reduced_axes(op: Op) -> tuple[int, ...]:
    rank = op.operands[0].type.rank
    axes = op.attrs["axes"] if "axes" in op.attrs else [op.attrs["axis"]]
    return tuple(sorted(a % rank for a in axes)) if rank else ()


def depends_on(region: Sequence[Op], roots: set[Op]) -> set[Op]:
    """Region ops that read (transitively, inside the region) a result of `roots`."""
    dep: set[Op] = set()
    for op in region:
        if op in roots or any(v.op in roots or v.op in dep for v in op.operands):
            dep.add(op)
    return dep


class Contraction(KernelKind):
    """One matmul/conv; ops reading its result are elementwise on its shape (the epilogue runs on
    the accumulator tile); its operands are index math over group inputs (a computed prologue
    would be recomputed for every output tile); one output element per result element."""

    name = "contraction"

    def claims(self, g: KernelGroup) -> bool:
        return bool(g.with_trait("contraction"))

    def issues(self, g: KernelGroup) -> Iterator[Issue]:
        yield from window_issues(g)
        cons, reds = g.with_trait("contraction"), g.with_trait("reduction")
        if len(cons) > 1:
            names = ", ".join(o.name for o in cons)
            yield Issue(f"a kernel holds one contraction, the group would hold {len(cons)} ({names})")
            return
        c = cons[0]
        if reds:
            yield Issue(f"a contraction ('{c.name}') and a reduction ('{reds[0].name}') cannot share a kernel")
            return
        if any(g.computed(v) for v in c.operands):
            yield Issue(f"the operands of '{c.name}' must be group inputs (computed prologues are not fused)",
                        waste=True)
        # elementwise on the result, or on a reshape of it (a row-major view: the same element under
        # another index, as a Linear on [batch, tokens, features] reads its [rows, features] matmul)
        n = c.results[0].type.numel
        for op in depends_on(g.ops, {c}):
            if op is not c and (op.name not in ("reshape",) and not has_trait(op, "elementwise")
                                or op.results[0].type.numel != n):
                yield Issue(f"'{op.name}' reads the '{c.name}' result at another index (epilogues are elementwise)")
                break
        for o in g.outputs:
            if o.type.numel != n:
                yield Issue(f"output {o.type} of a '{c.name}' group must have one element per result element")
                break


class Reduction(KernelKind):
    """Every reduction reduces the same shape over the same axes; outputs have one element per row
    or per (row, reduced element); values computed from a reduction are read back along their own
    row (elementwise ops, keepdims reshapes, a broadcast back over the reduced axes)."""

    name = "reduction"

    def claims(self, g: KernelGroup) -> bool:
        return bool(g.with_trait("reduction"))

    def issues(self, g: KernelGroup) -> Iterator[Issue]:
        yield from window_issues(g)
        reds = g.with_trait("reduction")
        first = reds[0]
        full = first.operands[0].shape
        axes = reduced_axes(first)
        for r in reds[1:]:
            if r.operands[0].shape != full or reduced_axes(r) != axes:
                yield Issue(f"'{r.name}' reduces {r.operands[0].type} over {list(reduced_axes(r))}, the group "
                            f"reduces {first.operands[0].type} over {list(axes)}")
                return
        kept = tuple(s for d, s in enumerate(full) if d not in axes)
        keep = tuple(1 if d in axes else s for d, s in enumerate(full))
        rows, per_row = math.prod(kept), math.prod(full)
        for o in g.outputs:
            if o.type.numel not in (rows, per_row):
                yield Issue(f"output {o.type} has neither one element per row ({rows}) nor per row element "
                            f"({per_row})")
                return
        prefix = axes == tuple(range(len(axes)))
        row_shapes = {kept, keep}
        for op in depends_on(g.ops, set(reds)):
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
            yield Issue(f"'{op.name}' reads a reduced value off its row (only elementwise ops and broadcasts "
                        "back fuse)")
            return


class Pointwise(KernelKind):
    """No contraction or reduction; every output has the same number of elements (one program
    instance per element)."""

    name = "pointwise"

    def claims(self, g: KernelGroup) -> bool:
        return not (g.with_trait("contraction") or g.with_trait("reduction"))

    def issues(self, g: KernelGroup) -> Iterator[Issue]:
        yield from window_issues(g)
        if len({o.type.numel for o in g.outputs}) > 1:
            yield Issue("pointwise outputs differ in element count ("
                        + ", ".join(str(o.type) for o in g.outputs) + ")")


KERNEL_KINDS: dict[str, KernelKind] = {}


def register_kind(kind: KernelKind) -> KernelKind:
    """Make a kernel kind known by its name, for Targets to list."""
    KERNEL_KINDS[kind.name] = kind
    return kind


for _k in (Contraction(), Reduction(), Pointwise()):
    register_kind(_k)

# traits of ops whose kernels load every operand through strides
_STRIDED_TRAITS = ("elementwise", "reduction", "contraction", "pool", "gather", "region")


@dataclass
class Target:
    """A backend's capabilities (see the module docstring). `kinds` are names in `KERNEL_KINDS`,
    asked in order; subclass to change `is_view` or `reads_strided`."""

    name: str = "default"
    kinds: tuple[str, ...] = ("contraction", "reduction", "pointwise")
    memory_plan: bool = True
    strided_traits: tuple[str, ...] = field(default=_STRIDED_TRAITS)
    max_group_ops: int = 32  # the `fuse` pass's default `max-ops`: a Triton kernel's size bounds its compile time

    def classify(self, g: KernelGroup) -> Kind:
        """The kind of kernel that computes `g` and whether it can (see `Kind`)."""
        for name in self.kinds:
            kind = KERNEL_KINDS[name]
            if kind.claims(g):
                return Kind(name, tuple(kind.issues(g)))
        return Kind(None, (Issue(f"no kernel kind of target '{self.name}' takes it ({', '.join(self.kinds)})"),))

    def is_view(self, op: Op) -> bool:
        """A top-level op that moves no data under its types' layouts: a reshape of a row-major value
        to a row-major one, or a transpose whose result strides are its operand's, permuted (size-1
        dims never move), or a stop_gradient (an identity once differentiated). The backend aliases its
        result to its operand's storage."""
        if op.name == "stop_gradient":
            return op.operands[0].type == op.results[0].type
        if op.name == "reshape":
            return op.operands[0].type.layout is None and op.results[0].type.layout is None
        if op.name == "transpose":
            src, dst = op.operands[0].type, op.results[0].type
            ss, ds = src.strides(), dst.strides()
            return all(ds[i] == ss[p] for i, p in enumerate(op.attrs["perm"]) if dst.shape[i] > 1)
        return False

    def reads_strided(self, op: Op) -> bool:
        """Ops whose kernels load operands through strides (so any operand layout is fine)."""
        return any(has_trait(op, t) for t in self.strided_traits)


DEFAULT_TARGET = Target()
"""What passes assume when no backend says otherwise: the kernel kinds of the Triton backend."""

def target_or_default(target: Target | None) -> Target:
    return DEFAULT_TARGET if target is None else target


__all__ = ["DEFAULT_TARGET", "KERNEL_KINDS", "Contraction", "Issue", "Kind", "KernelGroup", "KernelKind", "Pointwise",
           "Reduction", "Target", "has_trait", "reduced_axes", "register_kind", "target_or_default"]
