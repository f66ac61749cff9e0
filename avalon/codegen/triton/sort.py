"""Sort kernels (`sort`, `argsort`): a whole row of the sorted axis in one block of registers.

Each program takes XBLOCK rows by RBLOCK (the axis padded to a power of two) elements, addressed
through the operand's and result's strides like the scan kernels (`scan.py`), and sorts every row
in registers:

* Operands of at most 32 bits (f32, f16, bf16, i32, i1): one `tl.sort` of packed int64 keys. The
  high bits are an order-preserving int32 image of the value (a float's bits with the magnitude
  bits flipped when negative; -0.0 first made 0.0, which torch counts equal; nan the largest int32),
  the low log2(RBLOCK) bits the position. Keys are unique, so the sort is stable, and the position
  (the argsort) comes out of the same sort. `descending` complements the image (~k reverses the
  order, nan becomes the smallest, i.e. first), while positions still break ties upwards: equal
  elements keep their order, as torch's stable sort does. Padding lanes take the largest image and
  sort last (their positions exceed every real one).
* f64 and i64: the image takes all 64 bits, so no position fits beside it. Instead the kernel runs
  its own bitonic network on (image, position) pairs, unrolled here with literal shapes: each stage
  views the block as (A, 2, B) with partners B apart, reads the partner with an `xor_sum` over the
  pair axis (a ^ (a ^ b) = b, the trick of Triton's own `tl.sort`) and keeps the smaller pair
  (lexicographically) on the side the stage's direction says.

`argsort` stores the positions; `sort` loads the operand at them (its own elements, bit for bit:
-0.0 and nan payloads survive) and stores those. An axis longer than `SORT_BLOCK` does not fit a
block: `avalon.ops.sort` builds the bitonic network of primitives for such axes instead, and a
graph that holds a longer `sort`/`argsort` anyway is refused with an error naming it.
"""
from __future__ import annotations

import math

from avalon.ir import dtypes as dt
from avalon.ops.sorting import SORT_BLOCK

from .blocks import BlockPolicy, cdiv, next_pow2
from .group import Group
from .kernel import Kernel
from .scan import _row_offsets

WIDE = (dt.float64, dt.int64)
"""Operand dtypes whose order-preserving image takes 64 bits: sorted by the pair network."""


def _image(d: dt.DType, descending: bool) -> list[str]:
    """Lines turning the loaded `x` into `key`, an order-preserving signed integer image (int32, or
    int64 for WIDE dtypes) in which nan is the largest value, complemented when `descending`."""
    if d.is_float:
        wide = d == dt.float64
        it, ft, top = ("tl.int64", "tl.float64", "0x7FFFFFFFFFFFFFFF") if wide else ("tl.int32", "tl.float32",
                                                                                       "0x7FFFFFFF")
        lines = [f"f = x.to({ft})",
                 "f = tl.where(f == 0, 0.0, f)",  # -0.0 -> 0.0: equal in torch's order
                 f"b = f.to({it}, bitcast=True)",
                 f"key = tl.where(b < 0, b ^ {top}, b)",  # negative: flip the magnitude bits
                 f"key = tl.where(f != f, {top}, key)"]  # nan: the largest
    else:
        lines = [f"key = x.to({'tl.int64' if d == dt.int64 else 'tl.int32'})"]
    if descending:
        lines.append("key = ~key")
    return lines


def _pair_network(xb: int, rb: int) -> list[str]:
    """An unrolled bitonic sort of every row of (`key`, `pos`) [XBLOCK, RBLOCK], ascending by the
    pair; leaves `pos` sorted (see the module docstring)."""
    m = rb.bit_length() - 1
    lines = []
    for s in range(1, m + 1):  # merge sorted runs of 2^(s-1) into runs of 2^s
        for t in range(s - 1, -1, -1):  # partners 2^t apart
            a, b = xb * rb >> (t + 1), 1 << t
            lines += [f"ka = tl.reshape(key, [{a}, 2, {b}])",
                      f"pa = tl.reshape(pos, [{a}, 2, {b}])",
                      "kb = ka ^ tl.xor_sum(ka, 1, keep_dims=True)",
                      "pb = pa ^ tl.xor_sum(pa, 1, keep_dims=True)",
                      "gt = (ka > kb) | ((ka == kb) & (pa > pb))"]
            # a lane keeps the larger pair when it is the right one of an ascending run, or the left
            # one of a descending run (runs alternate by bit s of the position, but the last is ascending)
            side = "tl.arange(0, 2)[None, :, None]"
            if s < m:
                side = f"({side} ^ ((tl.arange(0, {a})[:, None, None] >> {s - t - 1}) & 1))"
            lines += [f"swap = gt != ({side} == 1)",
                      f"key = tl.reshape(tl.where(swap, kb, ka), [{xb}, {rb}])",
                      f"pos = tl.reshape(tl.where(swap, pb, pa), [{xb}, {rb}])"]
    return lines


GPU_BLOCK = 1024
"""Elements a GPU program sorts when rows are short: sm_90 compile time grows with the block (a
64 x 300 argsort: ~7 s at 1 x 512, ~20 s at 8 x 512 on our 2-core build machine), while blocks
of short rows only save launch slots. The interpreter takes the policy's larger blocks (few programs)."""


def sort_meta(rows: int, n: int, policy: BlockPolicy) -> dict[str, int]:
    """XBLOCK rows by RBLOCK (>= 2) elements a program (see GPU_BLOCK)."""
    rb = max(2, next_pow2(n))
    budget = policy.reduction_elems if policy.interpret else min(policy.reduction_elems, GPU_BLOCK)
    return {"XBLOCK": max(1, min(next_pow2(max(rows, 1)), budget // rb)), "RBLOCK": rb}


def build_sort(group: Group, policy: BlockPolicy) -> Kernel:
    """The kernel of a group holding one `sort` or `argsort` op (see the module docstring)."""
    op = group.ops[0]
    x, y = op.operands[0], op.results[0]
    shape, rank = x.shape, x.type.rank
    ax = op.attrs["axis"] % rank
    n = shape[ax]
    if next_pow2(n) > SORT_BLOCK:
        raise NotImplementedError(
            f"'{op.name}' along an axis of {n} elements{f' at {op.loc}' if op.loc else ''}: the Triton sort kernel "
            f"holds at most {SORT_BLOCK} (after padding to a power of two); avalon.ops.sort traces such axes "
            "as a bitonic network of primitives instead")
    in_s, out_s = x.type.strides(), y.type.strides()
    other = [d for d in range(rank) if d != ax]
    rows = math.prod(shape[d] for d in other)
    meta = sort_meta(rows, n, policy)
    xb, rb = meta["XBLOCK"], meta["RBLOCK"]
    big = max(x.type.numel, rb * cdiv(rows, xb) * xb) >= 2 ** 31 - 1
    i64 = ".to(tl.int64)" if big else ""
    body = [
        f"rows = tl.program_id(0){i64} * XBLOCK + tl.arange(0, XBLOCK)[:, None]",
        f"base_in = {_row_offsets('rows', [(shape[d], in_s[d]) for d in other])}",
        f"base_out = {_row_offsets('rows', [(shape[d], out_s[d]) for d in other])}",
        "k = tl.arange(0, RBLOCK)[None, :]",
        f"live = k < {n}",
        f"mask = (rows < {rows}) & live",
        f"x = tl.load(in0 + base_in + k * {in_s[ax]}, mask=mask, other=0)",
        *_image(x.dtype, op.attrs["descending"]),
    ]
    if x.dtype in WIDE:
        body += ["key = tl.where(live, key, 0x7FFFFFFFFFFFFFFF)",  # padding: the largest image, then by position
                 "pos = tl.broadcast_to(k, [XBLOCK, RBLOCK])",
                 *_pair_network(xb, rb)]
        sorter = "pair"
    else:
        body += ["key = tl.where(live, key, 0x7FFFFFFF)",  # padding: the largest image, then by position
                 f"packed = tl.sort((key.to(tl.int64) << {rb.bit_length() - 1}) | k.to(tl.int64), dim=1)",
                 "pos = packed & (RBLOCK - 1)"]
        sorter = "packed"
    if op.name == "argsort":
        body.append(f"tl.store(out0 + base_out + k * {out_s[ax]}, pos.to(tl.int64), mask=mask)")
    else:
        body += [f"v = tl.load(in0 + base_in + pos{i64} * {in_s[ax]}, mask=mask)",
                 f"tl.store(out0 + base_out + k * {out_s[ax]}, v, mask=mask)"]
    head = [f"# Avalon sort kernel `{group.name}` ({sorter} keys), generated from:"]
    head += [f"#   {ln}" for ln in group.ir_text.splitlines()]
    src = "\n".join(head + ["import triton", "import triton.language as tl", ""])
    src += (f"\n\n@triton.jit\ndef {group.name}(in0, out0, XBLOCK: tl.constexpr, RBLOCK: tl.constexpr):\n"
            + "".join(f"    {ln}\n" for ln in body))
    params = [("in0", x.dtype), ("out0", y.dtype)]
    return Kernel(group.name, "sort", src, params, meta, (cdiv(rows, xb),), num_warps=policy.warps(xb * rb))


__all__ = ["GPU_BLOCK", "WIDE", "build_sort", "sort_meta"]
