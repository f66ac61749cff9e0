"""Reduction kernels: rows (`xindex`, the kept dims) by reduced elements (`rindex`, the reduced dims).

All reductions in the group must reduce the same shape over the same axes (any axes, not only the
last). Each program owns XBLOCK rows. Persistent form (row fits one block): one pass computes every
reduction and the epilogue from values already in registers. Looped form: one loop over the row per
reduction (in order, so the second can use the first, as softmax's sum uses its max), then a last
loop for outputs with one element per (row, reduced element); values are recomputed from the inputs
in each pass rather than spilled. Outputs with one element per row are stored after the loops.

Split form (`BlockPolicy.split_r`, on a GPU: few long rows, as a loss over a whole tensor): grid
axis 1 runs chunks of every row; partials go to a workspace and a combining function sums them in
order (deterministic), pass by pass where one reduction reads another (softmax's sum its max, a
variance its mean), then a last pass writes per-element outputs that read them (`_build_split`).
"""
from __future__ import annotations

from collections.abc import Sequence

from avalon.ir import dtypes as dt
from avalon.ir.core import Op, Value

from . import types as ty
from .blocks import BlockPolicy, KernelConfig, cdiv, unsplit
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
        meta = unsplit(meta)
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


def _reads(v: Value, targets: set[int], memo: dict[int, bool]) -> bool:
    """Does `v` depend, inside its group, on an op in `targets`?"""
    op = v.op
    if op is None:
        return False
    if id(op) in targets:
        return True
    if id(v) not in memo:
        memo[id(v)] = any(_reads(u, targets, memo) for u in op.operands)
    return memo[id(v)]


def _levels(reds: list[Op]) -> list[list[int]]:
    """Reductions by pass: a reduction reading others' results (a variance reads its mean) comes a
    pass after them. `reds` are in op order, so what one reads comes before it."""
    level: list[int] = []
    for i, op in enumerate(reds):
        deps = [j for j in range(i) if _reads(op.operands[0], {id(reds[j])}, {})]
        level.append(1 + max((level[j] for j in deps), default=-1))
    return [[i for i in range(len(reds)) if level[i] == lv] for lv in range(max(level) + 1)]


class _SplitEmit:
    """Source of the split form's functions; all share the workspace `ws`: the partials
    [SPLIT_R, reductions, rows], then each reduction's combined value [reductions, rows]."""

    def __init__(self, group: Group, reds: list[Op], rows: _Rows, in_strides: Sequence[Sequence[int]],
                 policy: BlockPolicy):
        self.group, self.reds, self.rows, self.in_strides, self.policy = group, reds, rows, in_strides, policy
        self.n = len(reds)
        self.start = program_start(needs_int64(group), "XBLOCK")
        self.fin = f"SPLIT_R * {self.n * rows.x}"  # where the combined values start

    def begin(self) -> tuple[Emitter, IndexVar, Index]:
        em = Emitter(self.group.inputs, self.in_strides, dots_in_f32=self.policy.interpret)
        x = em.define_var("xindex", f"{self.start} + tl.arange(0, XBLOCK)[:, None]", self.rows.x, "xmask")
        em.line(f"xmask = xindex < {self.rows.x}")
        return em, x, delinearize(Affine.of(x), [self.rows.shape[d] for d in self.rows.kept])

    def combined(self, em: Emitter, xdims: Index, which: list[int]) -> None:
        """The results of reductions `which`, read back from the workspace."""
        for i in which:
            op = self.reds[i]
            v = em.emit(f"tl.load(ws + {self.fin} + {i * self.rows.x} + xindex, mask=xmask, other=0)",
                        op.result.dtype, ("xindex",), prefix="fin")
            em.overrides[(id(op.result), index_key(self.rows.row_index(op, xdims)))] = v

    def chunk_loop(self, em: Emitter, xdims: Index) -> Index:
        em.line("r_lo = tl.program_id(1) * RCHUNK")
        em.open("for r0 in range(0, RCHUNK, RBLOCK):")  # constant bounds: the chunk's offset is added inside
        r = em.define_var("rindex", "r_lo + r0 + tl.arange(0, RBLOCK)[None, :]", self.rows.r, "rmask")
        em.line(f"rmask = rindex < {self.rows.r}")
        return self.rows.full_index(xdims, r)

    def partial(self, which: list[int], before: list[int], full: list[tuple[int, Value]],
                out_strides: Sequence[Sequence[int]]) -> Emitter:
        """Chunk sums of reductions `which` into the partials (and the per-element outputs `full`)."""
        em, _, xdims = self.begin()
        self.combined(em, xdims, before)
        accs = [_init(em, self.reds[i], self.rows.r) for i in which]
        idx = self.chunk_loop(em, xdims)
        for i, acc in zip(which, accs):
            _update(em, self.reds[i], em.value(self.reds[i].operands[0], idx), acc, self.rows.r)
        self._store_full(em, idx, full, out_strides)
        em.close()
        for i, acc in zip(which, accs):
            part = _finish(em, self.reds[i], acc, self.rows.r)
            em.line(f"tl.store(ws + (tl.program_id(1) * {self.n} + {i}) * {self.rows.x} + xindex, {part.expr}, "
                    "mask=xmask)")
        return em

    def combine(self, which: list[int], before: list[int], per_row: list[tuple[int, Value]],
                out_strides: Sequence[Sequence[int]]) -> Emitter:
        """The partials of `which` combined in order, kept in the workspace; the per-row outputs."""
        em, x, xdims = self.begin()
        self.combined(em, xdims, before)
        for i in which:
            op = self.reds[i]
            d = _acc_dtype(op.operands[0].dtype)
            a = em.fresh(op.name)
            em.line(f"{a} = tl.zeros([XBLOCK, 1], {ty.tl_type(d)})" if op.name == "sum"
                    else f"{a} = tl.full([XBLOCK, 1], {ty.lowest(d)}, {ty.tl_type(d)})")
            em.open("for s0 in range(0, SPLIT_R):")
            part = f"tl.load(ws + (s0 * {self.n} + {i}) * {self.rows.x} + xindex, mask=xmask, other=0)"
            em.line(f"{a} = {a} + {part}" if op.name == "sum"
                    else f"{a} = tl.maximum({a}, {part}, propagate_nan=tl.PropagateNan.ALL)")
            em.close()
            em.line(f"tl.store(ws + {self.fin} + {i * self.rows.x} + xindex, {a}, mask=xmask)")
            em.overrides[(id(op.result), index_key(self.rows.row_index(op, xdims)))] = Val(
                a, op.result.dtype, em.scope, frozenset({"xindex"}))
        for j, o in per_row:
            oidx = delinearize(Affine.of(x), o.shape)
            em.store(f"out{j}", out_strides[j], o.shape, oidx, em.value(o, oidx), o.dtype, ["xindex"])
        return em

    def full_pass(self, full: list[tuple[int, Value]], out_strides: Sequence[Sequence[int]]) -> Emitter:
        """The per-element outputs that read reductions, once all are combined."""
        em, _, xdims = self.begin()
        self.combined(em, xdims, list(range(self.n)))
        idx = self.chunk_loop(em, xdims)
        self._store_full(em, idx, full, out_strides)
        em.close()
        return em

    def _store_full(self, em: Emitter, idx: Index, full: list[tuple[int, Value]],
                    out_strides: Sequence[Sequence[int]]) -> None:
        for j, o in full:
            oidx = reshape_index(idx, self.rows.shape, o.shape)
            em.store(f"out{j}", out_strides[j], o.shape, oidx, em.value(o, oidx), o.dtype, ["xindex", "rindex"])


def _build_split(group: Group, reds: list[Op], rows: _Rows, full: list[int], per_row: list[int],
                 in_strides: Sequence[Sequence[int]], out_strides: Sequence[Sequence[int]], policy: BlockPolicy,
                 meta: dict[str, int], warps: int, stages: int) -> Kernel | None:
    """Split rows: grid axis 1 runs SPLIT_R chunks of every row. Per pass (`_levels`: a variance
    after its mean), a partial function reduces each chunk into the workspace and a combining
    function (`<name>_combine<k>`) sums the partials in order (deterministic); per-element outputs
    are stored on the first pass, or, when they read a reduction (a normalized output), by a last
    pass over the chunks (`<name>_full`). One chain of functions of one kernel file (`Kernel.then`).
    Float sums and maxima only; None for anything else (argmax, integers) and for index checks."""
    if any(op.name not in ("sum", "max") or not _acc_dtype(op.operands[0].dtype).is_float for op in reds):
        return None
    ids, memo = {id(op) for op in reds}, {}
    late = any(_reads(group.outputs[j], ids, memo) for j in full)
    outs = [(j, group.outputs[j]) for j in full]
    se = _SplitEmit(group, reds, rows, in_strides, policy)
    levels = _levels(reds)
    done: list[int] = []
    parts: list[tuple[str, str, Emitter, bool]] = []  # (name, kind, emitter, over chunks)
    for lv, which in enumerate(levels):
        last = lv == len(levels) - 1
        em = se.partial(which, done, [] if late or lv else outs, out_strides)
        parts.append((group.name if lv == 0 else f"{group.name}_pass{lv}", "reduction" if lv == 0 else
                      "reduction_pass", em, True))
        em = se.combine(which, done, [(j, group.outputs[j]) for j in per_row] if last else [], out_strides)
        parts.append((f"{group.name}_combine{lv}" if len(levels) > 1 or late else f"{group.name}_epilogue",
                      "reduction_epilogue", em, False))
        done += which
    if late:
        parts.append((f"{group.name}_full", "reduction_pass", se.full_pass(outs, out_strides), True))
    if any(em.index_checks for _, _, em, _ in parts):
        return None
    names = ["XBLOCK", "RBLOCK", "SPLIT_R", "RCHUNK"]
    src, params = assemble(group, "reduction", parts[0][2], names, [o.dtype for o in group.outputs],
                           workspace=dt.float32, also=[(name, em) for name, _, em, _ in parts[1:]])
    size, problem = (meta["SPLIT_R"] + 1) * len(reds) * rows.x, {"x": rows.x, "r": rows.r}
    blocks = cdiv(rows.x, meta["XBLOCK"])
    k = None
    for name, kind, _, chunks in reversed(parts):
        k = Kernel(name, kind, src, params, meta, (blocks, meta["SPLIT_R"]) if chunks else (blocks,),
                   num_warps=warps, num_stages=stages if chunks else 1, problem=problem, workspace=size, then=k)
    return k


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
