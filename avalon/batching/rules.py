"""Batching rules, one per primitive (JAX's `primitive_batchers`), keyed by op name like every rule table.

A rule is `rule(b, op, args, batched, size) -> [result values]`: `args` are the operands' values in
the batched graph, `batched[i]` says whether `args[i]` carries the mapped dimension (always in front,
of length `size`), and the rule returns `op`'s results computed for every example at once, each with
the mapped dimension in front. At least one operand is batched (the transform copies an op none of
whose operands is). A rule that cannot handle a case returns None: the transform then runs the op
once per example and stacks the results (`unrolled`), which is also what an op without a rule gets
(a user's `define_op`), said once on the `avalon.vmap` log channel.

The rules keep every op a single op of the same kind where they can: a matmul with one batched
side folds the mapped dimension into its rows (or columns); a convolution with batched inputs folds
it into the images, and one with batched weights (per-example weights, per-example gradients)
becomes a grouped convolution with `size` times the groups; a gather or scatter with batched indices
offsets each example's indices into a flattened operand.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from avalon.ir import Builder, Op, Value
from avalon.ir.registry import register_table

BatchFn = Callable[[Builder, Op, list[Value], list[bool], int], "Sequence[Value] | None"]

BATCH: dict[str, BatchFn] = register_table("batch", {}, exempt={"constant", "iota", "random"},
                                           exempt_traits=("region", "elementwise"))
"""op name -> batching rule. `constant` and `iota` have no operands (never batched); `random` is the
transform's (it depends on vmap's `randomness`); region ops are flattened (fusion) or batched region
by region by the transform (custom_vjp); an elementwise op, a user's too, needs none (`rule_for`)."""


def batch(*names: str) -> Callable[[BatchFn], BatchFn]:
    def deco(fn: BatchFn) -> BatchFn:
        for n in names:
            BATCH[n] = fn
        return fn
    return deco


# -- small builders --------------------------------------------------------------------------------

def materialize(b: Builder, v: Value, batched: bool, size: int) -> Value:
    """`v` with the mapped dimension in front: an unbatched value is broadcast along it."""
    return v if batched else b("broadcast", v, shape=[size, *v.shape])


def reshape(b: Builder, v: Value, shape: Sequence[int]) -> Value:
    return v if tuple(v.shape) == tuple(shape) else b("reshape", v, shape=list(shape))


def transpose(b: Builder, v: Value, perm: Sequence[int]) -> Value:
    return v if list(perm) == list(range(len(perm))) else b("transpose", v, perm=list(perm))


def move_axis(b: Builder, v: Value, src: int, dst: int) -> Value:
    perm = [i for i in range(v.type.rank) if i != src]
    perm.insert(dst, src)
    return transpose(b, v, perm)


def _all(b: Builder, args: list[Value], batched: list[bool], size: int) -> list[Value]:
    return [materialize(b, a, bt, size) for a, bt in zip(args, batched)]


def _axis(a: int, rank: int) -> int:
    """A per-example axis, normalized, in the batched value (one dimension further right)."""
    return a % rank + 1


# -- elementwise: every operand batched, the op unchanged -------------------------------------------

@batch("one_hot", "all_reduce", "svd", "eigh", "qr", "pinv", "eig", "bitcast", "ldl_factor", "ldl_solve")
# (they act alike on every leading dimension, as elementwise ops do: a factorization is of the last two axes, a
# bitcast of the last one)
def _elementwise(b, op, args, batched, size):
    return b.op(op.name, *_all(b, args, batched, size), **op.attrs).results


@batch("all_gather")
def _all_gather(b, op, args, batched, size):
    """Processes' operands concatenate along the example's axis 0: gather with the mapped dimension
    second (one all_gather for every example), then put it in front again."""
    x = _all(b, args, batched, size)[0]
    perm = [1, 0, *range(2, x.type.rank)]
    return [transpose(b, b.op("all_gather", transpose(b, x, perm), **op.attrs).results[0], perm)]


def rule_for(op: Op) -> BatchFn | None:
    """`op`'s batching rule: its own, the elementwise one for any elementwise op, else None."""
    rule = BATCH.get(op.name)
    return rule if rule is not None or not op.has_trait("elementwise") else _elementwise


# -- shapes and movement ------------------------------------------------------------------------------

@batch("reshape")
def _reshape(b, op, args, batched, size):
    return [reshape(b, args[0], [size, *op.attrs["shape"]])]


@batch("transpose")
def _transpose(b, op, args, batched, size):
    return [transpose(b, args[0], [0, *(p + 1 for p in op.attrs["perm"])])]


@batch("broadcast")
def _broadcast(b, op, args, batched, size):
    x, shape = args[0], list(op.attrs["shape"])
    x = reshape(b, x, [size, *[1] * (len(shape) + 1 - x.type.rank), *x.shape[1:]])
    return [b("broadcast", x, shape=[size, *shape])]


@batch("slice")
def _slice(b, op, args, batched, size):
    a = op.attrs
    step = [1, *a["step"]] if a["step"] else []
    return [b("slice", args[0], start=[0, *a["start"]], limit=[size, *a["limit"]], step=step)]


@batch("pad")
def _pad(b, op, args, batched, size):
    a = op.attrs
    return [b("pad", args[0], low=[0, *a["low"]], high=[0, *a["high"]], value=a["value"])]


@batch("concat")
def _concat(b, op, args, batched, size):
    return [b("concat", *_all(b, args, batched, size), axis=_axis(op.attrs["axis"], op.operands[0].type.rank))]


# -- reductions, scans, sorts: the same op one axis further right -------------------------------------

@batch("sum", "max")
def _reduce(b, op, args, batched, size):
    rank = op.operands[0].type.rank
    axes = [_axis(a, rank) for a in op.attrs["axes"]] if rank else []
    return [b(op.name, args[0], axes=axes, keepdims=op.attrs["keepdims"])]


@batch("argmax", "cumsum", "sort", "argsort")
def _along_axis(b, op, args, batched, size):
    rank = op.operands[0].type.rank
    if rank == 0:
        return None  # (a 0-d operand's axis 0 is no axis of the batched one)
    return b.op(op.name, args[0], **{**op.attrs, "axis": _axis(op.attrs["axis"], rank)}).results


# -- contractions ---------------------------------------------------------------------------------------

@batch("matmul")
def _matmul(b, op, args, batched, size):
    """One side batched: the mapped dimension joins its rows (x) or columns (y), so the product is
    one matmul of the same batch dimensions; both batched: it is one more batch dimension."""
    x, y = args
    if all(batched):
        return [b("matmul", x, y)]
    bd = list(op.operands[0].shape[:-2])
    nb = len(bd)
    if batched[0]:  # x (B, *bd, M, K) -> (*bd, B*M, K)
        m = x.shape[-2]
        xm = reshape(b, move_axis(b, x, 0, nb), [*bd, size * m, x.shape[-1]])
        out = reshape(b, b("matmul", xm, y), [*bd, size, m, y.shape[-1]])
        return [move_axis(b, out, nb, 0)]
    n = y.shape[-1]  # y (B, *bd, K, N) -> (*bd, K, B*N)
    ym = reshape(b, move_axis(b, y, 0, nb + 1), [*bd, y.shape[-2], size * n])
    out = reshape(b, b("matmul", x, ym), [*bd, x.shape[-2], size, n])
    return [move_axis(b, out, nb + 1, 0)]


def _fold(b: Builder, v: Value) -> Value:
    """(B, N, ...) -> (B*N, ...): the mapped dimension folded into the images."""
    return reshape(b, v, [v.shape[0] * v.shape[1], *v.shape[2:]])


def _unfold(b: Builder, v: Value, size: int) -> Value:
    return reshape(b, v, [size, v.shape[0] // size, *v.shape[1:]])


def _channels(b: Builder, v: Value) -> Value:
    """(B, N, C, H, W) -> (N, B*C, H, W): the mapped dimension folded into the channels (grouped form)."""
    s = v.shape
    return reshape(b, move_axis(b, v, 0, 1), [s[1], s[0] * s[2], *s[3:]])


def _unchannels(b: Builder, v: Value, size: int) -> Value:
    """(N, B*C, H, W) -> (B, N, C, H, W)."""
    s = v.shape
    return move_axis(b, reshape(b, v, [s[0], size, s[1] // size, *s[2:]]), 1, 0)


def _grouped(op: Op, size: int) -> dict:
    return {**op.attrs, "groups": op.attrs["groups"] * size}


@batch("conv2d")
def _conv2d(b, op, args, batched, size):
    """Batched images only: the mapped dimension joins the images. Batched weights: one grouped
    convolution, each example's channels a group of its own weights."""
    x, w = args
    if not batched[1]:
        return [_unfold(b, b("conv2d", _fold(b, x), w, **op.attrs), size)]
    x = materialize(b, x, batched[0], size)
    wf = reshape(b, w, [size * w.shape[1], *w.shape[2:]])
    return [_unchannels(b, b("conv2d", _channels(b, x), wf, **_grouped(op, size)), size)]


@batch("conv2d_grad_input")
def _conv2d_grad_input(b, op, args, batched, size):
    dy, w = args
    n, c, h, wd = op.attrs["input_shape"]
    if not batched[1]:
        return [_unfold(b, b("conv2d_grad_input", _fold(b, dy), w, **{**op.attrs, "input_shape": [size * n, c, h, wd]}),
                        size)]
    dy = materialize(b, dy, batched[0], size)
    wf = reshape(b, w, [size * w.shape[1], *w.shape[2:]])
    attrs = {**_grouped(op, size), "input_shape": [n, size * c, h, wd]}
    return [_unchannels(b, b("conv2d_grad_input", _channels(b, dy), wf, **attrs), size)]


@batch("conv2d_grad_weight")
def _conv2d_grad_weight(b, op, args, batched, size):
    """Per-example weight gradients: one grouped weight gradient over the examples' channels."""
    x, dy = _all(b, args, batched, size)
    o, *rest = op.attrs["weight_shape"]
    attrs = {**_grouped(op, size), "weight_shape": [size * o, *rest]}
    dw = b("conv2d_grad_weight", _channels(b, x), _channels(b, dy), **attrs)
    return [reshape(b, dw, [size, o, *rest])]


@batch("max_pool2d", "avg_pool2d", "max_pool2d_grad")
def _pool(b, op, args, batched, size):
    return [_unfold(b, b(op.name, *(_fold(b, a) for a in _all(b, args, batched, size)), **op.attrs), size)]


@batch("avg_pool2d_grad")
def _avg_pool_grad(b, op, args, batched, size):
    n, *rest = op.attrs["input_shape"]
    return [_unfold(b, b("avg_pool2d_grad", _fold(b, args[0]), **{**op.attrs, "input_shape": [size * n, *rest]}),
                    size)]


# -- gathers and scatters ---------------------------------------------------------------------------

def _offsets(b: Builder, idx: Value, n: int) -> Value:
    """Batched indices (B, ...) into a flattened (B*n, ...) operand: example k's shifted by k*n. An
    index outside [0, n) becomes -1, still out of range (shifted, it would read another example)."""
    dtype = idx.dtype
    bad = b("logical_or", b("lt", idx, b.constant(0, idx.shape, dtype)), b("ge", idx, b.constant(n, idx.shape, dtype)))
    k = b("iota", shape=list(idx.shape), axis=0, dtype=dtype)
    shifted = b("add", idx, b("mul", k, b.constant(n, idx.shape, dtype)))
    return b("where", bad, b.constant(-1, idx.shape, dtype), shifted)


@batch("take")
def _take(b, op, args, batched, size):
    x, idx = args
    ax = op.attrs["axis"] % op.operands[0].type.rank
    if not batched[1]:
        return [b("take", x, idx, axis=ax + 1)]
    ni = idx.type.rank - 1  # the per-example index dimensions
    if not batched[0]:  # x[..., idx(B, *i), ...]: the mapped dimension lands at ax, moved to the front
        return [move_axis(b, b("take", x, idx, axis=ax), ax, 0)]
    n = x.shape[ax + 1]  # both: x (B, *pre, n, *post) -> (B*n, *pre, *post), indices offset per example
    xs = move_axis(b, x, ax + 1, 1)
    flat = reshape(b, xs, [size * n, *xs.shape[2:]])
    out = b("take", flat, _offsets(b, idx, n), axis=0)  # (B, *i, *pre, *post)
    perm = [0, *range(1 + ni, 1 + ni + ax), *range(1, 1 + ni), *range(1 + ni + ax, out.type.rank)]
    return [transpose(b, out, perm)]


@batch("index_add", "index_max")
def _scatter_rows(b, op, args, batched, size):
    v, idx = args
    n = op.attrs["size"]
    if not batched[1]:  # rows (B, M, *rest) -> (M, B, *rest): each index still names a row
        out = b(op.name, move_axis(b, v, 0, 1), idx, size=n)
        return [move_axis(b, out, 1, 0)]
    v = materialize(b, v, batched[0], size)
    flat = reshape(b, v, [size * v.shape[1], *v.shape[2:]])
    out = b(op.name, flat, reshape(b, _offsets(b, idx, n), [size * idx.shape[1]]), size=size * n)
    return [reshape(b, out, [size, n, *out.shape[1:]])]
