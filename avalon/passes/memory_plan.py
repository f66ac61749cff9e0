"""`memory-plan`: assign every intermediate of the top-level graph to a reusable buffer.

A backend that allocates one buffer per intermediate holds the whole training step in memory at
once; most values die a few ops after they are made, so their memory can be reused. The plan is
computed from lifetimes in op order (a value lives from the op that makes it to its last use,
uses inside a fused group's region counting as uses by the group):

* in place: an elementwise op (or a fused group of elementwise ops) whose operand dies at that op
  writes its result over that operand, since every element is read before it is written; such a
  chain (conv -> add bias -> relu) shares one storage;
* greedy by size, first fit: storages, largest first, each go into the first buffer none of whose
  holders is alive at the same time; only when none fits is a new buffer made (sized by its first,
  largest, holder). An op's operands are alive while it runs, so an op never writes a result over
  an input it is still reading (except in place, above).

The summary also gives the live-set peak (the most bytes alive at once), a lower bound that the
plan reaches when lifetimes nest well.

Views (what the target's `is_view` says moves no data: a row-major `reshape`, a `transpose` the
layout pass made a view) own no memory: they share
their operand's buffer, which then lives until the view's last use. Graph inputs and outputs (and
values that outputs are views of) are not planned: the caller owns them. The IR is not changed (the op
attribute schema is strict, so a `buffer = 3` attribute would need special cases in the printer,
parser and verifier); the plan is a declared graph analysis, `graph.analysis("memory_plan")` (a
`MemoryPlan`), valid until the graph is next rewritten, with a printable `report()`. A backend whose
`Target` wants no plan (`memory_plan=False`) gets none: the pass then does nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from avalon.ir import Graph, Op, Value
from avalon.ir.printer import format_op, name_values

from .registry import register
from .target import Target, target_or_default


@dataclass
class MemoryPlan:
    """Where every intermediate of a graph lives.

    `buffers[i]` is buffer i's size in bytes and `offsets[i]` its place in one arena of
    `planned_bytes`; `assignment[v]` is the buffer of value v; `inplace[r] = v` says result r
    overwrites operand v; `lifetimes[v] = (first, last)` in top-level op indices.
    """

    graph: Graph
    buffers: list[int] = field(default_factory=list)
    assignment: dict[Value, int] = field(default_factory=dict)
    inplace: dict[Value, Value] = field(default_factory=dict)
    lifetimes: dict[Value, tuple[int, int]] = field(default_factory=dict)
    naive_bytes: int = 0
    live_peak_bytes: int = 0
    ops: tuple[int, ...] = ()  # ids of the planned ops, to tell when the graph changed

    @property
    def planned_bytes(self) -> int:
        """Peak memory of intermediates under the plan: all buffers together."""
        return sum(self.buffers)

    @property
    def offsets(self) -> list[int]:
        out, acc = [], 0
        for size in self.buffers:
            out.append(acc)
            acc += size
        return out

    def is_current(self, graph: Graph) -> bool:
        """True while `graph` still has exactly the ops this plan was made for."""
        return graph is self.graph and tuple(id(op) for op in graph.ops) == self.ops

    def summary(self) -> str:
        n = len(self.assignment)
        pct = 100.0 * self.planned_bytes / self.naive_bytes if self.naive_bytes else 100.0
        return (f"memory plan for @{self.graph.name}: {n} intermediates in {len(self.buffers)} buffers; "
                f"{_fmt(self.naive_bytes)} one buffer each -> {_fmt(self.planned_bytes)} planned ({pct:.1f}%), "
                f"live-set lower bound {_fmt(self.live_peak_bytes)}, {len(self.inplace)} in place")

    def report(self) -> str:
        """The summary, each buffer with the values it holds in turn, and each value's buffer."""
        namer = name_values(self.graph)
        lines = [self.summary(), "", "buffers:"]
        held: dict[int, list[Value]] = {}
        for v, b in self.assignment.items():
            held.setdefault(b, []).append(v)
        for b, size in enumerate(self.buffers):
            vals = sorted(held.get(b, []), key=lambda v: self.lifetimes[v])
            desc = ", ".join(f"%{namer[v]} [{self.lifetimes[v][0]}..{self.lifetimes[v][1]}]"
                             + (f" (in place of %{namer[self.inplace[v]]})" if v in self.inplace else "")
                             for v in vals)
            lines.append(f"  buf{b:<3} {size:>12,} B  @{self.offsets[b]:<12,} {desc}")
        lines += ["", "values:"]
        for k, op in enumerate(self.graph.ops):
            for r in op.results:
                if r in self.assignment:
                    lines.append(f"  #{k:<4} buf{self.assignment[r]:<3} {format_op(op, namer)} : {r.type}")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.report()


def _fmt(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n} B"


class BufferOccupancy:
    """Which buffers are busy somewhere in a span of op indices (for first-fit placement, and for code
    generators looking for a buffer idle at an op to hold its scratch), in
    O(log n) big-integer operations per query instead of one bisection per buffer: a segment tree
    over op indices whose nodes hold bit masks of buffers (`cover`: busy over the node's whole
    range; `seen`: busy somewhere inside it)."""

    def __init__(self, n: int):
        self.n = max(n, 1)
        self.cover = [0] * (4 * self.n)
        self.seen = [0] * (4 * self.n)

    def add(self, s0: int, e0: int, bit: int) -> None:
        self._add(1, 0, self.n - 1, s0, e0, bit)

    def _add(self, node: int, lo: int, hi: int, s0: int, e0: int, bit: int) -> None:
        self.seen[node] |= bit
        if s0 <= lo and hi <= e0:
            self.cover[node] |= bit
            return
        mid = (lo + hi) // 2
        if s0 <= mid:
            self._add(2 * node, lo, mid, s0, e0, bit)
        if e0 > mid:
            self._add(2 * node + 1, mid + 1, hi, s0, e0, bit)

    def busy(self, s0: int, e0: int) -> int:
        """The mask of buffers busy anywhere in [s0, e0]."""
        return self._busy(1, 0, self.n - 1, s0, e0)

    def _busy(self, node: int, lo: int, hi: int, s0: int, e0: int) -> int:
        if s0 <= lo and hi <= e0:
            return self.seen[node]
        mask = self.cover[node]
        mid = (lo + hi) // 2
        if s0 <= mid:
            mask |= self._busy(2 * node, lo, mid, s0, e0)
        if e0 > mid:
            mask |= self._busy(2 * node + 1, mid + 1, hi, s0, e0)
        return mask


def _pointwise_region(op: Op, operand_index: int) -> bool:
    """A fused group that reads operand `operand_index` only at the element it writes."""
    region = op.regions[0]
    for inner in region.ops:
        if inner.regions:
            return False
        if not (inner.has_trait("elementwise") or not inner.operands):  # an op reading nothing is safe
            # a broadcast of a constant splat reads no operand data
            if not (inner.name == "broadcast" and inner.operands[0].op is not None
                    and inner.operands[0].op.name == "constant"):
                return False
    arg = region.args[operand_index]
    return all(u.has_trait("elementwise") for u in arg.users)


def _can_overwrite(op: Op, r: Value, v: Value) -> bool:
    """May result `r` of `op` be written over its operand `v` (read directly, not through a view)?"""
    same_place = (r.type.shape, r.type.layout, r.type.dtype.itemsize) == (v.type.shape, v.type.layout,
                                                                         v.type.dtype.itemsize)
    if v not in op.operands or not same_place:
        return False
    if op.has_trait("elementwise"):
        return True
    if op.regions and op.has_trait("region"):
        return any(_pointwise_region(op, i) for i, o in enumerate(op.operands) if o is v)
    return False


def plan_memory(graph: Graph, inplace: bool = True, alias_views: bool = True,
                target: Target | None = None) -> MemoryPlan:
    """Compute (and return) the buffer plan of `graph`'s top-level intermediates; also attached as
    the graph's `memory_plan` analysis. With `alias_views`, views (`target.is_view`: row-major
    reshapes, transposes made views by the layout pass) share their operand's buffer instead of
    owning one."""
    is_view = target_or_default(target).is_view
    ops = list(graph.ops)
    index = {id(op): k for k, op in enumerate(ops)}
    index[id(graph.body.terminator)] = len(ops)
    plan = MemoryPlan(graph, ops=tuple(id(op) for op in ops))

    root: dict[Value, Value] = {}  # a view's result -> the value that owns its storage
    if alias_views:
        for op in ops:
            if is_view(op):
                root[op.results[0]] = root.get(op.operands[0], op.operands[0])
    pinned = {root.get(v, v) for v in graph.outputs}  # outputs, and what outputs are views of
    owners = [r for op in ops for r in op.results if r not in root and r not in pinned and r.type.nbytes > 0]
    last: dict[Value, int] = {}
    for op in ops:
        for r in op.results:
            owner = root.get(r, r)
            k = index[id(op)]
            uses = max((index[id(graph.body.holder(u) or u)] for u, _ in r.uses), default=k)
            last[owner] = max(last.get(owner, k), uses)
    for v in owners:
        plan.lifetimes[v] = (index[id(v.op)], last[v])
    plan.naive_bytes = sum(v.type.nbytes for v in owners)

    # in place: a result of an elementwise op takes over an operand that dies there (same storage)
    chain: dict[Value, list[Value]] = {v: [v] for v in owners}
    if inplace:
        for v in owners:
            if v in plan.inplace:
                continue
            k = plan.lifetimes[v][0]
            op = v.op
            for w in op.operands:
                c = chain.get(w)
                through_view = any(root.get(o) is w for o in op.operands)  # also read at other offsets
                if c is not None and c[-1] is w and plan.lifetimes[w][1] == k and plan.lifetimes[w][0] < k \
                        and not through_view and _can_overwrite(op, v, w):
                    plan.inplace[v] = w
                    c.append(v)
                    chain[v] = c
                    break
    chains = list({id(c): c for c in chain.values()}.values())
    span = {id(c): (plan.lifetimes[c[0]][0], plan.lifetimes[c[-1]][1]) for c in chains}
    size = {id(c): max(v.type.nbytes for v in c) for c in chains}

    # greedy by size: largest first, each into the first buffer whose holders' lifetimes it misses
    # (the lowest buffer whose bit is clear in the busy mask of [s0, e0]; a new one when none is)
    occupancy = BufferOccupancy(len(ops) + 1)
    for c in sorted(chains, key=lambda c: (-size[id(c)], span[id(c)])):
        s0, e0 = span[id(c)]
        busy = occupancy.busy(s0, e0)
        b = (~busy & (busy + 1)).bit_length() - 1  # the lowest clear bit
        if b >= len(plan.buffers):
            b = len(plan.buffers)
            plan.buffers.append(size[id(c)])
        occupancy.add(s0, e0, 1 << b)
        for v in c:
            plan.assignment[v] = b

    # the most bytes live at once (a chain counts once), a lower bound for any plan
    delta = [0] * (len(ops) + 2)
    for c in chains:
        s0, e0 = span[id(c)]
        delta[s0] += size[id(c)]
        delta[e0 + 1] -= size[id(c)]
    peak = live = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    plan.live_peak_bytes = peak
    graph.attach("memory_plan", plan)
    return plan


@register("memory-plan")
def memory_plan(graph: Graph, *, inplace: bool = True, alias_views: bool = True,
                target: Target | None = None) -> bool:
    """Plan buffer reuse for intermediates (the graph's `memory_plan` analysis; the IR is unchanged)."""
    if target_or_default(target).memory_plan:
        plan_memory(graph, inplace=inplace, alias_views=alias_views, target=target)
    return False
