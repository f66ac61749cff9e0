"""Attention backward kernels (FlashAttention-2): dQ, dK and dV recomputing P per tile.

The group (`avalon.passes.attention_bwd.match_backward` names its roles) reads Q, K, V, dO, the
mask's index math, the forward's row max m and sum l, and the row term D/l; it yields dQ, dK, dV.
Grid: max(query blocks, key blocks) x batch*heads, and no atomics. Program i

1. owns key block i: walks the query blocks (from the diagonal on, for a causal mask), and per tile
   recomputes s = Q Kᵀ (plus the group's scale and masks), P = exp(s - m) / l, dP = dO Vᵀ and dS
   (the group's own elementwise ops); accumulates dV += Pᵀ dO and dK += dSᵀ Q;
2. owns query block i: walks the key blocks (up to the diagonal, for a causal mask), recomputes the
   same tile and accumulates dQ += dS K.

Everything between the matmuls is emitted by the value emitter at (row, key), as in the forward:
with dropout, dV = P'ᵀ dO reads P' = dropout(P) and dS reads dropout's mirror of dP, both drawing
the forward's counter-based random bits for that element.
"""
from __future__ import annotations

from collections.abc import Sequence

from avalon.ir import dtypes as dt
from avalon.passes.attention import causal, match
from avalon.passes.attention_bwd import AttentionBwd

from . import types as ty
from .attention import LOG2E, attention_blocks, scale_of
from .blocks import BlockPolicy, KernelConfig, cdiv
from .contraction import _operand
from .emitter import Emitter, Unsupported, Val
from .gemms import _matmul
from .group import Group
from .indexing import Affine, index_key
from .kernel import Kernel, assemble


def _is_causal(m) -> bool:
    """Causal block skipping needs the scores to be `causal`'s shape (see the forward)."""
    fake = type("M", (), {"scores": m.scores})
    try:
        return causal(fake)
    except (AttributeError, KeyError):
        return False


def build_attention_bwd(group: Group, in_strides: Sequence[Sequence[int]], out_strides: Sequence[Sequence[int]],
                        policy: BlockPolicy, config: KernelConfig | None = None) -> Kernel:
    """`config`: the autotuner's candidate (BM x BN tiles, warps, stages); any BM and BN work, the
    causal walk starts at the key block's first query block."""
    m = AttentionBwd._match(group.kernel_group())
    if isinstance(m, str):
        raise Unsupported(m)
    outs = {id(m.dq.result): "dq", id(m.dk.result): "dk", id(m.dv.result): "dv"}
    if any(id(o) not in outs for o in group.outputs):
        raise Unsupported("an attention backward group yields dQ, dK and dV only")
    qk, dp = m.qk, m.dp
    L, S = m.scores.shape[-2:]
    E, Ev = qk.operands[0].shape[-1], dp.operands[0].shape[-1]
    G = 1
    for b in m.scores.shape[:-2]:
        G *= b
    res = m.dq.result
    acc_d = dt.float64 if res.dtype == dt.float64 else dt.float32
    ft = ty.tl_type(acc_d)
    half = res.dtype in (dt.float16, dt.bfloat16) and not (res.dtype == dt.bfloat16 and policy.interpret)
    prec = f', input_precision="{policy.precision(qk.name)}"' if acc_d == dt.float32 and not half else ""
    # P and dS meet 16-bit operand tiles (Q, K, dO) in tl.dot: same dtype, as the forward's P
    lo16 = f".to({ty.tl_type(res.dtype)})" if half else ""
    cz = _is_causal(m)
    meta = config.blocks if config else attention_blocks(policy, L, S, E, Ev)
    em = Emitter(group.inputs, in_strides, dots_in_f32=policy.interpret)
    g = Affine.of(em.define_var("gz", "tl.program_id(1)", G)) if G > 1 else Affine()
    em.scalars.add("gz")
    gdeps = frozenset({"gz"}) if G > 1 else frozenset()
    em.line("pid = tl.program_id(0)")
    fixed = {}
    for name, expr, n, msk, block, shape in (("re", "tl.arange(0, BE)[None, :]", E, "mask_e", "BE", "[1, BE]"),
                                             ("rek", "tl.arange(0, BE)[:, None]", E, "mask_ek", "BE", "[BE, 1]"),
                                             ("rv", "tl.arange(0, BV)[None, :]", Ev, "mask_v", "BV", "[1, BV]"),
                                             ("rvk", "tl.arange(0, BV)[:, None]", Ev, "mask_vk", "BV", "[BV, 1]")):
        fixed[name] = Affine.of(em.define_var(name, expr, n, msk))
        em.bound(msk, name, n, meta[block], shape)
    g1, gp, gq, gk, gv = _matmul(qk), _matmul(dp), _matmul(m.dq), _matmul(m.dk), _matmul(m.dv)
    by_l = [op for op in m.core if op.name == "div" and op.operands[1] is m.div.operands[1]]  # P's, dP's
    # scores qk * c read only by exp(s - m): its exponent is qk * (c log2 e) - m log2 e, one FMA, with
    # the scale kept out of the scores (the forward's form, `attention.scale_of`)
    e_op = m.div.operands[0].op
    fold = scale_of(m, qk, group) if acc_d == dt.float32 and e_op is not None and e_op.name == "exp" else None
    if fold is not None:
        def uses(v):
            return sum(op.operands.count(v) for op in group.ops)
        sb = e_op.operands[0].op
        if sb is None or sb.name != "sub" or sb.operands[0] is not m.scores or uses(m.scores) != 1:
            fold = None
    log2e = repr(fold[1] * LOG2E if fold is not None else LOG2E)
    deps = frozenset({"rm", "rn"}) | gdeps

    def tile(rm: Affine, rn: Affine, below_diagonal: bool = False) -> tuple[str, str, str]:
        """Recompute P and dS at (rows rm, keys rn); returns (p, ds, do) tile names. Below the
        diagonal (causal; every key of the tile at or before every row) the scores are read without
        the mask, which is all false there (the forward splits its loop the same way)."""
        # the other loop's P tile is not in scope here (compiled Triton scopes the `if` blocks)
        key = index_key(g1.out({"g": g, "m": rm, "n": rn}))
        em.overrides.pop((id(m.div.result), key), None)
        em.overrides.pop((id(m.scores), key), None)
        em.overrides.pop((id(m.scores.op.operands[0]), key), None)
        if fold is not None:
            em.overrides.pop((id(fold[0]), key), None)
        q = _operand(em, qk.operands[0], "q", g1.a, {"g": g, "m": rm, "ka": fixed["re"]}, ("rm", "re"))
        kt = _operand(em, qk.operands[1], "kt", g1.b, {"g": g, "kb": fixed["rek"], "n": rn}, ("rek", "rn"))
        em.line(f"qk = tl.dot({q}, {kt}{prec}).to({ft})")
        do = _operand(em, dp.operands[0], "do", gp.a, {"g": g, "m": rm, "ka": fixed["rv"]}, ("rm", "rv"))
        vt = _operand(em, dp.operands[1], "vt", gp.b, {"g": g, "kb": fixed["rvk"], "n": rn}, ("rvk", "rn"))
        em.line(f"dp = tl.dot({do}, {vt}{prec}).to({ft})")
        idx = g1.out({"g": g, "m": rm, "n": rn})
        em.overrides[(id(qk.result), index_key(idx))] = Val("qk", qk.result.dtype, em.scope, deps)
        em.overrides[(id(dp.result), index_key(idx))] = Val("dp", dp.result.dtype, em.scope, deps)
        if fold is not None:
            em.overrides[(id(fold[0]), key)] = Val("qk", qk.result.dtype, em.scope, deps)
        if below_diagonal:  # (after the qk override: the unmasked scores read this tile's qk)
            em.overrides[(id(m.scores), key)] = em.value(m.scores.op.operands[2], idx)
            # dS's where(mask, 0, ...) (the where's derivative) reads the same mask: false here
            em.overrides[(id(m.scores.op.operands[0]), key)] = Val("False", dt.bool_, em.scope)
        e = m.div.operands[0]  # exp(s - m) as exp2(s * log2(e) - m * log2(e)), as the forward computes it
        if acc_d == dt.float32 and e.op is not None and e.op.name == "exp" and (sb := e.op.operands[0].op) \
                is not None and sb.name == "sub":
            em.overrides.pop((id(e), key), None)
            x, mrow = em.value(sb.operands[0], idx), em.value(sb.operands[1], idx)
            ml = em.emit(f"({mrow.expr}).to(tl.float32) * {LOG2E!r}", dt.float32, vals=(mrow,), prefix="m_log2")
            em.overrides[(id(e), key)] = em.emit(f"tl.exp2(({x.expr}).to(tl.float32) * {log2e} - {ml.expr})",
                                                 e.dtype, vals=(x, ml), prefix="exp2")
        # P = e / l and the softmax gradient's dP / l divide by the forward's row sum l (at least 1,
        # or NaN for a row that sees no key): one reciprocal a row and a multiply an element. A
        # division an element costs its range checks even where ptxas shares the reciprocal: the
        # 16-bit causal backward (B8 H16 L1024 E64) went from 4096 to 3840 sm_90 SASS instructions
        inv = em.value(m.div.operands[1], idx)
        inv = em.emit(f"1.0 / {inv.expr}", inv.dtype, vals=(inv,), prefix="inv_l")
        for d in by_l:
            em.overrides.pop((id(d.results[0]), key), None)
            x = em.value(d.operands[0], idx)
            em.overrides[(id(d.results[0]), key)] = em.emit(f"{x.expr} * {inv.expr}", d.results[0].dtype,
                                                            vals=(x, inv), prefix="divl")
        live = "mask_m & mask_n"
        p = em.value(m.div.result, idx)
        em.line(f"p = tl.where({live}, ({p.expr}).to({ft}), 0.0)")
        em.overrides[(id(m.div.result), index_key(idx))] = Val("p", m.div.result.dtype, em.scope, deps)
        ds = em.value(m.ds, idx)
        em.line(f"ds = tl.where({live}, ({ds.expr}).to({ft}), 0.0)")
        if m.pdrop is not None and m.pdrop is not m.div.result:  # dropout: dV reads P' (the forward's bits)
            pd = em.value(m.pdrop, idx)
            em.line(f"pd = tl.where({live}, ({pd.expr}).to({ft}), 0.0)")
            return "pd", "ds", do
        return "p", "ds", do

    def rows(name: str, start: str, block: str, column: bool, n: int, msk: str) -> Affine:
        """`block` rows or keys from `start` (a multiple of it, below n) as a column or a row."""
        a = Affine.of(em.define_var(name, f"{start} + tl.arange(0, {block})[{':, None' if column else 'None, :'}]",
                                    n, msk))
        em.bound(msk, name, n, meta[block], f"[{block}, 1]" if column else f"[1, {block}]")
        return a

    # 1. key block pid: dK, dV
    em.open(f"if pid * BN < {S}:")
    rn = rows("rn", "pid * BN", "BN", False, S, "mask_n")
    rk = rows("rk", "pid * BN", "BN", True, S, "mask_k")
    em.line(f"acc_dk = tl.zeros([BN, BE], {ft})")
    em.line(f"acc_dv = tl.zeros([BN, BV], {ft})")
    def query_loop(lo: str, hi: str, below: bool) -> None:
        em.open(f"for m0 in range({lo}, {hi}, BM):")
        rm = rows("rm", "m0", "BM", True, L, "mask_m")
        p, ds, _ = tile(rm, rn, below)
        do2 = _operand(em, m.dv.operands[1], "dov", gv.b, {"g": g, "kb": rm, "n": fixed["rv"]}, ("rm", "rv"))
        q2 = _operand(em, m.dk.operands[1], "qd", gk.b, {"g": g, "kb": rm, "n": fixed["re"]}, ("rm", "re"))
        em.line(f"acc_dv += tl.dot(tl.trans({p}{lo16}), {do2}{prec}).to({ft})")
        em.line(f"acc_dk += tl.dot(tl.trans({ds}{lo16}), {q2}{prec}).to({ft})")
        em.close()

    if cz:  # query blocks from the one holding the key block's first key; from the first whose
        # first row follows its last key on, the tiles lie below the diagonal
        below = f"tl.minimum(((pid + 1) * BN + BM - 1) // BM * BM, {L})"
        query_loop("(pid * BN // BM) * BM", below, False)
        query_loop(below, str(L), True)
    else:
        query_loop("0", str(L), False)
    for j, o in enumerate(group.outputs):
        role = outs[id(o)]
        if role in ("dk", "dv"):
            gm, col, acc = (gk, "re", "acc_dk") if role == "dk" else (gv, "rv", "acc_dv")
            idx = gm.out({"g": g, "m": rk, "n": fixed[col]})
            em.store(f"out{j}", out_strides[j], o.shape, idx, Val(acc, o.dtype, em.scope, frozenset({"rk", col})
                                                                   | gdeps), o.dtype, ["rk", col])
    em.close()
    # 2. query block pid: dQ
    if "dq" in [outs[id(o)] for o in group.outputs]:
        em.open(f"if pid * BM < {L}:")
        rm = rows("rm", "pid * BM", "BM", True, L, "mask_m")
        em.line(f"acc_dq = tl.zeros([BM, BE], {ft})")
        def key_loop(lo: str, hi: str, below: bool) -> None:
            em.open(f"for n0 in range({lo}, {hi}, BN):")
            rn = rows("rn", "n0", "BN", False, S, "mask_n")
            rk = rows("rk", "n0", "BN", True, S, "mask_k")
            p, ds, _ = tile(rm, rn, below)
            k2 = _operand(em, m.dq.operands[1], "kq", gq.b, {"g": g, "kb": rk, "n": fixed["re"]}, ("rk", "re"))
            em.line(f"acc_dq += tl.dot({ds}{lo16}, {k2}{prec}).to({ft})")
            em.close()

        if cz:  # key blocks before the query block's first row lie below the diagonal
            diagonal = "(pid * BM // BN) * BN"
            key_loop("0", diagonal, True)
            key_loop(diagonal, f"tl.minimum((pid + 1) * BM, {S})", False)
        else:
            key_loop("0", str(S), False)
        j = next(j for j, o in enumerate(group.outputs) if outs[id(o)] == "dq")
        o = group.outputs[j]
        idx = gq.out({"g": g, "m": rm, "n": fixed["re"]})
        em.store(f"out{j}", out_strides[j], o.shape, idx, Val("acc_dq", o.dtype, em.scope,
                                                               frozenset({"rm", "re"}) | gdeps), o.dtype, ["rm", "re"])
        em.close()
    src, params = assemble(group, "attention_bwd", em, ["BM", "BN", "BE", "BV"], [o.dtype for o in group.outputs])
    grid = (max(cdiv(L, meta["BM"]), cdiv(S, meta["BN"])) if L and S else 0, G)
    warps = config.num_warps if config else 1 if policy.interpret else 8
    stages = config.num_stages if config else 1 if policy.interpret else 2
    return Kernel(group.name, "attention_bwd", src, params, meta, grid, num_warps=warps, num_stages=stages,
                  problem={"l": L, "s": S, "e": E, "ev": Ev, "itemsize": qk.operands[0].dtype.itemsize})


__all__ = ["build_attention_bwd", "match"]
