"""Where a contraction's GEMM operands live: each op as C[g, m, n] = sum_k A[g, m, k] * B[g, k, n].

The index maps say where A, B and C's elements are in the op's real operands:

* matmul: g runs over the batch dims; A and B are the operands as they are.
* conv2d (implicit GEMM): m = (n, oh, ow), k = (c, kh, kw), n = o, g = group; A is the input at
  (oh*s - p + kh*d, ...) guarded by the image bounds (zero padding), B the weight. A channels-last
  image takes its taps channel-first, k = (kh, kw, c) (`_taps`), so a K block reads consecutive
  addresses.
  Blocked taps (`scalar_taps`, `_kblock`): the taps run outermost whatever the layout, each over
  its channels padded to a multiple of 16 (`Gemm.kblock`; LeNet's 50 channels take 64, ResNet's
  none), and the emitter runs K tiles that lie in one tap, so the tap and its bounds
  test are per-tile scalars instead of per-element arithmetic (`contraction._dot_loop`).
* conv2d_grad_input: m = (n, h, w), k = (o, kh, kw), n = c; A is dy at ((h + p - kh*d) / s, ...)
  where that divides exactly and lands inside dy. Strided (no dilation): one GEMM per stride phase
  (`_conv2d_grad_input_phase`), over only the taps that reach that phase's pixels.
* conv2d_grad_weight: m = o, k = (n, oh, ow), n = (c, kh, kw); A is dy, B the guarded input.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from avalon.ir.core import Op, Value

from .blocks import cdiv
from .emitter import Emitter, Val
from .indexing import Affine, Index, delinearize

Vars = dict[str, Affine]  # "g", "m", "n", "ka", "kb" -> iteration variables
Operand = Callable[[Emitter, Vars], tuple[Index, "Val | None"]]  # index of the operand's element, its guard


@dataclass
class Gemm:
    groups: int
    m: int
    n: int
    k: int
    a: Operand
    b: Operand
    out: Callable[[Vars], Index]
    operands: tuple[int, int] = (0, 1)  # which of the op's operands A and B are
    kblock: int = 0  # K = (taps, kblock), channels fastest: a K tile of BK | kblock lies in one tap
    kvalid: int = 0  # the real channels of a kblock (the rest of it is padding, masked off)


def _kblock(channels: int, taps: int, scalar_taps: bool) -> int:
    """Channels per tap for blocked taps, padded to a multiple of 16 (the smallest `tl.dot` K tile,
    so every BK the tuner tries fits), or 0: a single tap, or padding past 1.5x the channels (an
    RGB image's 3 channels would be 16). A padded lane is a wasted multiply and padding adds K
    steps, which a small, latency-bound kernel feels; a per-element tap costs ~3x the instructions
    of a blocked K step (`benchmarks/ptx_report.py`). LeNet's conv2 input gradient (50 channels to
    64: 40 K steps of 762 instructions became 50 of 307) pads; its forward (20 to 32: 16 steps of
    340 would be 25 of 183) stays per element."""
    padded = -(-channels // 16) * 16
    return padded if scalar_taps and taps > 1 and 2 * padded <= 3 * channels else 0


def _plain(fn: Callable[[Vars], Index]) -> Operand:
    return lambda em, v: (fn(v), None)


def _matmul(op: Op, scalar_taps: bool = False) -> Gemm:
    x, y = op.operands
    batch = x.shape[:-2]
    g = 1
    for s in batch:
        g *= s

    def b(v: Vars) -> Index:
        return delinearize(v["g"], batch)

    return Gemm(g, x.shape[-2], y.shape[-1], x.shape[-1],
                _plain(lambda v: b(v) + (v["m"], v["ka"])), _plain(lambda v: b(v) + (v["kb"], v["n"])),
                lambda v: b(v) + (v["m"], v["n"]))


def _conv_attrs(op: Op):
    a = op.attrs
    return tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"]


def _image(shape: Sequence[int], fn: Callable[[Vars], Index]) -> Operand:
    """An input-image read; taps outside the image (zero padding) are guarded off."""
    def operand(em: Emitter, v: Vars):
        idx = fn(v)
        return idx, em.both(em.in_range(idx[2], shape[2]), em.in_range(idx[3], shape[3]))
    return operand


def _tap_major(image: Value, channels: int, taps: int) -> bool:
    return image.type.strides()[1] == 1 and channels > 1 and taps > 1


def _taps(k: Affine, channels: int, kh: int, kw: int, image: Value,
          kblock: int = 0) -> tuple[Affine, Affine, Affine]:
    """(channel, kernel row, kernel column) of a contraction index over a convolution's taps. The
    channel runs fastest when `image` is stored channels-last (the `layout` pass), so BK
    consecutive taps are consecutive addresses (16-byte cp.async on a GPU instead of 4-byte
    gathers), and with blocked taps (over `kblock` >= channels, `_kblock`); else the kernel column
    does, as in row-major NCHW."""
    if kblock:
        ki, kj, kc = delinearize(k, (kh, kw, kblock))
        return kc, ki, kj
    if _tap_major(image, channels, kh * kw):
        ki, kj, kc = delinearize(k, (kh, kw, channels))
        return kc, ki, kj
    kc, ki, kj = delinearize(k, (channels, kh, kw))
    return kc, ki, kj


def _input_at(op: Op, x: Value, kh: int, kw: int, oh: int, ow: int,
              kblock: int = 0) -> Callable[[Affine, Affine, Affine], Index]:
    """(output pixel (n, oh, ow), tap, group) -> the element of the convolution's input `x` read
    there (before the image-bounds guard: `_image`)."""
    (sh, sw), (ph, pw), (dh, dw), g = _conv_attrs(op)
    n, cg = x.shape[0], x.shape[1] // g

    def at(pixel: Affine, tap: Affine, group: Affine) -> Index:
        bn, boh, bow = delinearize(pixel, (n, oh, ow))
        kc, ki, kj = _taps(tap, cg, kh, kw, x, kblock)
        return (bn, group.scale(cg) + kc, boh.scale(sh) + ki.scale(dh) - ph, bow.scale(sw) + kj.scale(dw) - pw)
    return at


def _conv2d(op: Op, scalar_taps: bool = False) -> Gemm:
    x, w = op.operands
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    g = _conv_attrs(op)[3]
    _, _, oh, ow = op.result.shape
    og = o // g
    kb = _kblock(cg, kh * kw, scalar_taps)
    at = _input_at(op, x, kh, kw, oh, ow, kb)

    def a(v: Vars) -> Index:
        return at(v["m"], v["ka"], v["g"])

    def b(v: Vars) -> Index:
        return (v["g"].scale(og) + v["n"],) + _taps(v["kb"], cg, kh, kw, x, kb)

    def out(v: Vars) -> Index:
        bn, boh, bow = delinearize(v["m"], (n, oh, ow))
        return (bn, v["g"].scale(og) + v["n"], boh, bow)

    return Gemm(g, n * oh * ow, og, (kb or cg) * kh * kw, _image(x.shape, a), _plain(b), out, kblock=kb, kvalid=cg)


def _divides(em: Emitter, num: Affine, stride: int, size: int) -> tuple[Affine, Val | None]:
    """`num / stride` and the guard that it is exact and within [0, size)."""
    if stride == 1:
        return num, em.in_range(num, size)
    s = em.affine(num)
    ok = em.cond(f"({s} >= 0) & (({s}) % {stride} == 0) & (({s}) // {stride} < {size})", num.deps)
    return num.floordiv_mod(stride, None), ok


def _conv2d_grad_input(op: Op, scalar_taps: bool = False) -> Gemm:
    dy, w = op.operands
    n, c, h, wd = op.attrs["input_shape"]
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw), g = _conv_attrs(op)
    _, _, oh, ow = dy.shape
    og = o // g
    kb = _kblock(og, kh * kw, scalar_taps)

    def a(em: Emitter, v: Vars):
        bn, bh, bw = delinearize(v["m"], (n, h, wd))
        ko, ki, kj = _taps(v["ka"], og, kh, kw, dy, kb)
        qh, gh = _divides(em, bh + ph - ki.scale(dh), sh, oh)
        qw, gw = _divides(em, bw + pw - kj.scale(dw), sw, ow)
        return (bn, v["g"].scale(og) + ko, qh, qw), em.both(gh, gw)

    def b(v: Vars) -> Index:
        ko, ki, kj = _taps(v["kb"], og, kh, kw, dy, kb)
        return (v["g"].scale(og) + ko, v["n"], ki, kj)

    def out(v: Vars) -> Index:
        bn, bh, bw = delinearize(v["m"], (n, h, wd))
        return (bn, v["g"].scale(cg) + v["n"], bh, bw)

    return Gemm(g, n * h * wd, cg, (kb or og) * kh * kw, a, _plain(b), out, kblock=kb, kvalid=og)


def grad_input_phases(op: Op) -> list[tuple[int, int]]:
    """The stride phases a strided conv2d_grad_input splits into ([] when it does not: stride 1,
    or dilation, whose valid taps are not one stride apart)."""
    if op.name != "conv2d_grad_input":
        return []
    (sh, sw), _, (dh, dw), _ = _conv_attrs(op)
    if (sh, sw) == (1, 1) or (dh, dw) != (1, 1):
        return []
    _, _, h, wd = op.attrs["input_shape"]
    return [(a, b) for a in range(min(sh, h)) for b in range(min(sw, wd))]  # (phases with pixels)


def _conv2d_grad_input_phase(op: Op, ph: int, pw: int, scalar_taps: bool = False) -> Gemm:
    """The input pixels (ph + sh*i, pw + sw*j) of a strided conv2d_grad_input, which only the taps
    kh = rh + sh*jh (rh = (ph + pad) % sh; the same for kw) reach: an implicit GEMM over those
    taps alone, dy read at (i + ch - jh, j + cw - jw). The whole-image GEMM multiplies zeros for
    all other taps: 3/4 of its K steps at stride 2."""
    dy, w = op.operands
    n, c, h, wd = op.attrs["input_shape"]
    o, cg, kh, kw = w.shape
    (sh, sw), (pad_h, pad_w), _, g = _conv_attrs(op)
    _, _, oh, ow = dy.shape
    og = o // g
    hp, wp = max(0, cdiv(h - ph, sh)), max(0, cdiv(wd - pw, sw))
    rh, rw = (ph + pad_h) % sh, (pw + pad_w) % sw
    nkh, nkw = max(0, cdiv(kh - rh, sh)), max(0, cdiv(kw - rw, sw))
    ch, cw = (ph + pad_h - rh) // sh, (pw + pad_w - rw) // sw
    kb = _kblock(og, nkh * nkw, scalar_taps)

    def taps(k: Affine) -> tuple[Affine, Affine, Affine]:  # (a phase no tap reaches has K = 0: no loop)
        if kb or _tap_major(dy, og, nkh * nkw):
            jh, jw, ko = delinearize(k, (max(nkh, 1), max(nkw, 1), kb or og))
            return ko, jh, jw
        return delinearize(k, (og, max(nkh, 1), max(nkw, 1)))

    def a(em: Emitter, v: Vars):
        bn, bi, bj = delinearize(v["m"], (n, hp, wp))
        ko, jh, jw = taps(v["ka"])
        qh, qw = bi + ch - jh, bj + cw - jw
        return (bn, v["g"].scale(og) + ko, qh, qw), em.both(em.in_range(qh, oh), em.in_range(qw, ow))

    def b(v: Vars) -> Index:
        ko, jh, jw = taps(v["kb"])
        return (v["g"].scale(og) + ko, v["n"], jh.scale(sh) + rh, jw.scale(sw) + rw)

    def out(v: Vars) -> Index:
        bn, bi, bj = delinearize(v["m"], (n, hp, wp))
        return (bn, v["g"].scale(cg) + v["n"], bi.scale(sh) + ph, bj.scale(sw) + pw)

    return Gemm(g, n * hp * wp, cg, (kb or og) * nkh * nkw, a, _plain(b), out, kblock=kb, kvalid=og)


def _conv2d_grad_weight(op: Op, scalar_taps: bool = False) -> Gemm:
    x, dy = op.operands
    n = x.shape[0]
    o, cg, kh, kw = op.attrs["weight_shape"]
    g = _conv_attrs(op)[3]
    _, _, oh, ow = dy.shape
    og = o // g
    at = _input_at(op, x, kh, kw, oh, ow)

    def a(v: Vars) -> Index:
        bn, boh, bow = delinearize(v["ka"], (n, oh, ow))
        return (bn, v["g"].scale(og) + v["m"], boh, bow)

    def b(v: Vars) -> Index:
        return at(v["kb"], v["n"], v["g"])

    def out(v: Vars) -> Index:
        return (v["g"].scale(og) + v["m"],) + _taps(v["n"], cg, kh, kw, x)

    return Gemm(g, og, cg * kh * kw, n * oh * ow, _plain(a), _image(x.shape, b), out, operands=(1, 0))


GEMMS = {"matmul": _matmul, "conv2d": _conv2d, "conv2d_grad_input": _conv2d_grad_input,
         "conv2d_grad_weight": _conv2d_grad_weight}
