"""Reduction kernels: rows (`xindex`, the kept dims) by reduced elements (`rindex`, the reduced dims).

All reductions in the group must reduce the same shape over the same axes (any axes, not only the
last). Each program owns XBLOCK rows. Persistent form (row fits one block): one pass computes every
reduction and the epilogue from values already in registers. Looped form: one loop over the row per
reduction (in order, so the second can use the first, as softmax's sum uses its max), then a last
loop for outputs with one element per (row, reduced element); values are recomputed from the inputs
in each pass rather than spilled. Outputs with one element per row are stored after the loops.

Split form (`BlockPolicy.split_r`, on a GPU: few long rows, as a conv bias gradient's 20 rows of
36,864): grid axis 1 runs chunks of every row; partials go to a workspace and the kernel's second
function combines them in order (deterministic) before the per-row outputs (`_build_split`).
"""
from __future__ import annotations

from collections.abc import Sequence

from avalon.ir import dtypes as dt
from avalon.ir.core import Op

from . import types as ty
from .blocks import BlockPolicy, KernelConfig, cdiv
from .emitter import Emitter, Unsupported, Val
from .group import Group
from .indexing import Affine, Index, IndexVar, delinearize, index_key, numel, reshape_index
from .kernel import Kernel, assemble
from .lowering import LOWERING
from .pointwise import needs_int64, program_start


def reduced_axes(op: Op) -> list[int]:
    rank = op.operands[0].type.rank
    if rank == 0:
        return []
    axes = op.attrs["axes"] if "axes" in op.attrs else [op.attrs["axis"]]
    return sorted(a % rank for a in axes)


class _Rows:
    """The row/reduced split of the reductions' operand shape."""

    def __init__(self, reds: list[Op]):
        first = reds[0]
        self.shape = first.operands[0].shape
        self.axes = reduced_axes(first)
        for r in reds[1:]:
            if r.operands[0].shape != self.shape or reduced_axes(r) != self.axes:
                raise Unsupported("reductions in one group must reduce the same shape over the same axes")
        self.kept = [d for d in range(len(self.shape)) if d not in self.axes]
        self.x = numel([self.shape[d] for d in self.kept])
        self.r = numel([self.shape[d] for d in self.axes])

    def full_index(self, xdims: Index, rvar: IndexVar) -> Index:
        rdims = delinearize(Affine.of(rvar), [self.shape[d] for d in self.axes])
        out, xi, ri = [], iter(xdims), iter(rdims)
        for d in range(len(self.shape)):
            out.append(next(ri) if d in self.axes else next(xi))
        return tuple(out)

    def row_index(self, op: Op, xdims: Index) -> Index:
        if not op.attrs["keepdims"]:
            return xdims
        xi = iter(xdims)
        return tuple(Affine() if d in self.axes else next(xi) for d in range(len(self.shape)))


def build_reduction(group: Group, in_strides: Sequence[Sequence[int]], out_strides: Sequence[Sequence[int]],
                    policy: BlockPolicy, config: KernelConfig | None = None) -> Kernel:
    """`config` (the autotuner's candidate) overrides the policy's blocks and warps; its RBLOCK
    covering the whole row makes the reduction persistent (one block, no loop)."""
    reds = [op for op in group.ops if LOWERING[op.name].kind == "reduction"]
    rows = _Rows(reds)
    full = [j for j, o in enumerate(group.outputs) if o.type.numel == rows.x * rows.r]
    per_row = [j for j, o in enumerate(group.outputs) if j not in full and o.type.numel == rows.x]
    if len(full) + len(per_row) != len(group.outputs):
        raise Unsupported("a reduction group's outputs must have one element per row or per (row, reduced element)")
    meta = config.blocks if config else policy.reduction(rows.x, rows.r)
    warps = config.num_warps if config else policy.warps(meta["XBLOCK"] * meta["RBLOCK"])
    stages = config.num_stages if config else 1
    if meta.get("SPLIT_R", 1) > 1:
        k = _build_split(group, reds, rows, full, per_row, in_strides, out_strides, policy, meta, warps, stages)
        if k is not None:
            return k
        meta = {b: v for b, v in meta.items() if b not in ("SPLIT_R", "RCHUNK")}
    persistent = config.blocks["RBLOCK"] >= rows.r if config else policy.is_persistent(rows.r)
    em = Emitter(group.inputs, in_strides, dots_in_f32=policy.interpret)
    x = em.define_var("xindex", f"{program_start(needs_int64(group), 'XBLOCK')} + tl.arange(0, XBLOCK)[:, None]",
                      rows.x, "xmask")
    em.line(f"xmask = xindex < {rows.x}")
    xdims = delinearize(Affine.of(x), [rows.shape[d] for d in rows.kept])

    def r_loop() -> IndexVar:
        if persistent:
            return em.define_var("rindex", "tl.arange(0, RBLOCK)[None, :]", rows.r, "rmask")
        em.open(f"for roffset in range(0, {rows.r}, RBLOCK):")
        return em.define_var("rindex", "roffset + tl.arange(0, RBLOCK)[None, :]", rows.r, "rmask")

    def r_mask() -> None:
        em.line(f"rmask = rindex < {rows.r}")

    r = None
    if persistent:
        r = r_loop()
        r_mask()
    for op in reds:
        accs = _init(em, op, rows.r)
        if not persistent:
            r = r_loop()
            r_mask()
        if rows.r:  # an empty reduction is its initial value (and its operand has no memory to read)
            v = em.value(op.operands[0], rows.full_index(xdims, r))
            _update(em, op, v, accs, rows.r)
        if not persistent:
            em.close()
        res = _finish(em, op, accs, rows.r)
        em.overrides[(id(op.result), index_key(rows.row_index(op, xdims)))] = res
    if full:
        if not persistent:
            r = r_loop()
            r_mask()
        idx = rows.full_index(xdims, r)
        for j in full:
            o = group.outputs[j]
            oidx = reshape_index(idx, rows.shape, o.shape)
            em.store(f"out{j}", out_strides[j], o.shape, oidx, em.value(o, oidx), o.dtype, ["xindex", "rindex"])
        if not persistent:
            em.close()
    for j in per_row:
        o = group.outputs[j]
        oidx = delinearize(Affine.of(x), o.shape)
        em.store(f"out{j}", out_strides[j], o.shape, oidx, em.value(o, oidx), o.dtype, ["xindex"])
    src, params = assemble(group, "reduction", em, ["XBLOCK", "RBLOCK"], [o.dtype for o in group.outputs])
    return Kernel(group.name, "reduction", src, params, meta, (cdiv(rows.x, meta["XBLOCK"]),), num_warps=warps,
                  num_stages=stages, problem={"x": rows.x, "r": rows.r})


def _reads(v, targets: set[int], memo: dict[int, bool]) -> bool:
    """Does `v` depend, inside its group, on an op in `targets`?"""
    op = v.op
    if op is None:
        return False
    if id(op) in targets:
        return True
    if id(v) not in memo:
        memo[id(v)] = any(_reads(u, targets, memo) for u in op.operands)
    return memo[id(v)]


def _build_split(group: Group, reds: list[Op], rows: _Rows, full: list[int], per_row: list[int],
                 in_strides: Sequence[Sequence[int]], out_strides: Sequence[Sequence[int]], policy: BlockPolicy,
                 meta: dict[str, int], warps: int, stages: int) -> Kernel | None:
    """Split rows: grid axis 1 runs SPLIT_R chunks of every row; each program reduces its chunk
    (storing the per-element outputs on the way) and writes one partial per reduction and row to
    the workspace `ws` [SPLIT_R, reductions, rows]; the second function (`<name>_epilogue`,
    `Kernel.then`) combines the partials in order and stores the per-row outputs. None unless one
    pass can do it: float sums and maxima that read no other reduction of the group (softmax's sum
    reads its max) and per-element outputs that read none."""
    if any(op.name not in ("sum", "max") or not _acc_dtype(op.operands[0].dtype).is_float for op in reds):
        return None
    ids, memo = {id(op) for op in reds}, {}
    if any(_reads(op.operands[0], ids, memo) for op in reds) or any(_reads(group.outputs[j], ids, memo) for j in full):
        return None
    n, splits = len(reds), meta["SPLIT_R"]
    start = program_start(needs_int64(group), "XBLOCK")
    em = Emitter(group.inputs, in_strides, dots_in_f32=policy.interpret)
    x = em.define_var("xindex", f"{start} + tl.arange(0, XBLOCK)[:, None]", rows.x, "xmask")
    em.line(f"xmask = xindex < {rows.x}")
    xdims = delinearize(Affine.of(x), [rows.shape[d] for d in rows.kept])
    accs = [_init(em, op, rows.r) for op in reds]
    em.line("r_lo = tl.program_id(1) * RCHUNK")
    em.open("for r0 in range(0, RCHUNK, RBLOCK):")  # constant bounds: the chunk's offset is added inside
    r = em.define_var("rindex", "r_lo + r0 + tl.arange(0, RBLOCK)[None, :]", rows.r, "rmask")
    em.line(f"rmask = rindex < {rows.r}")
    idx = rows.full_index(xdims, r)
    for op, acc in zip(reds, accs):
        _update(em, op, em.value(op.operands[0], idx), acc, rows.r)
    for j in full:
        o = group.outputs[j]
        oidx = reshape_index(idx, rows.shape, o.shape)
        em.store(f"out{j}", out_strides[j], o.shape, oidx, em.value(o, oidx), o.dtype, ["xindex", "rindex"])
    em.close()
    for i, (op, acc) in enumerate(zip(reds, accs)):
        part = _finish(em, op, acc, rows.r)
        em.line(f"tl.store(ws + (tl.program_id(1) * {n} + {i}) * {rows.x} + xindex, {part.expr}, mask=xmask)")
    epi = Emitter(group.inputs, in_strides, dots_in_f32=policy.interpret)
    x2 = epi.define_var("xindex", f"{start} + tl.arange(0, XBLOCK)[:, None]", rows.x, "xmask")
    epi.line(f"xmask = xindex < {rows.x}")
    xdims2 = delinearize(Affine.of(x2), [rows.shape[d] for d in rows.kept])
    for i, op in enumerate(reds):
        d = _acc_dtype(op.operands[0].dtype)
        a = epi.fresh(op.name)
        epi.line(f"{a} = tl.zeros([XBLOCK, 1], {ty.tl_type(d)})" if op.name == "sum"
                 else f"{a} = tl.full([XBLOCK, 1], {ty.lowest(d)}, {ty.tl_type(d)})")
        epi.open("for s0 in range(0, SPLIT_R):")
        part = f"tl.load(ws + (s0 * {n} + {i}) * {rows.x} + xindex, mask=xmask, other=0)"
        epi.line(f"{a} = {a} + {part}" if op.name == "sum"
                 else f"{a} = tl.maximum({a}, {part}, propagate_nan=tl.PropagateNan.ALL)")
        epi.close()
        epi.overrides[(id(op.result), index_key(rows.row_index(op, xdims2)))] = Val(
            a, op.result.dtype, epi.scope, frozenset({"xindex"}))
    for j in per_row:
        o = group.outputs[j]
        oidx = delinearize(Affine.of(x2), o.shape)
        epi.store(f"out{j}", out_strides[j], o.shape, oidx, epi.value(o, oidx), o.dtype, ["xindex"])
    if em.index_checks or epi.index_checks:
        return None
    names = ["XBLOCK", "RBLOCK", "SPLIT_R", "RCHUNK"]
    src, params = assemble(group, "reduction", em, names, [o.dtype for o in group.outputs], workspace=dt.float32,
                           also=[(f"{group.name}_epilogue", epi)])
    size, problem = splits * n * rows.x, {"x": rows.x, "r": rows.r}
    blocks = cdiv(rows.x, meta["XBLOCK"])
    then = Kernel(f"{group.name}_epilogue", "reduction_epilogue", src, params, meta, (blocks,),
                  num_warps=warps, num_stages=1, problem=problem, workspace=size)
    return Kernel(group.name, "reduction", src, params, meta, (blocks, splits), num_warps=warps, num_stages=stages,
                  problem=problem, workspace=size, then=then)


def _acc_dtype(d: dt.DType) -> dt.DType:
    return dt.int32 if d == dt.bool_ else ty.compute(d)


def _init(em: Emitter, op: Op, r: int) -> list[str]:
    """Accumulators of shape [XBLOCK, RBLOCK], defined before the loop."""
    d = _acc_dtype(op.operands[0].dtype)
    t = ty.tl_type(d)
    a = em.fresh(op.name)
    if op.name == "sum":
        em.line(f"{a} = tl.zeros([XBLOCK, RBLOCK], {t})")
        return [a]
    em.line(f"{a} = tl.full([XBLOCK, RBLOCK], {ty.lowest(d)}, {t})")
    if op.name == "max":
        return [a]
    i = em.fresh("argi")
    em.line(f"{i} = tl.full([XBLOCK, RBLOCK], {r}, tl.int32)")
    return [a, i]


def _update(em: Emitter, op: Op, v: Val, accs: list[str], r: int) -> None:
    d = _acc_dtype(op.operands[0].dtype)
    x = v.expr if v.dtype == d else f"{v.expr}.to({ty.tl_type(d)})"
    live = "xmask & rmask"
    a = accs[0]
    if op.name == "sum":
        em.line(f"{a} = {a} + tl.where({live}, {x}, 0)")
    elif op.name == "max":
        nan = ", propagate_nan=tl.PropagateNan.ALL" if d.is_float else ""
        em.line(f"{a} = tl.maximum({a}, tl.where({live}, {x}, {ty.lowest(d)}){nan})")
    else:
        i = accs[1]
        better = f"({i} == {r}) | ({x} > {a})"
        if d.is_float:
            better += f" | (({x} != {x}) & ({a} == {a}))"
        upd = em.fresh("upd")
        em.line(f"{upd} = {live} & ({better})")
        em.line(f"{a} = tl.where({upd}, {x}, {a})")
        em.line(f"{i} = tl.where({upd}, rindex, {i})")


def _finish(em: Emitter, op: Op, accs: list[str], r: int) -> Val:
    d = _acc_dtype(op.operands[0].dtype)
    res = op.result.dtype
    a = accs[0]
    out = em.fresh(op.name)
    if op.name == "sum":
        em.line(f"{out} = tl.sum({a}, 1)[:, None]")
    elif op.name == "max":
        em.line(f"{out} = tl.max({a}, 1)[:, None]")
        if d.is_float:  # tl.max ignores nan; the reference propagates it
            em.line(f"{out} = tl.where(tl.max(({a} != {a}).to(tl.int32), 1)[:, None] > 0, float(\"nan\"), {out})")
    else:
        i = accs[1]
        em.line(f"{out} = tl.max({a}, 1)[:, None]")
        cand = f"({a} == {out}) & ({i} < {r})"
        if d.is_float:
            nan = em.fresh("isnan")
            em.line(f"{nan} = {a} != {a}")
            cand = f"tl.where(tl.max({nan}.to(tl.int32), 1)[:, None] > 0, {nan}, {cand})"
        em.line(f"{out} = tl.min(tl.where({cand}, {i}, {r}), 1)[:, None].to(tl.int64)")
    val = Val(out, d if op.name != "argmax" else dt.int64, em.scope, frozenset({"xindex"}))
    if d == dt.int32 and res == dt.bool_:
        return em.emit(f"{out} != 0", dt.bool_, vals=(val,))
    return Val(out, res, em.scope, frozenset({"xindex"})) if op.name != "argmax" else val
