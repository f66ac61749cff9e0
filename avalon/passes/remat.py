"""Recompute instead of store: the last step of `fuse`.

A training step's forward groups yield, besides their results, every intermediate the backward
reads: GPT's tanh-GELU group stored the pre-activation and five values computed from it
(x*x, x/2, tanh(...), 1 + tanh(...) and the GELU itself), each a full activation written once and
read back by the backward's group. Most are a few elementwise ops away from a value that is stored
anyway. Here, after fusion, a group result whose every reader is another fused group is recomputed
in those readers from the values it was computed from (the producer's inputs, or results the
producer keeps), when

* the recipe is elementwise (plus index math: broadcasts, reshapes, splat constants), at most
  `MAX_RECIPE_OPS` ops, and ends in such values, or in small values only a reduction computes
  (a BatchNorm or LayerNorm statistic, at most 1/16 of the result's bytes), which the producer
  then yields instead (x - mean stored for the next group becomes the column sums);
* each reader stays one kernel of the kind it was (the target's `classify`: a contraction takes it
  in its epilogue, never as a computed operand; attention kernels are left alone);
* it moves fewer bytes: the result's write and its reads against the reads of recipe inputs the
  readers did not read yet, none of them a graph input (a parameter read again after its
  in-place update would have to be copied).

The producer then stops yielding the result (`dce` prunes it). TorchInductor's partitioner makes the same trade (it
recomputes cheap pointwise ops in the backward rather than saving them); here it is decided per
group result, after fusion, when the groups are known. Every decision is logged on `avalon.fusion`.
"""
from __future__ import annotations

from collections.abc import Sequence

from avalon.channels import get_logger
from avalon.ir import Graph, Op, Value
from avalon.ir.builder import make_op
from avalon.ir.clone import clone_op
from avalon.ir.core import Block
from avalon.ir.fusion import group_name, is_splat_constant

from .cse import cse_block
from .dce import dce_block
from .fusion_policy import FusionPolicy
from .target import KernelGroup, has_trait

log = get_logger("fusion")

MAX_RECIPE_OPS = 12  # elementwise ops (index math not counted) recomputed per reader
KINDS = ("pointwise", "reduction", "contraction")  # readers whose emitters compute any elementwise op


def _cheap(op: Op) -> bool:
    """Recomputable anywhere: elementwise, index math, or a splat constant (never random)."""
    if op.regions or has_trait(op, "random"):
        return False
    return is_splat_constant(op) or has_trait(op, "elementwise") or has_trait(op, "selects")


def _recipe(y: Value, leaves: set[Value]) -> tuple[list[Op], list[Value]] | None:
    """The region ops computing `y` from `leaves` (in region order) and the small values it reads
    that only a reduction computes (a row mean, a BatchNorm or LayerNorm statistic: at most 1/16
    of `y`'s bytes, which the producer then yields too), or None when it needs anything else (a
    contraction, a big reduction, a dense constant) or more than MAX_RECIPE_OPS elementwise ops."""
    ops: dict[Op, None] = {}
    extra: dict[Value, None] = {}
    stack = [y]
    while stack:
        v = stack.pop()
        if v in leaves or v in extra:
            continue
        p = v.op
        if p is not None and not _cheap(p) and not p.regions and 16 * v.type.nbytes <= y.type.nbytes:
            extra[v] = None
            continue
        if p is None or not _cheap(p):
            return None
        if p not in ops:
            ops[p] = None
            stack.extend(p.operands)
    if sum(has_trait(op, "elementwise") for op in ops) > MAX_RECIPE_OPS:
        return None
    block = y.op.parent if y.op is not None else None
    order = {op: i for i, op in enumerate(block.ops)} if block is not None else {}
    return sorted(ops, key=order.__getitem__), list(extra)


def _rebuild(op: Op, args: Sequence[Value], prologue: Sequence[Op] = (), mapping: dict[Value, Value] | None = None,
             computed: dict[Value, Value] | None = None, results: Sequence[int] | None = None,
             more: Sequence[Value] = ()) -> Op:
    """A copy of fusion op `op` reading the top-level values `args` (its block args, in order).
    `prologue` ops (of another region) are cloned first, `mapping` taking the values they read to
    top-level values among `args`; an operand `v` of `op` in `computed` is not read but is the
    prologue's clone of `computed[v]`. `results`: the yields kept (default: all); `more`: values
    of `op`'s region yielded after them."""
    block = Block([a.type for a in args])
    arg = dict(zip(args, block.args))
    m = {src: arg[top] for src, top in (mapping or {}).items()}
    for p in prologue:
        block.append(clone_op(p, m))
    for a, v in zip(op.regions[0].args, op.operands):
        m[a] = m[computed[v]] if computed and v in computed else arg[v]
    for inner in op.regions[0].ops:
        block.append(clone_op(inner, m))
    ys = op.regions[0].results
    keep = range(len(ys)) if results is None else results
    block.set_terminator("yield", [m[ys[i]] for i in keep] + [m[v] for v in more])
    cse_block(block)  # (two recipes recomputed in one reader share their common ops)
    dce_block(block)
    types = [ys[i].type for i in keep] + [v.type for v in more]
    new = make_op("fusion", list(args), dict(op.attrs), op.loc, result_types=types)
    new.add_region(block)
    return new


def _bytes(v: Value) -> int:
    return v.type.numel * v.dtype.itemsize


class _Remat:
    def __init__(self, graph: Graph, policy: FusionPolicy, max_ops: int):
        self.graph = graph
        self.policy = policy
        self.max_ops = max_ops
        self.done = 0
        self.extended = False  # a producer was made to yield statistics (maybe for nothing)

    def kind(self, op: Op) -> str | None:
        """`op`'s kernel kind, when it is a group a reader may grow (None otherwise)."""
        block = op.regions[0]
        k = self.policy.target.classify(KernelGroup.of(list(block.ops), block.results))
        return k.name if k and k.name in KINDS else None

    def run(self) -> int:
        i = 0
        while i < len(ops := self.graph.ops):  # (groups rebuilt meanwhile are visited in their place)
            if ops[i].regions:
                self.producer(ops[i])
            i += 1
        if self.done or self.extended:  # results read nowhere now (and the ops computing only them) go
            dce_block(self.graph.body)
            self.check()
        return self.done

    def check(self) -> None:
        """Every use of a top-level value is by an op of the graph: a stale one (a group built and
        dropped) would give the memory plan a wrong lifetime, silently."""
        live = set(self.graph.ops) | {self.graph.body.terminator}
        for v in list(self.graph.inputs) + [r for op in self.graph.ops for r in op.results]:
            for u, _ in v.uses:
                if u not in live:
                    raise AssertionError(f"remat: {v.type} is still read by a '{u.name}' outside the graph")

    def producer(self, p: Op) -> None:
        region = p.regions[0]
        ys = region.results
        outer = dict(zip(region.args, p.operands))  # block arg -> the top-level value it reads
        order = {op: i for i, op in enumerate(region.ops)}
        idx = sorted(range(len(ys)), key=lambda i: order.get(ys[i].op, -1))  # a dependency order
        kept = set(range(len(ys)))
        for i in idx:
            r = p.results[i]
            if not r.uses or any(u.parent is not self.graph.body or not u.regions for u, _ in r.uses):
                continue  # a graph output, or read by an op that is not a group
            leaves = set(region.args) | {ys[j] for j in kept if j != i and ys[j] is not ys[i]}
            found = _recipe(ys[i], leaves)
            if found is None or not found[0]:  # (a yield of a block argument: nothing to recompute)
                continue
            recipe, extra = found
            if extra:  # yield the statistics it needs, then decide again with them as leaves
                self.producer(self.replace(p, _rebuild(p, list(p.operands), more=extra)))
                return
            # the recipe's inputs, as top-level values: producer inputs, or results it keeps
            needs: dict[Value, Value] = {}
            for op in recipe:
                for v in op.operands:
                    if v in leaves and v not in needs:
                        needs[v] = outer[v] if v in outer else p.results[ys.index(v)]
            if self.readers(p, r, ys[i], recipe, needs):
                kept.discard(i)

    def readers(self, p: Op, r: Value, y: Value, recipe: list[Op], needs: dict[Value, Value]) -> bool:
        """Recompute `r` (`y` in `p`'s region) in each group reading it, if every one of them stays
        the kernel it was and bytes drop."""
        users = list(dict.fromkeys(u for u, _ in r.uses))
        inputs = set(self.graph.inputs)
        late = [t for c in users for t in needs.values() if t in inputs and t not in c.operands]
        if late:  # a later read of a graph input (a parameter, a momentum buffer) would keep its
            # in-place update from reusing its storage (the backend then copies it)
            log.debug("not recomputing %s of %s: its readers would read input %s again", r.type, group_name(p),
                      late[0].type)
            return False
        extra = sum(_bytes(t) for c in users for t in needs.values() if t not in c.operands)
        if extra >= _bytes(r) * (1 + len(users)):
            log.debug("not recomputing %s of %s: its inputs cost more bytes than storing it", r.type,
                      group_name(p))
            return False
        built = []
        for c in users:
            args = [v for v in c.operands if v is not r]
            args += [t for t in dict.fromkeys(needs.values()) if t not in args]
            new = _rebuild(c, args, recipe, needs, {r: y})
            built.append((c, new))
            before, after = self.kind(c), self.kind(new)
            size = len(new.regions[0].ops)
            why = (f"it would not stay one {before or 'pointwise/reduction/contraction'} kernel"
                   if before is None or after != before else
                   f"it would hold {size} ops (max-ops={self.max_ops})" if size > self.max_ops else None)
            if why:
                log.debug("not recomputing %s of %s in %s: %s", r.type, group_name(p), group_name(c), why)
                for _, n in built:  # (detached, but its operands' use lists still name it)
                    n.erase()
                return False
        for c, new in built:
            self.graph.body.insert_before(c, new)
            for a, b in zip(c.results, new.results):
                a.replace_all_uses_with(b)
            c.erase()
        names = ", ".join(op.name for op in recipe if has_trait(op, "elementwise"))
        log.debug("recomputing %s of %s (%s) in %s instead of storing it", r.type, group_name(p), names,
                  ", ".join(group_name(c) for c, _ in built))
        self.done += 1
        return True

    def replace(self, p: Op, new: Op) -> Op:
        """Put `new` (yielding `p`'s results first) in `p`'s place."""
        self.extended = True
        self.graph.body.insert_before(p, new)
        for a, b in zip(p.results, new.results):
            a.replace_all_uses_with(b)
        p.erase()
        return new


def rematerialize(graph: Graph, policy: FusionPolicy, max_ops: int) -> int:
    """Recompute cheap group results in the groups reading them, which stay within `max_ops` ops
    (see the module docstring); returns how many results stopped being stored."""
    return _Remat(graph, policy, max_ops).run()
