"""Attention kernels: `softmax(Q Kᵀ·scale + mask) V` in one pass over the keys (flash attention).

The group is the whole pattern (`avalon.passes.attention.match` names its roles). Each program owns
BM queries of one (batch, head) (grid: query blocks x batch*heads) and walks the keys BN at a time:

    s   = Q_blk K_blkᵀ, then the group's own elementwise ops (scale, masks) at (row, key)
    m'  = max(m, rowmax(s));  p = exp(s - m');  l = l·exp(m - m') + rowsum(p)
    acc = acc·exp(m - m') + p' V_blk          (p' = the group's dropout applied to p)

and stores acc / l, plus the row max m and sum l when the group yields them (the backward pass
recomputes P = exp(s - m) / l from them). With a causal mask the key loop stops at the query
block's diagonal: later keys only add exp(-inf) = 0. The L x S scores never exist in memory.
Because `p'` is linear in the probabilities, applying it to the unnormalized `p` and dividing by
`l` once at the end is exact.

Everything between the two matmuls is emitted by the ordinary value emitter at index (row, key):
`qk` and the softmax's `div` are overridden with the running tiles, so masks (iota formulas, bool
or float mask loads) and dropout's counter-based random bits come out exactly as the reference
computes them for that element. Rows whose keys are all masked stay -inf (the running max is
shifted to 0 there so exp never sees -inf - -inf) and end as 0/0 = nan, like the reference.
"""
from __future__ import annotations

from collections.abc import Sequence

from avalon.ir import dtypes as dt
from avalon.ir.core import Value
from avalon.passes.attention import causal, match

from . import types as ty
from .blocks import BlockPolicy, KernelConfig, cdiv, next_pow2
from .contraction import _operand
from .emitter import Emitter, Unsupported, Val
from .gemms import _matmul
from .group import Group
from .indexing import Affine, index_key
from .kernel import Kernel, assemble
from .lowering import splat_value


def attention_blocks(policy: BlockPolicy, L: int, S: int, E: int, Ev: int) -> dict[str, int]:
    """BM queries x BN keys per step; head dims padded to powers of two (tl.dot wants >= 16).
    The interpreter wants few, large programs; a GPU wants BN about half of BM (FA2's 128 x 64)."""
    def tile(n: int, cap: int) -> int:
        return max(16, min(next_pow2(n), cap))
    bn_cap = policy.mm_block if policy.interpret else max(16, policy.mm_block // 2)
    return {"BM": tile(L, policy.mm_block), "BN": tile(S, bn_cap), "BE": tile(E, 1 << 30), "BV": tile(Ev, 1 << 30)}


LOG2E = 1.4426950408889634


def scale_of(m, qk, group: Group) -> tuple[Value, float] | None:
    """(scores' scale op result, its scale) when the scores are `qk * c` with c > 0, or that under a
    -inf mask: the kernel then takes the row max of the unscaled (masked) qk, scales the max by
    c * log2(e), and computes p = exp2(qk * c * log2(e) - max) in one FMA, its online softmax in
    log2 units (FlashAttention's and Triton's tutorial's form); the row max it stores is converted
    back to the scores' units."""
    x = m.scores
    if x.op is not None and x.op.name == "where" and splat_value(x.op.operands[1]) == float("-inf"):
        x = x.op.operands[2]
    if x.op is None or x.op.name != "mul" or (x is not m.scores and sum(op.operands.count(x) for op in group.ops) != 1):
        return None  # (the scaled scores read by anything but the masked scores: kept as they are)
    for a, b in (x.op.operands, reversed(x.op.operands)):
        c = splat_value(b)
        if a is qk.result and c is not None and c > 0:
            return x, c
    return None


def build_attention(group: Group, in_strides: Sequence[Sequence[int]], out_strides: Sequence[Sequence[int]],
                    policy: BlockPolicy, config: KernelConfig | None = None) -> Kernel:
    pvs = [o.op for o in group.outputs if o.op is not None and o.op.name == "matmul"]
    if len(pvs) != 1:
        raise Unsupported("an attention group yields the second matmul's result")
    m = match(pvs[0])
    if isinstance(m, str):
        raise Unsupported(m)
    qk, pv, res = m.qk, m.pv, m.pv.result
    if any(o not in (res, m.mx.result, m.sm.result) for o in group.outputs):
        raise Unsupported("an attention group yields the output and the row max and sum only")
    if any(op not in group.ops for op in m.core):
        raise Unsupported("the attention pattern is not all inside the group")
    L, S = m.scores.shape[-2:]
    E, Ev = qk.operands[0].shape[-1], pv.operands[1].shape[-1]
    batch = res.shape[:-2]
    G = 1
    for b in batch:
        G *= b
    acc_d = dt.float64 if res.dtype == dt.float64 else dt.float32
    ft = ty.tl_type(acc_d)
    half = res.dtype in (dt.float16, dt.bfloat16) and not (res.dtype == dt.bfloat16 and policy.interpret)
    prec = f', input_precision="{policy.precision(qk.name)}"' if acc_d == dt.float32 and not half else ""
    meta = config.blocks if config else attention_blocks(policy, L, S, E, Ev)  # config: the autotuner's candidate
    em = Emitter(group.inputs, in_strides, dots_in_f32=policy.interpret)
    g = Affine.of(em.define_var("gz", "tl.program_id(1)", G)) if G > 1 else Affine()
    em.scalars.add("gz")
    gdeps = frozenset({"gz"}) if G > 1 else frozenset()
    rm = Affine.of(em.define_var("rm", "tl.program_id(0) * BM + tl.arange(0, BM)[:, None]", L, "mask_m"))
    em.bound("mask_m", "rm", L, meta["BM"], "[BM, 1]")
    re_ = Affine.of(em.define_var("re", "tl.arange(0, BE)[None, :]", E, "mask_e"))
    em.bound("mask_e", "re", E, meta["BE"], "[1, BE]")
    rek = Affine.of(em.define_var("rek", "tl.arange(0, BE)[:, None]", E, "mask_ek"))
    em.bound("mask_ek", "rek", E, meta["BE"], "[BE, 1]")
    rv = Affine.of(em.define_var("rv", "tl.arange(0, BV)[None, :]", Ev, "mask_v"))
    em.bound("mask_v", "rv", Ev, meta["BV"], "[1, BV]")
    g1, g2 = _matmul(qk), _matmul(pv)
    scaled = scale_of(m, qk, group) if acc_d == dt.float32 else None
    q = _operand(em, qk.operands[0], "q", g1.a, {"g": g, "m": rm, "ka": re_}, ("rm", "re"))
    em.line(f"m_i = tl.full([BM, 1], float('-inf'), {ft})")
    em.line(f"l_i = tl.zeros([BM, 1], {ft})")
    em.line(f"acc = tl.zeros([BM, BV], {ft})")

    def key_loop(lo: str, hi: str, below_diagonal: bool) -> None:
        """The online softmax over key blocks [lo, hi). Below the diagonal (causal, every key of
        the block before the query block's first row) the mask is all false: the scores are read
        without it, which saves its per-element index math (TorchInductor and the Triton tutorial
        split the loop the same way)."""
        em.open(f"for n0 in range({lo}, {hi}, BN):")
        rn = Affine.of(em.define_var("rn", "n0 + tl.arange(0, BN)[None, :]", S, "mask_n"))
        em.bound("mask_n", "rn", S, meta["BN"], "[1, BN]")  # (key blocks start at multiples of BN)
        rk = Affine.of(em.define_var("rk", "n0 + tl.arange(0, BN)[:, None]", S, "mask_k"))
        em.bound("mask_k", "rk", S, meta["BN"], "[BN, 1]")
        kt = _operand(em, qk.operands[1], "kt", g1.b, {"g": g, "kb": rek, "n": rn}, ("rek", "rn"))
        em.line(f"qk = tl.dot({q}, {kt}{prec}).to({ft})")
        idx = g1.out({"g": g, "m": rm, "n": rn})
        deps = frozenset({"rm", "rn"}) | gdeps
        em.overrides[(id(qk.result), index_key(idx))] = Val("qk", qk.result.dtype, em.scope, deps)
        if scaled is not None:  # the scores unscaled (see scale_of: the scale joins the exp2's FMA)
            em.overrides[(id(scaled[0]), index_key(idx))] = Val("qk", qk.result.dtype, em.scope, deps)
        if below_diagonal:  # where(key > query, -inf, x) is x here
            em.overrides[(id(m.scores), index_key(idx))] = em.value(m.scores.op.operands[2], idx)
        elif scaled is None or scaled[0] is not m.scores:
            em.overrides.pop((id(m.scores), index_key(idx)), None)
        s = em.value(m.scores, idx)
        em.line(f"s = tl.where(mask_n, ({s.expr}).to({ft}), float('-inf'))")
        c = f" * {scaled[1] * LOG2E!r}" if scaled is not None else ""
        em.line(f"m_new = tl.maximum(m_i, tl.max(s, 1)[:, None]{c})")
        em.line("m_safe = tl.where(m_new == float('-inf'), 0.0, m_new)")
        if scaled is not None:  # m_i and m_safe in log2 units, s unscaled
            em.line("alpha = tl.exp2(m_i - m_safe)")
            em.line(f"p = tl.exp2(s{c} - m_safe)")
        elif acc_d == dt.float32:  # exp(x - m) as exp2(x * log2(e) - m * log2(e)): one FMA an element
            em.line(f"m_log2 = m_safe * {LOG2E!r}")
            em.line(f"alpha = tl.exp2(m_i * {LOG2E!r} - m_log2)")
            em.line(f"p = tl.exp2(s * {LOG2E!r} - m_log2)")
        else:
            em.line("alpha = tl.exp(m_i - m_safe)")
            em.line("p = tl.exp(s - m_safe)")
        em.line("l_i = l_i * alpha + tl.sum(p, 1)[:, None]")
        em.line("m_i = m_new")
        em.overrides[(id(m.div.result), index_key(idx))] = Val("p", m.div.result.dtype, em.scope, deps)
        pd = em.value(pv.operands[0], idx)
        p_in = f"({pd.expr}).to({ty.tl_type(res.dtype)})" if half else f"({pd.expr}).to({ft})"
        vt = _operand(em, pv.operands[1], "vt", g2.b, {"g": g, "kb": rk, "n": rv}, ("rk", "rv"))
        em.line(f"acc = acc * alpha + tl.dot({p_in}, {vt}{prec}).to({ft})")
        em.close()

    if causal(m):
        diagonal = "(tl.program_id(0) * BM // BN) * BN"  # key blocks before it lie below the diagonal
        key_loop("0", diagonal, True)
        key_loop(diagonal, f"tl.minimum((tl.program_id(0) + 1) * BM, {S})", False)
    else:
        key_loop("0", str(S), False)
    em.line("out = acc / l_i")
    out_idx = g2.out({"g": g, "m": rm, "n": rv})
    out = Val("out", res.dtype, em.scope, frozenset({"rm", "rv"}) | gdeps)
    stats = {id(m.mx.result): f"(m_i * {1 / LOG2E!r})" if scaled is not None else "m_i",
             id(m.sm.result): "tl.where(m_i == float('-inf'), float('nan'), l_i)"}
    row_idx = g2.out({"g": g, "m": rm, "n": Affine()})  # (..., row, 0): the (..., L, 1) statistics
    for j, o in enumerate(group.outputs):
        if o is res:
            em.store(f"out{j}", out_strides[j], res.shape, out_idx, out, res.dtype, ["rm", "rv"])
        else:  # a fully masked row: max -inf, sum nan (exp(-inf - -inf)), as the reference has them
            val = Val(stats[id(o)], o.dtype, em.scope, frozenset({"rm"}) | gdeps)
            em.store(f"out{j}", out_strides[j], o.shape, row_idx, val, o.dtype, ["rm"])
    src, params = assemble(group, "attention", em, ["BM", "BN", "BE", "BV"], [o.dtype for o in group.outputs])
    grid = (cdiv(L, meta["BM"]) if S else 0, G)
    warps = 1 if policy.interpret else (8 if meta["BM"] * meta["BN"] >= 128 * 64 else 4)
    stages = 1 if policy.interpret else max(2, policy.mm_stages - 1)
    return Kernel(group.name, "attention", src, params, meta, grid, num_warps=config.num_warps if config else warps,
                  num_stages=config.num_stages if config else stages, problem={"l": L, "s": S, "e": E, "ev": Ev})
