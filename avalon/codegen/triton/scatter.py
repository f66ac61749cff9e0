"""Scatter kernels (`index_add`, `index_max`): rows of the values added into (or maxed into)
data-dependent rows of the result.

No pointwise or reduction kernel computes it (a result row is complete only once every value row
aimed at it is in), so it is a chain of functions of one kernel file, launched in order on the same
tensors (`Kernel.then`):

1. `<name>`: fills the accumulator (zeros; -inf for `index_max`), one BLOCK of its elements a program;
2. `<name>_add`: a grid of (M row blocks) x (D column blocks), D the product of the trailing dims;
   each program loads BM indices and a BM x BD tile of values and `tl.atomic_add`s (`tl.atomic_max`s)
   the tile into the accumulator rows at those indices. Duplicate indices sum (atomics serialize
   them); the order of the adds is unspecified, so f32 sums may differ in the last bits from run to
   run. A maximum is exact in any order (Triton's float atomic max compares the bits as integers,
   so among nans only those with the sign bit clear win, as unspecified as on torch's GPU).
3. `<name>_cast` (f16/bf16 only): the accumulator rounded into the result.

f32 and f64 accumulate in the result itself; f16 and bf16 in an f32 workspace (`ws`, K x D) so that
no sum is rounded more than once, like every other f16/bf16 kernel here (and 16-bit atomics need
not exist). Work is M*D adds plus K*D stores for the zeroing, where the one-hot matmul this op
replaces in `take`'s gradient took 2*K*M*D flops. An index outside [0, K) is flagged in the `err`
buffer like `take`'s (see `lowering.check_index`): the runtime raises IndexOutOfRangeError; its
row is skipped.
"""
from __future__ import annotations

import json
import math

from avalon.ir import dtypes as dt
from avalon.precision import check_deterministic

from . import helpers
from . import types as ty
from .blocks import BlockPolicy, cdiv, next_pow2
from .group import Group
from .kernel import _CHECKS, Kernel
from .scan import _row_offsets

GPU_TILE = 4096
"""Values a GPU program adds (BM x BD): enough atomics in flight per program, a few registers each."""


def scatter_meta(m: int, d: int, size: int, policy: BlockPolicy) -> tuple[dict[str, int], dict[str, int]]:
    """(the zeroing's {BLOCK}, the adds' {BM, BD}): the interpreter takes large blocks (it pays per
    program), a GPU GPU_TILE values a program."""
    tile = policy.xblock if policy.interpret else GPU_TILE
    bd = min(next_pow2(max(d, 1)), 128 if not policy.interpret else tile)
    bm = max(1, min(next_pow2(max(m, 1)), tile // bd))
    block = min(next_pow2(max(size * d, 1)), policy.xblock if policy.interpret else 1024)
    return {"BLOCK": block}, {"BM": bm, "BD": bd}


def build_scatter(group: Group, policy: BlockPolicy) -> Kernel:
    """The kernel chain of a group holding one `index_add` or `index_max` op (see the module docstring)."""
    op = group.ops[0]
    vals, idx = op.operands
    y = op.results[0]
    if not y.dtype.is_float:
        raise NotImplementedError(f"{op.name} of {y.dtype} on Triton: floating-point values only")
    if op.name == "index_add" and vals.shape[0] > 1:  # (a max is order-independent; a sum of floats is not)
        check_deterministic(f"{op.name} on Triton (atomic adds{f', from {op.loc}' if op.loc else ''})")
    is_max = op.name == "index_max"
    atomic, init = ("tl.atomic_max", "float('-inf')") if is_max else ("tl.atomic_add", "0")
    size = op.attrs["size"]
    m, rest = vals.shape[0], vals.shape[1:]
    d = math.prod(rest)
    wide = y.dtype in (dt.float16, dt.bfloat16)  # accumulate in an f32 workspace
    acc = "tl.float64" if y.dtype == dt.float64 else "tl.float32"
    vs, (is0,), ys = vals.type.strides(), idx.type.strides(), y.type.strides()
    spans = [sum((n - 1) * abs(st) for n, st in zip(t.shape, t.strides())) for t in (vals.type, y.type)]
    big = max(*spans, size * d, m * abs(is0)) >= 2 ** 31 - 1 - (1 << 17)  # int64 offsets (a block's slack)
    i64 = ".to(tl.int64)" if big else ""

    def cols(var: str, strides) -> str:
        return _row_offsets(var, list(zip(rest, strides)))

    target, t_row, t_cols = ("ws", d, "c") if wide else ("out0", ys[0], cols("c", ys[1:]))
    zero_meta, add_meta = scatter_meta(m, d, size, policy)
    n = size * d

    zero = [f"e = tl.program_id(0){i64} * BLOCK + tl.arange(0, BLOCK)",
            f"live = e < {n}"]
    if wide:
        zero.append(f"tl.store(ws + e, tl.full([BLOCK], {init}, {acc}), mask=live)")
    else:
        zero += [f"r = e // {max(d, 1)}", f"c = e % {max(d, 1)}",
                 f"tl.store(out0 + r * {ys[0]} + {cols('c', ys[1:])}, tl.full([BLOCK], {init}, "
                 f"{ty.tl_type(y.dtype)}), mask=live)"]
    add = [f"r = tl.program_id(0){i64} * BM + tl.arange(0, BM)[:, None]",
           f"c = tl.program_id(1){i64} * BD + tl.arange(0, BD)[None, :]",
           f"rmask = r < {m}",
           f"i = tl.load(in1 + r * {is0}, mask=rmask, other=0){'.to(tl.int64)' if big else ''}",
           f"bad = (i < 0) | (i >= {size})",
           "bad = bad & rmask",
           "z = bad.to(tl.int32) * 0",
           "tl.store(err + 0 + z, i.to(tl.int64), mask=bad)",
           "tl.store(err + 1 + z, bad.to(tl.int64), mask=bad)",
           f"ok = rmask & (bad == 0) & (c < {d})",
           "i = tl.where(bad, 0, i)",
           f"v = tl.load(in0 + r * {vs[0]} + {cols('c', vs[1:])}, mask=ok, other=0).to({acc})",
           f"{atomic}({target} + i * {t_row} + {t_cols}, v, mask=ok, sem='relaxed')"]
    cast = []
    used: set[str] = set()
    if wide:
        store = "w"
        if y.dtype == dt.bfloat16:
            used.add("_avalon_round_bf16")
            store = "_avalon_round_bf16(w)"
        cast = [f"e = tl.program_id(0){i64} * BLOCK + tl.arange(0, BLOCK)",
                f"live = e < {n}",
                f"r = e // {max(d, 1)}", f"c = e % {max(d, 1)}",
                "w = tl.load(ws + e, mask=live, other=0)",
                f"tl.store(out0 + r * {ys[0]} + {cols('c', ys[1:])}, {store}.to({ty.tl_type(y.dtype)}), mask=live)"]

    params = [("in0", vals.dtype), ("in1", idx.dtype), ("out0", y.dtype)]
    if wide:
        params.append(("ws", dt.float32))
    params.append(("err", dt.int64))
    sig = ", ".join(p for p, _ in params)
    head = [f"# Avalon scatter kernel `{group.name}`, generated from:"]
    head += [f"#   {ln}" for ln in group.ir_text.splitlines()]
    head.append(_CHECKS + json.dumps([(op.name, str(op.loc) if op.loc else "", int(size))], ensure_ascii=True))
    src = "\n".join(head + ["import triton", "import triton.language as tl", ""]) + helpers.render(used)

    def fn(name: str, body: list[str], metas: list[str]) -> str:
        args = ", ".join([sig] + [f"{k}: tl.constexpr" for k in metas])
        return f"\n\n@triton.jit\ndef {name}({args}):\n" + "".join(f"    {ln}\n" for ln in body)

    src += fn(group.name, zero, ["BLOCK"]) + fn(f"{group.name}_add", add, ["BM", "BD"])
    if wide:
        src += fn(f"{group.name}_cast", cast, ["BLOCK"])
    ws = n if wide else 0
    warps_zero = policy.warps(zero_meta["BLOCK"])
    chain = None
    if wide:
        chain = Kernel(f"{group.name}_cast", "scatter", src, params, zero_meta, (cdiv(n, zero_meta["BLOCK"]),),
                       num_warps=warps_zero, workspace=ws)
    chain = Kernel(f"{group.name}_add", "scatter", src, params, add_meta,
                   (cdiv(m, add_meta["BM"]), cdiv(d, add_meta["BD"])),
                   num_warps=policy.warps(add_meta["BM"] * add_meta["BD"]), workspace=ws, then=chain)
    return Kernel(group.name, "scatter", src, params, zero_meta, (cdiv(n, zero_meta["BLOCK"]),),
                  num_warps=warps_zero, workspace=ws, then=chain)


__all__ = ["GPU_TILE", "build_scatter", "scatter_meta"]
