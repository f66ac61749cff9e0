"""bucket-all-reduce: fuse many small `all_reduce` ops into a few over flat buffers.

A data-parallel step all-reduces every parameter's gradient; one collective per parameter pays the
latency of a collective per parameter (dozens per step). This pass gathers the top-level
`all_reduce` ops of the same reduction, group and dtype into buckets of at most `bytes` bytes (25
MiB by default, torch DDP's `bucket_cap_mb`) and rewrites each bucket of two or more as

    flat_i = reshape(x_i) ; buf = concat(flat_1, ..., flat_k) ; r = all_reduce(buf)
    y_i = reshape(slice(r, off_i, off_i + n_i))

so a step makes a handful of collectives. The rewrite is exact (the collective is elementwise
across processes), and every process makes the same buckets in the same order, since they all
compile the same graph. A bucket is placed where its last member was, so an op joins a bucket
only when no earlier member's result is read before it; a tensor larger than the cap, or with no
elements, stays alone.
"""
from __future__ import annotations

from avalon.ir import Graph
from avalon.ir.builder import Builder
from avalon.ir.core import Op

from .registry import register

DEFAULT_BUCKET_BYTES = 25 * 2**20


def _first_use(graph: Graph) -> dict[int, int]:
    """id(top-level op) -> index of the first top-level op (the return: len(ops)) reading its results."""
    ops = list(graph.ops)
    where = {id(op): i for i, op in enumerate(ops)}
    first: dict[int, int] = {}
    for op in ops:
        for r in op.results:
            idx = []
            for u in r.users:
                top = u
                while top.parent is not None and top.parent is not graph.body and top.parent.parent_op is not None:
                    top = top.parent.parent_op
                idx.append(where.get(id(top), len(ops)))
            first[id(op)] = min([first.get(id(op), len(ops)), *idx])
    return first


def _buckets(graph: Graph, cap: int) -> list[list[Op]]:
    ops = list(graph.ops)
    first = _first_use(graph)
    done: list[list[Op]] = []
    open_: dict[tuple, tuple[list[Op], int, int]] = {}  # key -> (members, bytes, earliest use of a member)
    for i, op in enumerate(ops):
        if op.name != "all_reduce":
            continue
        t = op.operands[0].type
        nbytes = t.numel * t.dtype.itemsize
        key = (op.attrs["reduction"], op.attrs["group"], t.dtype)
        if t.numel == 0 or nbytes > cap:
            continue
        members, size, use = open_.get(key, ([], 0, len(ops) + 1))
        if members and (size + nbytes > cap or i >= use):
            done.append(members)
            members, size, use = [], 0, len(ops) + 1
        open_[key] = (members + [op], size + nbytes, min(use, first[id(op)]))
    done += [m for m, _, _ in open_.values()]
    return [b for b in done if len(b) > 1]


def _fuse(graph: Graph, members: list[Op]) -> None:
    last = members[-1]
    b = Builder(graph, before=last)
    b.loc = last.loc
    flats = [b("reshape", op.operands[0], shape=[op.operands[0].type.numel]) for op in members]
    reduced = b("all_reduce", b("concat", *flats, axis=0), **last.attrs)
    off = 0
    for op in members:
        x = op.operands[0]
        n = x.type.numel
        piece = b("slice", reduced, start=[off], limit=[off + n], step=[1])
        off += n
        op.result.replace_all_uses_with(b("reshape", piece, shape=list(x.shape)))
    for op in members:
        op.erase()


@register("bucket-all-reduce")
def bucket_all_reduce(graph: Graph, *, bytes: int = DEFAULT_BUCKET_BYTES) -> bool:  # noqa: A002
    """Fuse top-level all_reduce ops into flat buckets of at most `bytes` bytes (see the module docstring)."""
    if bytes < 1:
        raise ValueError(f"bucket-all-reduce: bytes must be positive, got {bytes}")
    buckets = _buckets(graph, bytes)
    for members in buckets:
        _fuse(graph, members)
    return bool(buckets)
