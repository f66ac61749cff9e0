"""Scan kernels (`cumsum`): a running sum along one axis, which no pointwise or reduction kernel computes.

The operand is addressed as rows by the scanned axis: a row is one position of every other dim (the
(outer, inner) pair of an (outer, n, inner) view; with row-major strides the axis has stride
`inner`), and each program takes XBLOCK rows by RBLOCK elements of the axis, `tl.cumsum` along it.
A block of rows rather than one row per program keeps grids small where rows are short (the
interpreter pays per program; a GPU idles on 8-element rows); a long axis gets XBLOCK = 1. When the
axis is longer than RBLOCK the kernel loops over chunks, adding each chunk's total to a running
carry. `reverse` reads position n-1-k at step k, so the same forward scan sums from the end.
f16/bf16 accumulate in f32 and round on store, like every other kernel here.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from avalon.ir import dtypes as dt

from . import helpers
from . import types as ty
from .blocks import BlockPolicy, cdiv
from .group import Group
from .kernel import Kernel


def _row_offsets(var: str, dims: Sequence[tuple[int, int]]) -> str:
    """The memory offset of row `var` (a row-major index over `dims`, pairs of (size, stride))."""
    terms, after = [], 1
    for size, stride in reversed(dims):
        if size != 1 and stride != 0:
            q = var if after == 1 else f"({var} // {after})"
            r = q if after * size == math.prod(s for s, _ in dims) else f"({q} % {size})"
            terms.append(r if stride == 1 else f"{r} * {stride}")
        after *= size
    return " + ".join(reversed(terms)) or "0"


def build_scan(group: Group, policy: BlockPolicy) -> Kernel:
    """The kernel of a group holding one `cumsum` op (see the module docstring)."""
    op = group.ops[0]
    x, y = op.operands[0], op.results[0]
    shape, rank = x.shape, x.type.rank
    ax = op.attrs["axis"] % rank if rank else 0
    n = shape[ax] if rank else 1
    in_s, out_s = x.type.strides(), y.type.strides()
    other = [d for d in range(rank) if d != ax]
    rows = math.prod(shape[d] for d in other)
    meta = policy.reduction(rows, n)
    persistent = n <= meta["RBLOCK"]
    acc = ty.tl_compute(y.dtype)
    big = x.type.numel >= 2 ** 31 - 1
    s_in = in_s[ax] if rank else 0
    s_out = out_s[ax] if rank else 0
    body = [
        f"rows = tl.program_id(0){'.to(tl.int64)' if big else ''} * XBLOCK + tl.arange(0, XBLOCK)[:, None]",
        f"rmask = rows < {rows}",
        f"base_in = {_row_offsets('rows', [(shape[d], in_s[d]) for d in other])}",
        f"base_out = {_row_offsets('rows', [(shape[d], out_s[d]) for d in other])}",
    ]
    store = "c"
    used: set[str] = set()
    if y.dtype == dt.bfloat16:
        used.add("_avalon_round_bf16")
        store = "_avalon_round_bf16(c)"
    store = f"{store}.to({ty.tl_type(y.dtype)})"
    step = [
        f"mask = rmask & (k < {n})",
        ("pos = {n1} - k" if op.attrs["reverse"] else "pos = k").format(n1=n - 1) + (".to(tl.int64)" if big else ""),
        f"x = tl.load(in0 + base_in + pos * {s_in}, mask=mask, other=0).to({acc})",
    ]
    if persistent:
        body += ["k = tl.arange(0, RBLOCK)[None, :]", *step, "c = tl.cumsum(x, axis=1)",
                 f"tl.store(out0 + base_out + pos * {s_out}, {store}, mask=mask)"]
    else:
        body += [f"carry = tl.zeros([XBLOCK, 1], {acc})", f"for start in range(0, {n}, RBLOCK):"]
        body += ["    " + ln for ln in ["k = start + tl.arange(0, RBLOCK)[None, :]", *step,
                                        "c = tl.cumsum(x, axis=1) + carry",
                                        f"tl.store(out0 + base_out + pos * {s_out}, {store}, mask=mask)",
                                        f"carry = carry + tl.sum(x, axis=1, keep_dims=True).to({acc})"]]
    head = [f"# Avalon scan kernel `{group.name}`, generated from:"]
    head += [f"#   {ln}" for ln in group.ir_text.splitlines()]
    src = "\n".join(head + ["import triton", "import triton.language as tl", ""]) + helpers.render(used)
    src += (f"\n\n@triton.jit\ndef {group.name}(in0, out0, XBLOCK: tl.constexpr, RBLOCK: tl.constexpr):\n"
            + "".join(f"    {ln}\n" for ln in body))
    params = [("in0", x.dtype), ("out0", y.dtype)]
    return Kernel(group.name, "scan", src, params, meta, (cdiv(rows, meta["XBLOCK"]),),
                  num_warps=policy.warps(meta["XBLOCK"] * meta["RBLOCK"]))
