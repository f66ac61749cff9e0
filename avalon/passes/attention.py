"""The `attention` kernel kind: `softmax(Q Kᵀ · scale + mask) V` as ONE kernel.

The greedy `fuse` pass merges pairs, and no pair on the way to this pattern is a kernel of any
other kind (a matmul and a reduction cannot share a contraction kernel), so the kind does not wait
for pairs: it *finds* the whole pattern in the graph (`Attention.find`, called by the fusion
policy's `seed_groups` before greedy fusion starts) and the pass outlines it at once. Its `claims`
and `issues` judge a group the same way (the Triton emitter re-reads the roles with `match`), so a
hand-made or parsed group gets the same answer.

The pattern, read from the output back (what `F.scaled_dot_product_attention` traces to):

* `pv = matmul(P', V)`; `P'` is *linear* in the softmax `P = div(e, broadcast(sum(e)))` (dropout:
  `where(keep, mul(P, 1/(1-p)), 0)`), so `P'` may be computed from the unnormalized exponentials
  and the row sum applied once at the end, which is what the online softmax needs;
* `e = exp(sub(s, broadcast(max(s))))`, both reductions over the last axis with keepdims;
* `s` is an elementwise function of `qk = matmul(Q, Kᵀ)` at the same element (scale, `where` with
  -inf for bool and causal masks, `add` of a float mask): side operands are index math over the
  kernel's inputs (iota, mask loads, random bits), recomputed per tile.

No value of shape (..., L, S) may leave the group: that is the point of the kernel. The row
statistics may (the max and the exponentials' row sum, (..., L, 1)): the backward pass recomputes
P from them (`attention_bwd.py`), so the kernel stores them as extra outputs when they are used.
A causal mask (`causal`) lets the kernels stop the key loop at the diagonal block.
"""
from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from avalon.ir import Op, Value

from .target import Issue, KernelGroup, KernelKind, has_trait, register_kind

MAX_HEAD_DIM = 256  # Q/K/V rows live in registers: a head dimension larger than this does not fit
_SIDE_LIMIT = 32  # producers of a side operand pulled into the group (iota, mask math, seeds)


@dataclass
class AttentionMatch:
    """The roles of the ops of one attention pattern (see the module docstring)."""

    qk: Op
    pv: Op
    scores: Value  # s: what the softmax reduces
    mx: Op
    sm: Op
    div: Op
    core: list[Op] = field(default_factory=list)  # ops computing (..., L, S) values from qk (qk, pv included)
    side: list[Value] = field(default_factory=list)  # values the core reads that do not depend on qk


def _splat(v: Value) -> float | None:
    """The scalar a splat constant (possibly broadcast) holds, or None."""
    p = v.op
    while p is not None and p.name == "broadcast":
        p = p.operands[0].op
    if p is None or p.name != "constant":
        return None
    arr = np.asarray(p.attrs["value"])
    return float(arr.reshape(-1)[0]) if arr.size == 1 else None


def _last_axis_keepdims(op: Op, s: Value) -> bool:
    axes = op.attrs["axes"] if "axes" in op.attrs else [op.attrs.get("axis")]
    rank = s.type.rank
    return (op.operands[0] is s and [a % rank for a in axes] == [rank - 1] and bool(op.attrs.get("keepdims")))


def _through_broadcast(v: Value, name: str) -> Op | None:
    """`v = broadcast(r)` where r is made by an op called `name` (or `v` itself is): that op."""
    p = v.op
    if p is not None and p.name == "broadcast":
        p = p.operands[0].op
    return p if p is not None and p.name == name else None


def scores_of(s: Value) -> tuple[Op, list[Op], list[Value]] | str:
    """The one matmul `qk` the scores `s` are an elementwise function of (at the same element), the
    ops on the paths qk -> s, and the side values they read; or why `s` is not such a function."""
    side: list[Value] = []
    # s <- qk: elementwise ops of the scores' shape; find the one matmul among s's producers
    seen: dict[Op, None] = {}
    stack = [s.op]
    qks: list[Op] = []
    while stack and len(seen) < 4 * _SIDE_LIMIT:
        p = stack.pop()
        if p is None or p in seen:
            continue
        seen[p] = None
        if p.name == "matmul":
            if p.results[0].shape == s.shape:
                qks.append(p)
            continue
        if has_trait(p, "elementwise") and p.results[0].shape == s.shape:
            stack.extend(x.op for x in p.operands)
    if len(qks) != 1:
        return f"the scores are computed from {len(qks)} matmuls of their shape, not one (Q Kᵀ)"
    qk = qks[0]
    # core: ops on the paths qk -> s (each elementwise on the scores' shape)
    dep: dict[Op, bool] = {qk: True}

    def on_path(op: Op | None) -> bool:
        if op is None or op not in seen:
            return False
        if op not in dep:
            dep[op] = False
            dep[op] = any(on_path(x.op) for x in op.operands)
        return dep[op]

    path = [op for op in seen if op is not qk and on_path(op)]
    for op in path:
        for x in op.operands:
            if not on_path(x.op):
                side.append(x)
    return qk, path, side


def match(pv: Op) -> AttentionMatch | str:
    """The attention pattern ending in `pv`, or why `pv` does not end one."""
    if pv.name != "matmul":
        return f"'{pv.name}' is not a matmul"
    # P' -> P: ops linear in P (dropout's scale and zeroing)
    chain: list[Op] = []
    side: list[Value] = []
    v = pv.operands[0]
    while True:
        p = v.op
        if p is None:
            return "the matmul's left operand is not computed by a softmax"
        if p.name == "div":
            break
        if p.name == "mul":
            a, b = p.operands
            on, off = (a, b) if a.op is not None and a.op.name in ("div", "mul", "where") else (b, a)
        elif p.name == "where":
            c, a, b = p.operands
            if _splat(b) == 0.0:
                on, off = a, b
            elif _splat(a) == 0.0:
                on, off = b, a
            else:
                return "a 'where' between the softmax and the second matmul does not zero (it is not dropout)"
            side.append(c)
        else:
            return f"'{p.name}' between the softmax and the second matmul is not linear in the probabilities"
        if on.shape != pv.operands[0].shape:
            return "the probabilities change shape before the second matmul"
        side.append(off)
        chain.append(p)
        v = on
    div = v.op
    e, b2 = div.operands
    sm = _through_broadcast(b2, "sum")
    ex = e.op
    if sm is None or ex is None or ex.name != "exp" or not _last_axis_keepdims(sm, e):
        return "the division is not a softmax's (exp over its row sum with keepdims)"
    sub = ex.operands[0].op
    if sub is None or sub.name != "sub":
        return "the exponential is not of scores minus their row max"
    s, b1 = sub.operands
    mx = _through_broadcast(b1, "max")
    if mx is None or not _last_axis_keepdims(mx, s):
        return "the softmax does not subtract the row max of its scores (over the last axis)"
    got = scores_of(s)
    if isinstance(got, str):
        return got
    qk, path, more = got
    side += more
    softmax = [mx, sub, ex, sm, div] + [x.op for x in (b1, b2) if x.op is not None and x.op.name == "broadcast"]
    core = [qk, *path, *softmax, *chain, pv]
    side.append(pv.operands[1])
    q, kt = qk.operands
    if kt.shape[-1] != s.shape[-1] or pv.operands[1].shape[-2] != s.shape[-1] or q.shape[:-2] != pv.result.shape[:-2]:
        return "the two matmuls do not line up as Q Kᵀ (..., L, S) and P V (..., S, Ev)"
    return AttentionMatch(qk, pv, s, mx, sm, div, core, list(dict.fromkeys(side)))


def _depends_on(v: Value, core: Collection[Op], limit: int = 4 * _SIDE_LIMIT) -> bool:
    """Does `v` read (transitively) a core op? (a side operand must not: it is recomputed per tile)"""
    stack, seen = [v.op], set()
    while stack and len(seen) < limit:
        p = stack.pop()
        if p is None or p in seen:
            continue
        if p in core:
            return True
        seen.add(p)
        stack.extend(x.op for x in p.operands)
    return False


def _only_inside(op: Op, inside: Collection[Op], inlinable, depth: int = 4) -> bool:
    """Every use of `op`'s results is by an op in `inside` (looking through inlinable ops, which
    groups clone)."""
    for r in op.results:
        for u, _ in r.uses:
            if u in inside:
                continue
            if depth and u.parent is not None and inlinable(u) and _only_inside(u, inside, inlinable, depth - 1):
                continue
            return False
    return True


class Attention(KernelKind):
    """softmax(Q Kᵀ·scale + mask) V, with dropout, as one flash-attention kernel (see the module)."""

    name = "attention"

    def claims(self, g: KernelGroup) -> bool:
        # two contractions and a reduction in one group: no other kind ever takes that
        return len(g.with_trait("contraction")) >= 2 and bool(g.with_trait("reduction"))

    def issues(self, g: KernelGroup) -> Iterator[Issue]:
        pvs = [o.op for o in g.outputs if o.op is not None and o.op.name == "matmul"]
        if len(pvs) != 1:
            yield Issue("an attention kernel has one output, the second matmul's result (the L x S "
                        "probabilities would have to be stored)")
            return
        m = match(pvs[0])
        if isinstance(m, str):
            yield Issue(f"not attention: {m}")
            return
        if any(o not in (m.pv.result, m.mx.result, m.sm.result) for o in g.outputs):
            yield Issue("an attention kernel yields the second matmul's result and the softmax's row max "
                        "and sum only (the L x S probabilities would have to be stored)")
            return
        core = set(m.core)
        for op in g.ops:
            if op not in core and (has_trait(op, "contraction") or has_trait(op, "reduction")):
                yield Issue(f"'{op.name}' is neither of the attention's matmuls nor its softmax")
                return
        for x in m.side:
            if _depends_on(x, core):
                yield Issue("a value computed from the scores is used other than elementwise (not attention)")
                return
        for x in (*m.qk.operands, m.pv.operands[1]):
            if g.computed(x):
                yield Issue("the operands of the attention's matmuls must be group inputs (computed prologues "
                            "are not fused)", waste=True)
                break
        e, ev = m.qk.operands[0].shape[-1], m.pv.operands[1].shape[-1]
        if max(e, ev) > MAX_HEAD_DIM:
            yield Issue(f"head dimensions {e}, {ev} exceed {MAX_HEAD_DIM} (a row of Q and of the output "
                        "live in registers)")
        d = m.pv.result.dtype
        if not d.is_float or any(op.results[0].dtype != d for op in (m.qk, m.mx, m.div)):
            yield Issue(f"attention kernels compute in one float dtype, the group mixes {d} and others")

    def find(self, ops: Sequence[Op], inlinable) -> Iterator[tuple[list[Op], str | None]]:
        """Candidate groups in `ops` (top-level, program order): (members, None) for a pattern whose
        L x S values all stay inside it, (ops, why not) for one that cannot be outlined."""
        index = {op: i for i, op in enumerate(ops)}
        for pv in ops:
            if pv.name != "matmul":
                continue
            m = match(pv)
            if isinstance(m, str):
                continue
            members = set(m.core)
            if any(op not in index for op in members):
                continue
            stats = (pv, m.mx, m.sm)  # row statistics may leave: the kernel stores them
            leak = next((op for op in m.core if op not in stats and any(
                u not in members for r in op.results for u, _ in r.uses)), None)
            if leak is not None:
                yield sorted(members, key=index.__getitem__), (
                    f"'{leak.name}' of the attention is used outside it (a training graph keeps the "
                    "probabilities for the backward pass); the L x S values would have to be stored")
                continue
            members |= self._side_producers(m.side, [*m.qk.operands, pv.operands[1]], members, index, inlinable)
            yield sorted(members, key=index.__getitem__), None

    @staticmethod
    def _side_producers(side: Sequence[Value], views: Sequence[Value], members: set[Op], index: dict[Op, int],
                        inlinable) -> set[Op]:
        """Producers of side operands (iota, mask math, the dropout seed) used only by the group:
        they move into it (a value only the group reads need not be materialized). For `views`
        (the matmuls' operands) only movement ops (slices) move in."""
        added: set[Op] = set()
        # the matmuls' operands (Q, K, V) may be views of a computed value (heads sliced out of the
        # packed qkv projection): only their movement ops (slices) move in, read through strides;
        # what computes them (a bias add) stays outside, the kernel does not recompute prologues
        stack = [(x.op, False) for x in side if x not in views] + [(x.op, True) for x in views]
        while stack and len(added) < _SIDE_LIMIT:
            p, view = stack.pop()
            if p is None or p in members or p in added or p not in index or inlinable(p):
                if p is not None and inlinable(p):
                    stack.extend((x.op, view) for x in p.operands)  # cloned anyway: look at what it reads
                continue
            if has_trait(p, "contraction") or has_trait(p, "reduction") or p.regions:
                continue
            if view and not has_trait(p, "movement"):
                continue
            if not _only_inside(p, members | added | {p}, inlinable):
                continue
            added.add(p)
            stack.extend((x.op, view) for x in p.operands)
        return added


def causal(m: AttentionMatch) -> bool:
    """Are the scores `where(not(key - query <= 0), -inf, x)` over iotas of the scores' last two
    dims (what `is_causal` traces to)? Then keys after a query block's last row only add exp(-inf)
    = 0, and the kernels may skip those blocks."""
    w = m.scores.op
    if w is None or w.name != "where" or _splat(w.operands[1]) != float("-inf"):
        return False
    c = w.operands[0].op
    while c is not None and c.name == "broadcast":
        c = c.operands[0].op
    if c is None or c.name != "logical_not" or (le := c.operands[0].op) is None or le.name != "le":
        return False
    sub = le.operands[0].op
    if _splat(le.operands[1]) != 0.0 or sub is None or sub.name != "sub":
        return False
    j, i = (x.op for x in sub.operands)
    want = tuple(m.scores.shape[-2:])
    return (j is not None and i is not None and j.name == i.name == "iota" and tuple(j.attrs["shape"]) == want
            and tuple(i.attrs["shape"]) == want and j.attrs.get("axis", 0) == 1 and i.attrs.get("axis", 0) == 0)


ATTENTION = register_kind(Attention())

__all__ = ["ATTENTION", "Attention", "MAX_HEAD_DIM", "AttentionMatch", "causal", "match", "scores_of"]
