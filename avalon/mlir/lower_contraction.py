"""Linalg lowerings of the contractions: matmul (linalg.matmul / batch_matmul) and conv2d with
its two gradients, all through one grouped convolution (`linalg.conv_2d_nchw_fchw` for one
group, `linalg.conv_2d_ngchw_gfchw` for more) on explicitly padded inputs:

* conv2d_grad_input is the transposed convolution: dy spread out by the stride (zeros between),
  padded by dilation*(k-1) - padding (plus the rows no window reached), convolved at stride 1 with
  the weight flipped in space and its in/out channels swapped;
* conv2d_grad_weight is im2col + one matmul for one group (dy as (O, N*OH*OW) times the patches);
  for more groups it convolves the input (batch as channels) with dy (batch as channels, its
  spatial dims as the kernel), stride and dilation swapped, cropped to the kernel size.
"""
from __future__ import annotations

from collections.abc import Sequence

from avalon.ir import Op, TensorType

from .emitter import LinalgEmitter, V, amap, ty
from .linalg import rule


def _fill0(e: LinalgEmitter, t: TensorType) -> V:
    return e.full(t, 0.0 if t.dtype.is_float else 0)


@rule("matmul")
def _matmul(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    x, y = args
    out = types[0]
    if out.rank == 2:
        return [_named(e, "linalg.matmul", x, y, out)]
    batch = out.shape[:-2]
    b = 1
    for s in batch:
        b *= s
    x3, y3 = e.reshape(x, (b, *x.t.shape[-2:])), e.reshape(y, (b, *y.t.shape[-2:]))
    r = _named(e, "linalg.batch_matmul", x3, y3, TensorType((b, *out.shape[-2:]), out.dtype))
    return [e.reshape(r, out.shape)]


def _named(e: LinalgEmitter, name: str, x: V, y: V, out: TensorType, attrs: str = "") -> V:
    f = _fill0(e, out)
    if x.t.numel == 0 or y.t.numel == 0:  # nothing to sum over: zeros (IREE warns of reading f's tensor.empty)
        return f
    return e.op(f"{name}{attrs} ins({x.name}, {y.name} : {ty(x.t)}, {ty(y.t)}) outs({f.name} : {ty(out)}) -> {ty(out)}",
                out)


def _i64x2(v: Sequence[int]) -> str:
    return f"dense<[{int(v[0])}, {int(v[1])}]> : tensor<2xi64>"


def conv5(e: LinalgEmitter, x: V, w: V, strides: Sequence[int], dilations: Sequence[int]) -> V:
    """Grouped convolution of padded x (N, G, C, H, W) with w (G, F, C, KH, KW) -> (N, G, F, OH, OW)."""
    n, g, c, h, wd = x.t.shape
    _, f, _, kh, kw = w.t.shape
    oh = (h - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    attrs = f" {{dilations = {_i64x2(dilations)}, strides = {_i64x2(strides)}}}"
    if g == 1:
        y = _named(e, "linalg.conv_2d_nchw_fchw", e.reshape(x, (n, c, h, wd)), e.reshape(w, (f, c, kh, kw)),
                   TensorType((n, f, oh, ow), x.d), attrs)
        return e.reshape(y, (n, 1, f, oh, ow))
    return _named(e, "linalg.conv_2d_ngchw_gfchw", x, w, TensorType((n, g, f, oh, ow), x.d), attrs)


def _zero(d) -> float | int:
    return 0.0 if d.is_float else 0


@rule("conv2d")
def _conv2d(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    x, w = args
    (ph, pw), g = op.attrs["padding"], op.attrs["groups"]
    xp = e.pad(x, [0, 0, ph, pw], [0, 0, ph, pw], _zero(x.d))
    n, c, h, wd = xp.t.shape
    o, cg, kh, kw = w.t.shape
    y = conv5(e, e.reshape(xp, (n, g, cg, h, wd)), e.reshape(w, (g, o // g, cg, kh, kw)),
              op.attrs["stride"], op.attrs["dilation"])
    return [e.reshape(y, types[0].shape)]


def spread(e: LinalgEmitter, dy: V, strides: Sequence[int]) -> V:
    """dy (..., OH, OW) with stride-1 zeros between its elements along the last two dims."""
    if tuple(strides) == (1, 1):
        return dy
    # (.., OH, 1, OW, 1) padded to (.., OH, sh, OW, sw), flattened and cropped: reshapes and a pad
    # only (a strided tensor.insert_slice into zeros gave wrong results in IREE for batch > 1)
    *lead, oh, ow = dy.t.shape
    sh, sw = strides
    k = len(lead)
    x = e.reshape(dy, (*lead, oh, 1, ow, 1))
    x = e.pad(x, [0] * (k + 4), [0] * k + [0, sh - 1, 0, sw - 1], _zero(dy.d))
    x = e.reshape(x, (*lead, oh * sh, ow * sw))
    return e.slice(x, [0] * (k + 2), (*lead, (oh - 1) * sh + 1, (ow - 1) * sw + 1), [1] * (k + 2))


def flip(e: LinalgEmitter, w5: V, kh: int, kw: int) -> V:
    """w5 (G, F, C, KH, KW) -> (G, C, F, KH, KW) flipped in space. A gather in the body
    (tensor.extract), not an indexing map `KH - 1 - d3`: IREE rejects maps with negated dims."""
    g, f, c = w5.t.shape[:3]

    def body(b: LinalgEmitter, a: list[V]) -> V:
        i = [b.index(d) for d in range(5)]
        r = b.arith("arith.subi", b.index_const(kh - 1), i[3])
        s = b.arith("arith.subi", b.index_const(kw - 1), i[4])
        at = ", ".join(v.name for v in (i[0], i[2], i[1], r, s))
        return b.op(f"tensor.extract {w5.name}[{at}] : {ty(w5.t)}", w5.d)
    return e.map([], TensorType((g, c, f, kh, kw), w5.d), body)


@rule("conv2d_grad_input")
def _conv2d_grad_input(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    dy, w = args
    n, c, h, wd = op.attrs["input_shape"]
    (sh, sw), (ph, pw), (dh, dw), g = (op.attrs[k] for k in ("stride", "padding", "dilation", "groups"))
    o, cg, kh, kw = w.t.shape
    oh, ow = dy.t.shape[2:]
    extra = (h + 2 * ph - dh * (kh - 1) - 1 - (oh - 1) * sh, wd + 2 * pw - dw * (kw - 1) - 1 - (ow - 1) * sw)
    low = (dh * (kh - 1) - ph, dw * (kw - 1) - pw)
    d = e.pad(spread(e, dy, (sh, sw)), [0, 0, *low], [0, 0, low[0] + extra[0], low[1] + extra[1]], _zero(dy.d))
    w5 = e.reshape(w, (g, o // g, cg, kh, kw))
    flipped = flip(e, w5, kh, kw)
    y = conv5(e, e.reshape(d, (n, g, o // g, *d.t.shape[2:])), flipped, (1, 1), (dh, dw))
    return [e.reshape(y, (n, c, h, wd))]


@rule("conv2d_grad_weight")
def _conv2d_grad_weight(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    x, dy = args
    o, cg, kh, kw = op.attrs["weight_shape"]
    (sh, sw), (ph, pw), (dh, dw), g = (op.attrs[k] for k in ("stride", "padding", "dilation", "groups"))
    xp = e.pad(x, [0, 0, ph, pw], [0, 0, ph, pw], _zero(x.d))
    n, _, hp, wp = xp.t.shape
    oh, ow = dy.t.shape[2:]
    if g == 1:
        # im2col + one matmul: IREE runs the batch-as-channels convolution below ~8x slower
        cols = e.map([xp], TensorType((n, oh, ow, cg, kh, kw), x.d), lambda b, a: a[0],
                     maps=[amap(6, ["d0", "d3", f"d1 * {sh} + d4 * {dh}", f"d2 * {sw} + d5 * {dw}"])])
        cols = e.reshape(cols, (n * oh * ow, cg * kh * kw))
        dyt = e.reshape(e.transpose(dy, (1, 0, 2, 3)), (o, n * oh * ow))
        dw2 = _named(e, "linalg.matmul", dyt, cols, TensorType((o, cg * kh * kw), x.d))
        return [e.reshape(dw2, (o, cg, kh, kw))]
    xt = e.transpose(e.reshape(xp, (n, g, cg, hp, wp)), (2, 1, 0, 3, 4))  # (Cg, G, N, Hp, Wp)
    dyt = e.transpose(e.reshape(dy, (n, g, o // g, oh, ow)), (1, 2, 0, 3, 4))  # (G, Og, N, OH, OW)
    y = conv5(e, xt, dyt, (dh, dw), (sh, sw))  # (Cg, G, Og, KH', KW')
    y = e.slice(y, [0] * 5, (cg, g, o // g, kh, kw), [1] * 5)
    return [e.reshape(e.transpose(y, (1, 2, 0, 3, 4)), (o, cg, kh, kw))]
