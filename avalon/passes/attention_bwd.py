"""The `attention_bwd` kernel kind: the attention backward pass, FlashAttention-2 style.

`av.grad` of a loss through `softmax(Q Kᵀ·scale + mask) V` reads the forward's L x S values (P,
the exponentials e, the masked scores s), so as traced the forward cannot be one flash kernel.
`prepare` rewrites that training graph, where the pattern is exactly the one below, so that
neither pass stores an L x S value:

1. The max's cotangent is zero. The softmax is shift invariant, and autodiff's rule shows it: the
   exp rule gives w = (X/l - r/l)·e with r = sum_k(X·P) (X: P's cotangent), the max receives
   -sum_k w = -(sum_k X·P - r·sum_k P) = 0. Its tie-splitting term (eq(s, max) -> cast -> sum ->
   div -> times the ties) is dropped, only when w has exactly that form.
2. The row term is rewritten through the output: with X = dO Vᵀ and O = P V (the same V),
   sum_k X_ik P_ik = sum_e dO_ie O_ie = D_i (a small reduction kernel, L x Ev).
3. The forward's score and softmax ops are recomputed for the backward (rematerialized): the
   backward reads Q, K, the mask's index math, and the row max and sum, which the forward kernel
   stores (`attention.py`), instead of P, e and s.

What is left is one `attention_bwd` group, found by `AttentionBwd.find` (`match_backward` names
its roles): it yields dQ = dS K, dK = dSᵀ Q and dV = Pᵀ dO, dS = f(P ∘ (dP - D)) with f the
mask's zeroing and the scale. Dropout between P and V (P' = where(keep, P·c, 0), linear in P)
is recomputed per tile from the same seed and counters: the forward's chain of ops from P to P'
is cloned with P (so the backward owns its copy of the random bits' index math), and dP reaches
the softmax gradient through autodiff's mirror of that chain (where(keep, dO Vᵀ, 0)·c), so
dV = P'ᵀ dO and the row term D = rowsum(dO ∘ O) stay exact (O = P' V).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from avalon.channels import get_logger
from avalon.ir import Graph, Op, Value
from avalon.ir.builder import Builder

from .attention import Attention, _last_axis_keepdims, _splat, _through_broadcast, match, scores_of
from .dce import dce
from .target import Issue, KernelGroup, KernelKind, has_trait, register_kind

log = get_logger("fusion")
_PURE_LIMIT = 16  # ops of index math (iota masks) cloned per side value


def _users(v: Value) -> list[Op]:
    return list(dict.fromkeys(u for u, _ in v.uses))


def _other(op: Op, v: Value) -> Value | None:
    """The operand of binary `op` that is not `v` (None if `v` is not exactly one of them)."""
    a, b = op.operands[:2]
    return b if a is v and b is not v else a if b is v and a is not v else None


def _is_t(op: Op | None) -> bool:
    """A transpose of the last two axes."""
    if op is None or op.name != "transpose":
        return False
    r = op.operands[0].type.rank
    return list(op.attrs["perm"]) == [*range(r - 2), r - 1, r - 2]


def _view(v: Value) -> tuple[Value, list[int]]:
    """(base, perm): `v` is transpose(base, perm), composing a chain of transposes (canonicalize
    folds transpose(transpose(x)) into one, so Vᵀ may be one transpose of V's own source)."""
    perm = list(range(v.type.rank))
    while v.op is not None and v.op.name == "transpose":
        p = list(v.op.attrs["perm"])
        perm = [p[c] for c in perm]
        v = v.op.operands[0]
    return v, perm


def _is_t_of(x: Value, v: Value) -> bool:
    """Is `x` the transpose of `v`'s last two axes (looking through chains of transposes)?"""
    (bx, px), (bv, pv) = _view(x), _view(v)
    r = v.type.rank
    return r >= 2 and x.type.rank == r and bx is bv and px == [pv[i] for i in [*range(r - 2), r - 1, r - 2]]


def _row_sum_of(v: Value, of: Value) -> bool:
    """Is `v` sum(of) over the last axis without keepdims?"""
    p = v.op
    return (p is not None and p.name == "sum" and p.operands[0] is of and not p.attrs.get("keepdims")
            and [a % of.type.rank for a in p.attrs["axes"]] == [of.type.rank - 1])


def _linear_step(op: Op, cur: Value) -> tuple[int, Value] | None:
    """If `op` is one of dropout's ops linear in its operand `cur` (`mul(cur, x)` or
    `where(c, cur, 0)`), (position of cur, the other operand: x or c); else None."""
    if op.name == "mul" and len(op.operands) == 2 and (x := _other(op, cur)) is not None:
        return op.operands.index(cur), x
    if op.name == "where":
        c, a, b = op.operands
        if a is cur and b is not cur and _splat(b) == 0.0:
            return 1, c
        if b is cur and a is not cur and _splat(a) == 0.0:
            return 2, c
    return None


def _drop_chain(P: Value, Pd: Value, core: set[Op]) -> list[tuple[Op, int, Value]] | None:
    """The forward's ops from P to P' (dropout: each linear in the previous value, a `core` op),
    P first, each with (position of the running value, its other operand); None if they are not."""
    chain, x = [], Pd
    while x is not P:
        op = x.op
        st = next(((c, st) for c in dict.fromkeys(op.operands) if (c is P or c.op in core)
                   and (st := _linear_step(op, c)) is not None), None) if op is not None else None
        if st is None or len(chain) >= 4:
            return None
        chain.append((op, *st[1]))
        x = st[0]
    return chain[::-1]


def _same_side(x: Value, y: Value) -> bool:
    return x is y or (_splat(x) is not None and _splat(x) == _splat(y) and x.dtype == y.dtype)


def _unmirror(x: Value, chain: Sequence[tuple[Op, int, Value]]) -> tuple[Value, list[Op]] | None:
    """Autodiff's mirror of the dropout chain P -> P' (P first): P's cotangent is
    f_nᵀ(...f_1ᵀ(X)) with X the cotangent of P' and f_1 the op nearest P'; walking back from `x`,
    P's cotangent: (X, the mirror's ops) or None. The mirror of `mul(p, c)` is `mul(ct, c)`, of
    `where(k, p, 0)` is `where(k, ct, 0)` (same position); each mirror op is used once."""
    ops: list[Op] = []
    for f, pos, side in chain:
        op = x.op
        if op is None or op.name != f.name or (ops and len(_users(x)) != 1):
            return None
        got = None
        for cand in dict.fromkeys(op.operands):
            st = _linear_step(op, cand)
            if st is not None and _same_side(st[1], side) and (f.name == "mul" or st[0] == pos):
                got = cand
                break
        if got is None:
            return None
        ops.append(op)
        x = got
    return x, ops


@dataclass
class BackwardMatch:
    """The roles of one attention backward group (see the module docstring)."""

    qk: Op
    scores: Value
    div: Op  # P = e / broadcast(l)
    dp: Op  # dP = dO Vᵀ
    dv: Op  # Pᵀ dO
    dq: Op  # dS K
    dk: Op  # dSᵀ Q
    ds: Value
    core: list[Op] = field(default_factory=list)
    side: list[Value] = field(default_factory=list)
    pdrop: Value | None = None  # P' = dropout(P), what dV reads (P itself without dropout)


def _row_stat(v: Value, reduce: str, s: Value) -> Value | None:
    """`v = broadcast(x)` with x (..., L, 1): the forward's row `reduce` (max, sum) over the last
    axis, or a value read from outside (a group input, which the forward kernel stored)."""
    p = v.op
    if p is None or p.name != "broadcast":
        return None
    x = p.operands[0]
    if tuple(x.shape) != (*s.shape[:-1], 1):
        return None
    r = x.op
    if r is not None and (r.name != reduce or not _last_axis_keepdims(r, r.operands[0])):
        return None
    return x


def _softmax(div: Op) -> tuple[Op, Op, Value, Value] | str:
    """(exp, sub, max value, sum value) of P = exp(s - bcast(m)) / bcast(l), m and l (..., L, 1)."""
    e, bl = div.operands
    ex = e.op
    if ex is None or ex.name != "exp" or (sub := ex.operands[0].op) is None or sub.name != "sub":
        return "P is not exp(s - max) over its row sum"
    s = sub.operands[0]
    mxv, smv = _row_stat(sub.operands[1], "max", s), _row_stat(bl, "sum", s)
    if mxv is None or smv is None:
        return "P is not exp(s - max) over its row sum"
    return ex, sub, mxv, smv


def match_backward(div: Op) -> BackwardMatch | str:
    """The recomputing attention backward around the probabilities `div`, or why it is not one."""
    if div.name != "div":
        return "not a softmax's division"
    got = _softmax(div)
    if isinstance(got, str):
        return got
    ex, sub, mxv, smv = got
    if mxv.op is not None and mxv.op.operands[0] is sub.operands[0]:
        return "the row max is computed here, not read (the forward's probabilities)"
    sc = scores_of(sub.operands[0])
    if isinstance(sc, str):
        return sc
    qk, path, side = sc
    P, e = div.result, ex.result
    # P' = dropout(P) (or P itself): the chain of linear ops from P to the one transposed for dV
    chain, Pd = [], P
    while len(us := _users(Pd)) == 1 and _linear_step(us[0], Pd) is not None and len(chain) < 4:
        chain.append((us[0], *_linear_step(us[0], Pd)))
        Pd = us[0].results[0]
    (t1, *rest) = _users(Pd) or [None]
    if rest or not _is_t(t1) or len(us := _users(t1.result)) != 1 or us[0].name != "matmul" \
            or us[0].operands[0] is not t1.result:
        return "P is used other than by dV = Pᵀ dO (through dropout)"
    dv = us[0]
    do = dv.operands[1]
    eu = [u for u in _users(e) if u is not div]
    if len(eu) != 1 or eu[0].name != "mul" or (u := _other(eu[0], e)) is None or u.op is None \
            or u.op.name != "add":
        return "the exponentials are used other than by the softmax and its gradient (w = u·e)"
    w_op = eu[0]
    t, bd = u.op.operands
    if t.op is None or t.op.name != "div":
        t, bd = bd, t
    if t.op is None or t.op.name != "div" or _row_stat(t.op.operands[1], "sum", sub.operands[0]) is not smv \
            or bd.op is None or bd.op.name != "broadcast":
        return "the softmax gradient is not dP / l + broadcast(row term)"
    um = _unmirror(t.op.operands[0], chain)
    if um is None:
        return "P's cotangent is not dropout's mirror of dO Vᵀ (the mask and scale of the forward's)"
    dp = um[0].op
    if dp is None or dp.name != "matmul" or dp.operands[0] is not do or (vt := dp.operands[1].op) is None \
            or vt.name != "transpose":
        return "dP is not dO Vᵀ with the dO of dV"
    dchain, cur = [], w_op.result
    while len(us := _users(cur)) == 1 and has_trait(us[0], "elementwise") and us[0].results[0].shape == cur.shape:
        dchain.append(us[0])
        side += [x for x in us[0].operands if x is not cur]
        cur = us[0].results[0]
    us = _users(cur)
    dq = next((x for x in us if x.name == "matmul" and x.operands[0] is cur), None)
    t2 = next((x for x in us if _is_t(x)), None)
    dk = _users(t2.result)[0] if t2 is not None and len(_users(t2.result)) == 1 else None
    if len(us) != 2 or dq is None or dk is None or dk.name != "matmul" or dk.operands[0] is not t2.result:
        return "dS is used other than by dQ = dS K and dK = dSᵀ Q"
    bcasts = [x.op for x in (sub.operands[1], div.operands[1], t.op.operands[1]) if x.op is not None
              and x.op.name == "broadcast"]
    core = [qk, *path, sub, ex, div, *[op for op, _, _ in chain], *bcasts, t1, dv, dp, *um[1], t.op, u.op,
            w_op, *dchain, t2, dq, dk]
    drop = {op for op, _, _ in chain} | set(um[1])
    side += [x for op in drop for x in op.operands if x.op not in drop and x not in (P, dp.result)]
    side += [sub.operands[1], div.operands[1], t.op.operands[1], bd, *qk.operands, do, dp.operands[1],
             dq.operands[1], dk.operands[1]]
    return BackwardMatch(qk, sub.operands[0], div, dp, dv, dq, dk, cur, list(dict.fromkeys(core)),
                         list(dict.fromkeys(side)), Pd)


class AttentionBwd(KernelKind):
    """dQ, dK, dV of attention recomputing P per tile (see the module docstring)."""

    name = "attention_bwd"

    @staticmethod
    def _match(g: KernelGroup) -> BackwardMatch | str:
        divs = [op for op in g.ops if op.name == "div" and op.results[0].type.rank >= 2
                and not isinstance(match_backward(op), str)]
        return match_backward(divs[0]) if len(divs) == 1 else "no single recomputed softmax"

    def claims(self, g: KernelGroup) -> bool:
        # five matmuls and no reduction: only this pattern; claimed only when it matches
        return len(g.with_trait("contraction")) >= 5 and not g.with_trait("reduction") \
            and not isinstance(self._match(g), str)

    def issues(self, g: KernelGroup) -> Iterator[Issue]:
        m = self._match(g)
        assert not isinstance(m, str)
        if any(o not in (m.dq.result, m.dk.result, m.dv.result) for o in g.outputs):
            yield Issue("an attention backward kernel yields dQ, dK and dV only (an L x S value would be stored)")
        core = set(m.core)
        if any(op not in core and (has_trait(op, "contraction") or has_trait(op, "reduction")) for op in g.ops):
            yield Issue("the group holds a matmul or reduction that is not the attention backward's")
        d = m.dq.result.dtype
        if not d.is_float or any(op.results[0].dtype != d for op in (m.qk, m.dp, m.dv, m.dk)):
            yield Issue("attention backward kernels compute in one float dtype")

    def find(self, ops: Sequence[Op], inlinable) -> Iterator[tuple[list[Op], str | None]]:
        index = {op: i for i, op in enumerate(ops)}
        for div in ops:
            if div.name != "div" or (m := match_backward(div)) is None or isinstance(m, str):
                continue
            members = set(m.core)
            if any(op not in index for op in members):
                continue
            outs = (m.dq, m.dk, m.dv)
            leak = next((op for op in m.core if op not in outs and any(
                u not in members for r in op.results for u, _ in r.uses)), None)
            if leak is not None:
                yield sorted(members, key=index.__getitem__), (
                    f"'{leak.name}' of the attention backward is used outside it; the L x S values would "
                    "have to be stored")
                continue
            views = [x for op in (m.qk, m.dp, m.dq, m.dk, m.dv) for x in op.operands if x.op not in members]
            members |= Attention._side_producers(m.side, views, members, index, inlinable)
            yield sorted(members, key=index.__getitem__), None

    def prepare(self, graph: Graph) -> None:
        """Rewrite training graphs so the forward and the backward each become one kernel."""
        made = _restore_outputs(graph)
        for pv in list(graph.ops):
            if pv.parent is graph.body and pv.name == "matmul" and not isinstance(m := match(pv), str):
                why = _prepare_one(graph, m)
                if why:
                    log.debug("not preparing the attention backward at '%s': %s", pv.name, why)
                    if pv in made and not any(r.uses for r in pv.results):
                        pv.erase()  # put back for nothing


def _restore_outputs(graph: Graph) -> set[Op]:
    """`av.grad` of a loss through attention (not `value_and_grad`) needs no forward output, so
    P V is gone when this runs; the backward still has dP = dO Vᵀ. Put O = P V back (the forward
    kernel computes it anyway, and the backward's row term reads it), so the pattern is whole."""
    made: set[Op] = set()
    for div in list(graph.ops):
        if div.parent is not graph.body or div.name != "div" or div.operands[0].op is None \
                or div.operands[0].op.name != "exp":
            continue
        P, bl = div.results[0], div.operands[1]
        if any(u.name == "matmul" and u.operands[0] is P for u in _users(P)):
            continue  # the forward's P V is there
        for t in _users(bl):
            X = t.operands[0] if t is not div and t.name == "div" and t.operands[1] is bl else None
            dp = X.op if X is not None else None
            if dp is None or dp.name != "matmul" or not _is_t(dp.operands[1].op):
                continue
            V = dp.operands[1].op.operands[0]
            made.add(Builder(graph.body, before=t)("matmul", P, V).op)
            break
    return made


def _pure(v: Value) -> bool:
    """Is `v` index math (iota, constants and ops over them only), or dropout's random bits (a
    `random` op over index math and scalars: the seed, a rank-0 input or computed from one)?"""
    stack, n, rand, scalar_in = [v], 0, False, False
    while stack:
        x = stack.pop()
        p = x.op
        n += 1
        if n > _PURE_LIMIT:
            return False
        if p is None:
            if x.type.rank:
                return False
            scalar_in = True
            continue
        if p.regions or has_trait(p, "contraction") or has_trait(p, "reduction"):
            return False
        rand |= p.name == "random"
        stack.extend(p.operands)
    return rand or not scalar_in


def _clone(b: Builder, v: Value, memo: dict[Value, Value], copy) -> Value:
    """`v` recomputed by copies of its producers for which `copy(op)` holds (memo: copied values)."""
    if v in memo:
        return memo[v]
    p = v.op
    if p is None or not copy(p):
        return v
    new = b(p.name, *[_clone(b, x, memo, copy) for x in p.operands], **dict(p.attrs))
    memo[v] = new
    return new


def _prepare_one(graph: Graph, m) -> str | None:
    P, bl = m.div.result, m.div.operands[1]
    e, s = m.div.operands[0], m.scores
    core = set(m.core)
    Pd = m.pv.operands[0]
    chain = _drop_chain(P, Pd, core)
    if chain is None:
        return "the ops between the softmax and V are not a chain of dropout's"
    drops = [op.results[0] for op, _, _ in chain]  # P' and the values between P and P'
    outside = [u for v in (P, e, s, *drops) for u in _users(v) if u not in core]
    if not outside:
        return None  # inference: nothing reads the forward's L x S values
    held = {op for op in m.core if op.name != "broadcast"} - {m.div, m.div.operands[0].op, s.op, m.pv, m.mx, m.sm,
                                                              *(op for op, _, _ in chain)}
    if any(u not in core for op in held for r in op.results for u, _ in r.uses):
        return "the scores are read other than by the softmax (not rewritten; the forward keeps them)"
    order = {op: i for i, op in enumerate(graph.ops)}
    # X: P's cotangent, t = X / bl, r = sum(-(t·P)), u = t + bcast(reshape(r)), w = u·e
    ts = [u for u in _users(bl) if u is not m.div and u.name == "div" and u.operands[1] is bl]
    if len(ts) != 1:
        return "the softmax's row sum is not read once by its gradient (dP / l)"
    t = ts[0].result
    tp = [u for u in _users(P) if u.name == "mul" and _other(u, P) is t]
    ws = [u for u in _users(e) if u.name == "mul" and u not in core]
    if len(tp) != 1 or len(ws) != 1:
        return "the softmax gradient is not the vjp of exp / sum"
    neg = _users(tp[0].result)
    r = _users(neg[0].result)[0].result if len(neg) == 1 and neg[0].name == "neg" and \
        len(_users(neg[0].result)) == 1 else None
    w = ws[0].result
    u = _other(ws[0], e)
    if r is None or not _row_sum_of(r, neg[0].result) or u is None or u.op is None or u.op.name != "add" \
            or _other(u.op, t) is None:
        return "the softmax gradient is not t + broadcast(-sum(t·P))"
    rb = _other(u.op, t).op
    if rb is None or rb.name != "broadcast" or (rs := rb.operands[0].op) is None or rs.name != "reshape" \
            or rs.operands[0] is not r:
        return "the softmax gradient is not t + broadcast(-sum(t·P))"
    um = _unmirror(t.op.operands[0], chain)
    dp = um[0].op if um is not None else None
    if dp is None or dp.name != "matmul" or not _is_t_of(dp.operands[1], m.pv.operands[1]):
        return "P's cotangent is not dO Vᵀ (with the V of the forward), through dropout's mirror"
    # 1. the max's tie-splitting term: add(w, h), h = bcast(reshape(sum(-w)) / ties) · cast(eq(s, bmx))
    for a in [x for x in _users(w) if x.name == "add"]:
        h = _other(a, w)
        hop = h.op if h is not None else None
        if hop is None or hop.name != "mul" or len(hop.operands) != 2:
            continue
        bc, ind = hop.operands if hop.operands[0].op is not None and hop.operands[0].op.name == "broadcast" \
            else hop.operands[::-1]
        dv = _through_broadcast(bc, "div")
        cast = ind.op
        eq = cast.operands[0].op if cast is not None and cast.name == "cast" else None
        if dv is None or eq is None or eq.name != "eq" or eq.operands[0] is not s \
                or _through_broadcast(eq.operands[1], "max") is not m.mx:
            continue
        num = dv.operands[0].op
        nsum = num.operands[0] if num is not None and num.name == "reshape" else None
        if nsum is None or nsum.op is None or nsum.op.operands[0].op is None:
            continue
        nw = nsum.op.operands[0].op
        if nw.name == "neg" and nw.operands[0] is w and _row_sum_of(nsum, nw.results[0]):
            a.results[0].replace_all_uses_with(w)  # -sum_k w = 0 exactly (module docstring, 1.)
    # 2. r = -D / l with D = rowsum(dO ∘ O)
    b = Builder(graph.body, before=r.op)
    do, O = dp.operands[0], m.pv.result
    rank = O.type.rank
    D = b("sum", b("mul", do, O), axes=[rank - 1])
    r.replace_all_uses_with(b("neg", b("div", D, b("reshape", m.sm.result, shape=list(r.shape)))))
    dce(graph)
    # 3. recompute s, e and P for what remains outside the forward
    outside = sorted({u for v in (P, e, s, bl, m.div.operands[0], *drops) for u in _users(v) if u not in core},
                     key=order.__getitem__)
    if not outside:
        return None
    b = Builder(graph.body, before=outside[0])
    memo: dict[Value, Value] = {}
    for x in {x for op in m.core for x in op.operands if x.op not in core}:  # reads of the forward
        if x.op is not None and x.op.name != "constant" and _pure(x):
            _clone(b, x, memo, lambda op: True)  # index math (masks) is recomputed too, so both kernels own theirs
    for x in (m.mx.result, m.sm.result):
        memo[x] = x
    for v in (P, bl, e, s, *drops):
        _clone(b, v, memo, core.__contains__)
    for op in outside:
        for i, x in enumerate(op.operands):
            if x in memo and x.op in core:
                op.set_operand(i, memo[x])
    new = {y.op for y in memo.values()} | {x.op for x, y in memo.items() if x is not y}
    start = order[outside[0]]
    for x, y in list(memo.items()):  # the backward's own reads of the mask math: the copies
        if x is not y and x.op not in core:
            for u, i in list(x.uses):
                # only readers after the copies: the mask math is CSE'd across layers, and another
                # layer's forward, earlier in the program, keeps reading the original
                if u not in core and u not in new and u.parent is graph.body and order.get(u, -1) >= start:
                    u.set_operand(i, y)
    return None


ATTENTION_BWD = register_kind(AttentionBwd())

__all__ = ["ATTENTION_BWD", "AttentionBwd", "BackwardMatch", "match_backward"]
