"""`fuse`: group top-level ops into `fusion` ops, each one kernel for the Triton backend.

The pass is TorchInductor's scheduler fusion in miniature (see the fusion policy's docstring for
what may share a kernel):

1. Every top-level op starts as a group of one. Inlinable producers (splat constants, broadcasts,
   reshapes, transposes: the policy's `inlinable`) are never members of a group: each group that reads one clones it, so
   `add(x, broadcast(bias))` reads `bias` with stride 0 instead of a materialized broadcast.
2. Candidate pairs are (producer group, consumer group) linked by a value, looking through
   inlinable ops. They are sorted by the policy's score (contraction epilogues first, then row
   patterns around reductions, then pointwise chains; more bytes saved first) and then by closeness
   in program order, and tried greedily; rounds repeat until nothing more fuses.
3. A pair fuses when the policy agrees, the group stays within `max-ops`, and merging creates no
   cycle (no op outside the pair both depends on the producer and feeds the consumer). The groups
   are kept in an order that stays topological: the merged group goes right after the last group it
   reads, and what depended on the producer in between moves after it.
4. Each group becomes a `fusion` op named after its ops (`fused_matmul_add_relu_1`): its block
   arguments are the values it reads, its yields the values used outside it.

Every decision is logged on `avalon.fusion` (`AVALON_LOG=fusion`), one line each, with the value
names of the graph as it was before the pass. `fuel=N` performs only the first N fusions, so a wrong
fusion can be found by bisection: the last `fusing` line of a failing fuel value names it.
"""
from __future__ import annotations

import heapq
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from avalon.channels import get_logger
from avalon.ir import Graph, Op, Value
from avalon.ir.fusion import is_dense_constant, outline
from avalon.ir.printer import name_values

from .fusion_policy import (
    POLICIES,
    Decision,
    FusionGroup,
    FusionPolicy,
    make_policy,
    register_policy,
)
from .registry import PipelineError, register
from .remat import rematerialize
from .target import Target

log = get_logger("fusion")

MAX_NAME_OPS = 5  # distinct op names in a group's name
MAX_ROUNDS = 10


def set_policy(policy: FusionPolicy | Callable[..., FusionPolicy] | None) -> Callable[..., FusionPolicy]:
    """Make `policy` the one `fuse` uses by default (`policy=default`); returns the previous factory so
    it can be put back. A class or factory is called with the pass's options (`epilogue`,
    `reductions`); an instance is used as it is; None restores `FusionPolicy`."""
    old = POLICIES["default"]
    if policy is None:
        POLICIES["default"] = FusionPolicy
    elif isinstance(policy, FusionPolicy):
        POLICIES["default"] = lambda **_: policy
    else:
        POLICIES["default"] = policy
    return old


class _Unit:
    """A group while the pass runs: its member ops (a lone op is a unit of one)."""

    __slots__ = ("ops", "fused", "view", "users")

    def __init__(self, ops: list[Op], fused: bool = False):
        self.ops = ops
        self.fused = fused
        self.view: FusionGroup | None = None
        self.users: list[_Unit] | None = None  # the pass's `users(self)`, until a unit it feeds changes


@dataclass
class _Record:
    ok: bool
    cand: list[Op]
    target: list[Op]
    reason: str


class _Fuser:
    verify_order = False  # tests: check the unit order after every merge

    def __init__(self, graph: Graph, policy: FusionPolicy, max_ops: int, fuel: int):
        self.graph = graph
        self.policy = policy
        self.max_ops = max_ops
        self.fuel = fuel
        self.block = graph.body
        ops = list(graph.ops)
        self.index = {op: i for i, op in enumerate(ops)}
        self.inlinable = {op for op in ops if policy.inlinable(op)}
        self.order: list[_Unit | None] = [_Unit([op]) for op in ops]
        self.pos = {u: i for i, u in enumerate(self.order) if u is not None}
        self.unit_of: dict[Op, _Unit] = {u.ops[0]: u for u in self.order if u is not None}
        self.rejected: set[tuple[int, int]] = set()
        self.keep: list[_Unit] = []  # units seen in `rejected`, kept alive so their ids stay unique
        self.records: list[_Record] | None = [] if log.isEnabledFor(logging.DEBUG) else None
        self.fusions = 0
        self.stopped = False  # out of fuel
        self._namer = name_values(graph) if self.records is not None else None
        self._bases: dict[Op, list[Value]] = {}

    # -- the graph seen through inlinable ops ---------------------------------------------------------
    def bases(self, op: Op) -> list[Value]:
        """The values `op` really reads: its operands, with inlinable producers looked through."""
        got = self._bases.get(op)
        if got is None:
            seen: dict[Value, None] = {}
            for v in op.operands:
                p = v.op
                if p is not None and p in self.inlinable:
                    for b in self.bases(p):
                        seen.setdefault(b, None)
                else:
                    seen.setdefault(v, None)
            got = self._bases[op] = list(seen)
        return got

    def view(self, u: _Unit) -> FusionGroup:
        if u.view is None:
            u.view = FusionGroup(u.ops, self.index, self.inlinable.__contains__, u.fused)
        return u.view

    def candidate_unit(self, op: Op | None) -> _Unit | None:
        """The unit of a producer that may take part in fusion (not a graph input, a dense constant,
        an inlinable op or an op inside a region)."""
        if op is None or op not in self.index or op in self.inlinable or is_dense_constant(op):
            return None
        return self.unit_of[op]

    def users(self, u: _Unit) -> list[_Unit]:
        """The units reading `u`'s values (do not mutate the list: it is cached on `u` until one of
        them is replaced; `placement` walks it for every merge tried, thousands of times on a DNC)."""
        got = u.users
        if got is None:
            out: dict[_Unit, None] = {}
            for op in u.ops:
                for r in op.results:
                    for user, _ in r.uses:
                        w = self.unit_of.get(user)
                        if w is not None and w is not u:
                            out.setdefault(w, None)
            got = u.users = list(out)
        return got

    def _unit_changed(self, u: _Unit) -> None:
        """`u` replaced other units: the cached users of the units it reads name them; forget those."""
        for op in u.ops:
            for v in op.operands:
                w = self.unit_of.get(v.op) if v.op is not None else None
                if w is not None:
                    w.users = None

    # -- candidates -------------------------------------------------------------------------------------
    def candidates(self) -> list[tuple]:
        """(sort key, kind, an op of the producer (or the inlinable op), an op of the consumer), best
        first. Ops rather than units, so a pair still names its groups after earlier merges."""
        out = []
        for c in self.order:
            if c is None or c.ops[0] in self.inlinable or is_dense_constant(c.ops[0]):
                continue
            shared: dict[_Unit, dict[Value, None]] = {}
            for m in c.ops:
                for b in self.bases(m):
                    p = self.candidate_unit(b.op)
                    if p is not None and p is not c:
                        shared.setdefault(p, {}).setdefault(b, None)
            for p, values in shared.items():
                both = set(p.ops) | set(c.ops)
                nbytes = 0
                for v in values:
                    whole = not FusionGroup(both, self.index, self.inlinable.__contains__).used_outside(v)
                    nbytes += v.type.nbytes * (2 if whole else 1)
                score = self.policy.score(self.view(p), self.view(c), nbytes)
                key = (score, -(self.pos[c] - self.pos[p]), -self.pos[c])
                out.append((key, "merge", p.ops[0], c.ops[0]))
            if not c.fused and len(c.ops) == 1:
                for v in c.ops[0].operands:
                    if v.op is not None and v.op in self.inlinable:
                        key = ((0, v.type.nbytes), 0, -self.pos[c])
                        out.append((key, "inline", v.op, c.ops[0]))
        out.sort(key=lambda t: t[0], reverse=True)
        return out

    # -- decisions --------------------------------------------------------------------------------------
    def record(self, ok: bool, cand: list[Op], target: list[Op], reason: str) -> None:
        if self.records is not None:
            self.records.append(_Record(ok, list(cand), list(target), reason))

    def out_of_fuel(self) -> bool:
        return self.fuel >= 0 and self.fusions >= self.fuel

    def try_inline(self, op: Op, consumer: Op) -> bool:
        c = self.unit_of[consumer]
        if c.fused:
            return False
        key = (id(c), id(op))
        if key in self.rejected:
            return False
        d = self.policy.can_inline(self.view(c), op)
        size = FusionGroup(c.ops, self.index, self.inlinable.__contains__, fused=True).size
        if d and size > self.max_ops:
            d = Decision(False, f"the group would hold {size} ops (max-ops={self.max_ops})")
        if d and self.out_of_fuel():
            self.record(False, [op], c.ops, f"out of fuel (fuel={self.fuel}); stopping here")
            self.stopped = True
            return False
        self.record(d.ok, [op], c.ops, d.reason)
        if not d:
            self.rejected.add(key)
            self.keep.append(c)
            return False
        m = _Unit(c.ops, fused=True)
        self.replace(c, m)
        self.fusions += 1
        return True

    def replace(self, old: _Unit, new: _Unit) -> None:
        i = self.pos.pop(old)
        self.order[i] = new
        self.pos[new] = i
        for op in new.ops:
            self.unit_of[op] = new
        self._unit_changed(new)

    def try_merge(self, producer: Op, consumer: Op) -> bool:
        p, c = self.unit_of[producer], self.unit_of[consumer]
        if p is c:
            return False  # already together
        if self.pos[p] > self.pos[c]:
            p, c = c, p
        key = (id(p), id(c))
        if key in self.rejected:
            return False
        target, cand = (p, c) if len(p.ops) >= len(c.ops) else (c, p)
        d = self.policy.can_fuse(self.view(target), self.view(cand))
        merged = self.view(target).union(self.view(cand))  # the policy's (kept), the same ops in order
        if d and merged.size > self.max_ops:
            d = Decision(False, f"the group would hold {merged.size} ops (max-ops={self.max_ops})")
        moved: list[_Unit] = []
        q = self.pos[p]
        if d:
            cycle, moved, q = self.placement(p, c)
            if cycle is not None:
                d = cycle
        if d and self.out_of_fuel():
            self.record(False, cand.ops, target.ops, f"out of fuel (fuel={self.fuel}); stopping here")
            self.stopped = True
            return False
        self.record(d.ok, cand.ops, target.ops, d.reason)
        if not d:
            self.rejected.add(key)
            self.keep += [p, c]
            return False
        m = _Unit(merged.ops, fused=True)
        m.view = merged
        self.reorder(p, c, m, moved, q)
        self.fusions += 1
        return True

    def placement(self, p: _Unit, c: _Unit) -> tuple[Decision | None, list[_Unit], int]:
        """Where the merged group of `p` (earlier) and `c` goes, or (a refusal) why it cannot exist.

        `marked` are the units between them that depend on `p`; if `c` reads one of them, merging
        makes a cycle. Otherwise the group goes right after the last unit `c` reads (or `p`'s place),
        and the marked units up to there move after it."""
        pp = self.pos[p]
        q = pp
        reads: list[_Unit] = []
        for m in c.ops:
            for b in self.bases(m):
                u = self.unit_of.get(b.op) if b.op is not None else None
                if u is None or u is p or u is c:
                    continue
                reads.append(u)
                q = max(q, self.pos[u])
        # Only units up to q matter (c reads none after q, and none after q moves); users sit after
        # what they read, so no unit up to q is reached through one after it: the walk stops at q
        # instead of visiting everything between p and c (quadratic on deep graphs). Except through
        # an inlinable op: a group that clones it reads through it and may sit before it, so the
        # walk goes on through inlinable units wherever they are (a 2-layer GRU's gradient did).
        # The walk takes the latest unit first and stops once it marks the first unit c reads: a cycle
        # through it, the refusal the whole walk would give. A pair whose consumer reads a value
        # derived from its producer (a forward op and its backward on a DNC's unrolled graph) is
        # found without visiting the thousands of units in between.
        pos = self.pos
        marked: set[_Unit] = set()
        first = reads[0] if reads else None
        heap = [(-pos[u], i, u) for i, u in enumerate(self.users(p))]
        heapq.heapify(heap)
        k = len(heap)
        while heap:
            u = heapq.heappop(heap)[2]
            if u in marked or u is c or u is p or (pos[u] > q and not self._inlinable_unit(u)):
                continue
            marked.add(u)
            if u is first:
                break
            for w in self.users(u):
                if w not in marked:
                    k += 1
                    heapq.heappush(heap, (-pos[w], k, w))
        for u in reads:
            if u in marked:
                return Decision(False, f"it would create a cycle through {self.describe(u.ops)}"), [], pp
        # inlinable ops cloned into c that read p's values also sit in the window: they move too
        moved = sorted((u for u in marked if self.pos[u] <= q), key=self.pos.__getitem__)
        return None, moved, q

    def _inlinable_unit(self, u: _Unit) -> bool:
        return not u.fused and len(u.ops) == 1 and u.ops[0] in self.inlinable

    def check_order(self) -> None:
        """Every unit comes after what it reads (a fused group: what its clones read). For tests."""
        for i, u in enumerate(self.order):
            if u is None:
                continue
            reads = [b for op in u.ops for b in self.bases(op)] if u.fused else [
                v for op in u.ops for v in op.operands]
            for v in reads:
                w = self.unit_of.get(v.op) if v.op is not None else None
                if w is not None and w is not u and self.pos[w] >= i:
                    raise AssertionError(f"{u.ops} at {i} reads {w.ops} at {self.pos[w]}")

    def reorder(self, p: _Unit, c: _Unit, m: _Unit, moved: list[_Unit], q: int) -> None:
        pp, pc = self.pos[p], self.pos[c]
        moving = set(moved)
        seg = [u for u in self.order[pp + 1:q + 1] if u is not None]
        new = [u for u in seg if u not in moving] + [m] + moved
        new += [None] * (q + 1 - pp - len(new))
        self.order[pp:q + 1] = new
        self.order[pc] = None
        del self.pos[p], self.pos[c]
        for i in range(pp, q + 1):
            u = self.order[i]
            if u is not None:
                self.pos[u] = i
        for op in m.ops:
            self.unit_of[op] = m
        self._unit_changed(m)
        if self.verify_order:
            self.check_order()

    # -- running ----------------------------------------------------------------------------------------
    def run(self) -> bool:
        for _ in range(MAX_ROUNDS):
            progress = False
            for _key, kind, a, c in self.candidates():
                if kind == "merge":
                    progress |= self.try_merge(a, c)
                else:
                    progress |= self.try_inline(a, c)
                if self.stopped:
                    break
            if not progress or self.stopped:
                break
        if self.fusions == 0:
            self.flush({})
            return False
        names = self.materialize()
        self.flush(names)
        return True

    # -- building the fusion ops ------------------------------------------------------------------------
    def group_name(self, ops: list[Op], k: int, taken: set[str]) -> str:
        """`fused_<op names, first MAX_NAME_OPS distinct ones>_<k>`, with k bumped past names in use."""
        names = list(dict.fromkeys(re.sub(r"\W", "_", op.name) for op in ops))[:MAX_NAME_OPS]
        base = "fused_" + "_".join(names)
        while f"{base}_{k}" in taken:
            k += 1
        return f"{base}_{k}"

    def materialize(self) -> dict[Op, str]:
        """Build the fusion ops in the final order; returns each member op's group name."""
        taken = {op.attrs.get("name", "") for op in self.graph.walk() if op.name == "fusion"}
        nums = [int(m.group(1)) for n in taken if (m := re.search(r"_(\d+)$", n or ""))]
        k = max(nums, default=-1) + 1
        names: dict[Op, str] = {}
        new_ops: list[Op] = []
        cloned: set[Op] = set()
        for u in self.order:
            if u is None:
                continue
            if not u.fused:
                new_ops.append(u.ops[0])
                continue
            name = self.group_name(u.ops, k, taken)
            taken.add(name)
            k = int(name.rsplit("_", 1)[1]) + 1
            new_ops.append(self.build(u, name, cloned))
            for op in u.ops:
                names[op] = name
        members = {op for op, _ in names.items()}
        for op in members:
            op.drop_operands()
            op.parent = None
        for op in new_ops:
            op.parent = self.block
        self.block.reorder(new_ops)
        for op in reversed(list(self.block.ops)):  # producers cloned into every group that read them
            if op in cloned and not any(r.uses for r in op.results):
                op.erase()
        return names

    def build(self, u: _Unit, name: str, cloned: set[Op]) -> Op:
        view = self.view(u)

        def clone(p: Op) -> bool:
            if p in self.inlinable:
                cloned.add(p)
                return True
            return False

        return outline(view.ops, name, clone=clone, outputs=view.outputs, place=False)

    # -- the log ----------------------------------------------------------------------------------------
    def flush(self, names: dict[Op, str]) -> None:
        """Write the buffered decisions with the final group names, then one line per group."""
        if self.records is None:
            return

        def where(ops: list[Op]) -> str:
            return names.get(ops[0]) or self.describe(ops)

        said: set[str] = set()
        for r in self.records:
            if r.ok:
                line = f"fusing {self.describe(r.cand)} into {where(r.target)} ({r.reason})"
            else:
                line = f"not fusing {self.describe(r.cand)} into {where(r.target)}: {r.reason}"
            if line not in said:  # the same refusal again, for a group that has grown since
                said.add(line)
                log.debug("%s", line)
        groups: dict[str, list[Op]] = {}
        for op, n in names.items():
            groups.setdefault(n, []).append(op)
        for n, ops in groups.items():
            ops.sort(key=self.index.__getitem__)
            log.debug("group @%s: %s", n, ", ".join(self.describe([op]) for op in ops))
        log.debug("fuse: %d fusions, %d groups%s", self.fusions, len(groups),
                  f" (fuel={self.fuel})" if self.fuel >= 0 else "")

    def describe(self, ops: list[Op]) -> str:
        """`%12 (max_pool2d)` for one op, `[%3 add, %4 relu, +2]` for a group (names from before the pass)."""
        namer = self._namer

        def ref(op: Op) -> str:
            return f"%{namer[op.results[0]]}" if namer is not None and op.results else "%?"

        if len(ops) == 1:
            return f"{ref(ops[0])} ({ops[0].name})"
        more = f", +{len(ops) - 3}" if len(ops) > 3 else ""
        return "[" + ", ".join(f"{ref(op)} {op.name}" for op in ops[:3]) + more + "]"


@register
@dataclass
class Fuse:
    """Group top-level ops into fusion ops, one kernel each (see `avalon.passes.fuse`).

    `max_ops` bounds a region's size (-1: the target's `max_group_ops`); `fuel` performs only the
    first N fusions (-1: all), for bisecting a wrong fusion; `epilogue`/`reductions` let matmuls/convs
    and reductions join groups; `policy` names a registered fusion policy (`register_policy`);
    `remat` recomputes cheap group results in the groups reading them instead of storing them
    (`avalon.passes.remat`). The pipeline's `target` says which groups its backend compiles as one
    kernel."""

    name = "fuse"
    version = 2  # 2: slices inlined, epilogues through reshapes, recompute instead of store
    max_ops: int = -1
    fuel: int = -1
    epilogue: bool = True
    reductions: bool = True
    policy: str = "default"
    remat: bool = True

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:  # said when the pipeline is parsed, not when it first runs
            raise PipelineError(f"pass 'fuse' option 'policy': unknown fusion policy '{self.policy}'; "
                                f"known: {', '.join(sorted(POLICIES))} (register_policy adds one)")

    def run(self, graph: Graph, target: Target | None = None) -> bool:
        try:
            pol = make_policy(self.policy, epilogue=self.epilogue, reductions=self.reductions)
        except ValueError as e:
            raise ValueError(f"fuse: {e}") from None
        if target is not None:
            pol.target = target
        max_ops = self.max_ops if self.max_ops >= 0 else pol.target.max_group_ops
        seeded = outline_seed_groups(graph, pol, max_ops, self.fuel)
        fuel = self.fuel if self.fuel < 0 else self.fuel - seeded
        changed = _Fuser(graph, pol, max_ops, fuel).run() or seeded > 0
        return (rematerialize(graph, pol, max_ops) > 0 if self.remat else False) or changed


def outline_seed_groups(graph: Graph, policy: FusionPolicy, max_ops: int, fuel: int) -> int:
    """Outline the whole patterns the policy's `seed_groups` finds (attention), before greedy fusion
    (which never touches a fusion op again); returns how many. One `avalon.fusion` line each. A
    whole pattern's size is the pattern's (the attention backward holds ~36 ops), not grown by
    merges, so it may hold up to twice `max_ops`."""
    done = 0
    policy.prepare(graph)
    for members, d in list(policy.seed_groups(list(graph.ops))):
        group = FusionGroup(members, {op: i for i, op in enumerate(graph.ops)}, policy.inlinable, fused=True)
        if d and group.size > 2 * max_ops:
            d = Decision(False, f"the group would hold {group.size} ops (2 x max-ops={max_ops})")
        if d and 0 <= fuel <= done:
            d = Decision(False, f"out of fuel (fuel={fuel})")
        names = ", ".join(op.name for op in members)
        if not d:
            log.debug("not outlining [%s]: %s", names, d.reason)
            continue
        taken = {op.attrs.get("name", "") for op in graph.walk() if op.name == "fusion"}
        k = 1 + max((int(m.group(1)) for n in taken if (m := re.search(r"_(\d+)$", n or ""))), default=-1)
        name = f"fused_{d.reason.split()[0]}_{k}"
        cloned = set(group.inlined)
        fused = outline(group.ops, name, clone=cloned.__contains__, outputs=group.outputs, place=False)
        graph.body.insert_before(group.ops[-1], fused)
        gone = cloned | set(group.ops)
        for op in reversed(list(graph.body.ops)):  # users first; a clone still read elsewhere stays
            if op in gone and not any(r.uses for r in op.results):
                op.erase()
        log.debug("group @%s (%s): %s", name, d.reason, names)
        done += 1
    if done:
        _schedule(graph.body)
    return done


def _schedule(block) -> None:
    """Restore def-before-use after outlining whole patterns: a pattern goes where its last member
    was, and an op between its members that reads one of its values (two causal layers' backward:
    the gradients of K summed between the layers' kernels) must move after it. A stable
    topological order: ops keep their order unless a producer comes later."""
    ops = list(block.ops)
    pos = {op: i for i, op in enumerate(ops)}
    producers = {op: {v.op for v in op.operands if v.op in pos and v.op is not op} for op in ops}
    if all(pos[p] < pos[op] for op in ops for p in producers[op]):
        return
    users: dict[Op, list[Op]] = {op: [] for op in ops}
    waiting = {op: len(producers[op]) for op in ops}
    for op in ops:
        for p in producers[op]:
            users[p].append(op)
    ready = [pos[op] for op in ops if not waiting[op]]
    heapq.heapify(ready)
    order = []
    while ready:
        op = ops[heapq.heappop(ready)]
        order.append(op)
        for u in users[op]:
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(ready, pos[u])
    if len(order) != len(ops):
        raise ValueError("fuse: outlined groups form a cycle")  # the patterns' own check failed
    block.reorder(order)


__all__ = ["Decision", "Fuse", "FusionGroup", "FusionPolicy", "outline_seed_groups", "register_policy", "set_policy"]
