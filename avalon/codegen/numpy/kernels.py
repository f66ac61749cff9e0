"""Numpy formulations of the contractions, pooling and random numbers that generated code calls.

Every function writes its result through `out` and takes its workspaces as arguments (views of
buffers the executable allocated once), so a training step allocates nothing large. Two im2col
layouts, picked per shape by `batch_first` (measured on LeNet's layers, see benchmarks/):

* batch first, patches (N, C, KH, KW, OH, OW): each tap copy moves runs of OW values and the matmul
  writes NCHW directly, with no transpose back; best when a sample's output plane is large;
* batch last, patches (C, KH, KW, OH, OW, N) as in the reference: tap copies move runs of OW*N
  values, at the price of transposing the input in and the output back; best for small planes;
* backend='cpu' only, row patches (N*OH*OW, KH*KW*C) of an NHWC copy (`conv2d_rows`): one GEMM per
  chunk of output positions with a long M, where the other two run GEMMs with M = O (16 on a
  narrow ResNet); taken for >= 8 channels in and out and more than one tap (`rows_layout`).

Sums are reordered against the reference rules (other matmul shapes), so results agree within
float tolerance, not bit for bit; the pooling and random-number kernels are exact.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from avalon.ir.reference.elementwise import float_power  # noqa: F401  (emitted as K.float_power)
from avalon.ir.reference.gather import seed_keys

Geometry = tuple[int, int, int, int, int, int]  # sh, sw, ph, pw, dh, dw

# -- BLAS threads ---------------------------------------------------------------------------------
# A generated call runs its GEMMs on one OpenBLAS thread unless one GEMM is large (`PARALLEL_MIN_MNK`).
# Why: on a small shared machine (the 2-core VM of benchmarks/cpu_step.py) a threaded OpenBLAS call
# waits for its worker, which is often descheduled: a 16x144x1024 GEMM (a ResNet conv, per sample)
# took 58 us median but 16 ms at the 90th percentile on 2 threads, 76/77 us on one; and the worker
# spins after each call on the core our own numpy passes (or torch, in the same process) need.
# Same process, interleaved, load ~3: GPT step 240 -> 38 ms, narrow ResNet 1295 -> 149 ms, VAE
# 122 -> 17 ms with every GEMM on one thread (load ~7, benchmarks/cpu_step.py's steps: GPT 347 -> 78,
# ResNet 1813 -> 188, VAE 216 -> 14, LeNet 326 -> 51 ms); one run at load ~2.8 had the VAE ~10%
# faster with its 128x784x400 GEMMs on two threads, the one case seen to lose.

PARALLEL_MIN_MNK = 1 << 28
"""GEMMs of at least this many multiply-adds (M*N*K; ~0.27G, ~5 ms on one core here) run on the
caller's BLAS thread count, smaller ones on one thread: at 32M (a 512x512x128 GEMM) threads already
cost a GPT step 5x under load."""

SERIAL_MAX_CPUS = 4
"""Only on machines with at most this many CPUs (available to the process) do generated calls change
BLAS's threads: the stalls above were measured on 2 cores; on larger machines (not measured here)
OpenBLAS keeps its own per-call choice, as before."""


def _small_machine() -> bool:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return n <= SERIAL_MAX_CPUS


_CTL: list[Any] = []  # [(get, set)] of the BLAS thread count once looked up, [None] when there is none
_WIDE = [1]  # the caller's thread count while a generated call runs


def _ctl() -> Any:
    if not _CTL:
        from .blas import thread_control
        _CTL.append(thread_control() if _small_machine() else None)
    return _CTL[0]


def serial() -> int:
    """Entering a generated call: BLAS on one thread; returns the caller's count for `restore`
    (0 when the thread count cannot be set)."""
    c = _ctl()
    if c is None:
        return 0
    n = _WIDE[0] = c[0]()
    if n > 1:
        c[1](1)
    return n


def restore(n: int) -> None:
    """Leaving a generated call: the caller's BLAS thread count back."""
    if n > 1:
        _ctl()[1](n)


def wide(mnk: int) -> bool:
    """Before a GEMM of `mnk` multiply-adds: the caller's thread count when it is large enough;
    True when it changed (call `narrow` after)."""
    if mnk < PARALLEL_MIN_MNK or _WIDE[0] <= 1 or _ctl() is None:
        return False
    _ctl()[1](_WIDE[0])
    return True


def narrow() -> None:
    """After a `wide` GEMM: back to one thread."""
    if _WIDE[0] > 1 and _ctl() is not None:
        _ctl()[1](1)



def batch_first(oh: int, ow: int) -> bool:
    """Batch-first patches when one sample's output plane is large enough that runs of OW values
    are cheap to copy (conv1 of LeNet, 24x24); batch-last otherwise (conv2, 8x8)."""
    return oh * ow >= 256


def _tap(i: int, j: int, oh: int, ow: int, g: Geometry) -> tuple[slice, slice]:
    sh, sw, _, _, dh, dw = g
    return slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)


def _padded_bf(x: np.ndarray, g: Geometry, xp: np.ndarray | None) -> np.ndarray:
    """x with its zero border (N, C, H+2ph, W+2pw), in `xp` when there is padding."""
    ph, pw = g[2], g[3]
    if xp is None:
        return x
    h, w = x.shape[2:]
    xp.fill(0)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    return xp


def _padded_bl(x: np.ndarray, g: Geometry, xt: np.ndarray) -> np.ndarray:
    """x transposed batch last (C, H+2ph, W+2pw, N) in `xt`, zero border included."""
    ph, pw = g[2], g[3]
    h, w = x.shape[2:]
    if ph or pw:
        xt.fill(0)
    np.copyto(xt[:, ph : ph + h, pw : pw + w], x.transpose(1, 2, 3, 0))
    return xt


CHUNK_BYTES = 2 << 20
"""The most bytes an im2col workspace takes: patches are built and multiplied a chunk at a time (by
samples for batch-first patches, by output rows for batch-last ones), so a step's scratch stays
near its planned buffers instead of growing with the largest patch matrix. 2 MiB: LeNet's step is
~5% faster than with 1 MiB (conv2's matmuls get 1024 columns instead of 512) and its resident
scratch 14.1 MiB, inside the memory goal of 15.9 MiB; 4 MiB gains ~3% more for 17 MiB."""


def chunk(units: int, unit_bytes: int) -> int:
    """How many units (samples or output rows) one workspace of CHUNK_BYTES holds (at least one)."""
    return max(1, min(units, CHUNK_BYTES // max(unit_bytes, 1)))


ROWS_CHUNK_BYTES = 512 << 10
"""The most bytes a row-patch workspace (`conv2d_rows` and its gradients) takes: smaller than
CHUNK_BYTES because the chunk's GEMM re-reads it while its packed operands and output share the
core's L2 (2 MiB there): a narrow ResNet-18 step (1 thread, 2 MiB L2 per core) runs in ~0.90x the
time it took with 2 MiB workspaces, 384 KiB to 1 MiB alike."""


def rows_chunk(rows: int, row_bytes: int) -> int:
    """How many patch rows one row-patch workspace holds (at least one): ROWS_CHUNK_BYTES, never
    more than CHUNK_BYTES."""
    return max(1, min(rows, min(ROWS_CHUNK_BYTES, CHUNK_BYTES) // max(row_bytes, 1)))


def _per_chunk(workspace: np.ndarray, unit: int) -> int:
    """Output rows a flat batch-last workspace holds (at least one, also for empty shapes)."""
    return max(1, workspace.size // max(unit, 1))


def _rows(i: int, r0: int, r1: int, g: Geometry) -> slice:
    """Input rows tap row `i` reads for output rows [r0, r1)."""
    sh, dh = g[0], g[4]
    return slice(i * dh + sh * r0, i * dh + sh * (r1 - 1) + 1, sh)


def _windows(src: np.ndarray, g: Geometry, kh: int, kw: int, axes: tuple[int, int]) -> np.ndarray:
    """Every window of `src` (strides, dilation) as one strided view: the two spatial `axes` become
    output positions and two trailing axes the (KH, KW) taps. Copying patches out of it is one numpy
    call instead of one per tap (25 calls per chunk cost LeNet's conv2 more than its matmul)."""
    sh, sw, _, _, dh, dw = g
    win = sliding_window_view(src, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=axes)
    index = [slice(None)] * win.ndim
    index[axes[0]], index[axes[1]] = slice(None, None, sh), slice(None, None, sw)
    index[-2], index[-1] = slice(None, None, dh), slice(None, None, dw)
    return win[tuple(index)]


def _cols_bl(win: np.ndarray, r0: int, r1: int, cols: np.ndarray) -> np.ndarray:
    """Batch-last patches (C, KH, KW, r1-r0, OW, N) of output rows [r0, r1), in a prefix of flat `cols`
    (`win`: `_windows` of the batch-last input, (C, OH, OW, N, KH, KW))."""
    c, _, ow, n, kh, kw = win.shape
    out = cols[: c * kh * kw * (r1 - r0) * ow * n].reshape(c, kh, kw, r1 - r0, ow, n)
    np.copyto(out, win[:, r0:r1].transpose(0, 4, 5, 1, 2, 3))
    return out


def _patches_bf(src: np.ndarray, g: Geometry, kh: int, kw: int, im2col: Any) -> Any:
    """A function (n0, m, cc) that copies samples n0 .. n0+m-1's patches into `cc` (m, C, KH, KW,
    OH, OW): the compiled copy (`native.im2col_bf_call`) when there is one and `src` (the padded
    input) is C-contiguous, else numpy's copy of the window view."""
    if im2col is not None and src.flags.c_contiguous and src.dtype.isnative:
        p = src.ctypes.data
        return lambda n0, m, cc: im2col(p, cc.ctypes.data, n0, m)
    win = _windows(src, g, kh, kw, (2, 3))  # (N, C, OH, OW, KH, KW)
    return lambda n0, m, cc: np.copyto(cc, win[n0 : n0 + m].transpose(0, 1, 4, 5, 2, 3))


def conv2d_bf(x: np.ndarray, w: np.ndarray, g: Geometry, out: np.ndarray, cols: np.ndarray,
              xp: np.ndarray | None, im2col: Any = None) -> None:
    """conv2d, batch-first patches: out[n] = W (O, CKK) @ cols[n] (CKK, OH*OW), `len(cols)` samples
    at a time (`im2col`: a compiled patch copy, `native.im2col_bf_call`)."""
    n = x.shape[0]
    o, c, kh, kw = w.shape
    oh, ow = out.shape[2:]
    patches = _patches_bf(_padded_bf(x, g, xp), g, kh, kw, im2col)
    w2 = w.reshape(o, c * kh * kw)
    for n0 in range(0, n, cols.shape[0]):
        m = min(cols.shape[0], n - n0)
        cc = cols[:m]
        patches(n0, m, cc)
        np.matmul(w2, cc.reshape(m, c * kh * kw, oh * ow), out=out[n0 : n0 + m].reshape(m, o, oh * ow))


def conv2d_bl(x: np.ndarray, w: np.ndarray, g: Geometry, out: np.ndarray, xt: np.ndarray, cols: np.ndarray,
              y: np.ndarray) -> None:
    """conv2d, batch-last patches, a chunk of output rows at a time: y (O, rows*OW*N) = W @ cols,
    transposed back into those rows of `out` (`cols`, `y`: flat workspaces)."""
    n = x.shape[0]
    o, c, kh, kw = w.shape
    oh, ow = out.shape[2:]
    win = _windows(_padded_bl(x, g, xt), g, kh, kw, (1, 2))
    w2 = w.reshape(o, c * kh * kw)
    rb = _per_chunk(cols, c * kh * kw * ow * n)
    for r0 in range(0, oh, rb):
        r1 = min(oh, r0 + rb)
        cc = _cols_bl(win, r0, r1, cols)
        yc = y[: o * (r1 - r0) * ow * n].reshape(o, (r1 - r0) * ow * n)
        np.matmul(w2, cc.reshape(c * kh * kw, -1), out=yc)
        np.copyto(out[:, :, r0:r1], yc.reshape(o, r1 - r0, ow, n).transpose(3, 0, 1, 2))


def conv2d_grad_input_bf(dy: np.ndarray, w: np.ndarray, g: Geometry, out: np.ndarray, dcols: np.ndarray,
                         dxp: np.ndarray | None, col2im: Any = None) -> None:
    """dx: dcols[n] = W^T @ dy[n], each tap's slice added back where the forward read it, `len(dcols)`
    samples at a time; `col2im`, a compiled scatter of a chunk's taps (`native.col2im_bf_call`),
    replaces the per-tap numpy adds."""
    n, o, oh, ow = dy.shape
    _, c, kh, kw = w.shape
    ph, pw = g[2], g[3]
    acc = out if dxp is None else dxp
    acc.fill(0)
    wt = w.reshape(o, c * kh * kw).T
    for n0 in range(0, n, dcols.shape[0]):
        m = min(dcols.shape[0], n - n0)
        np.matmul(wt, dy[n0 : n0 + m].reshape(m, o, oh * ow), out=dcols[:m])
        if col2im is not None:
            col2im(dcols.ctypes.data, acc.ctypes.data, n0, m)
            continue
        d6 = dcols[:m].reshape(m, c, kh, kw, oh, ow)
        for i in range(kh):
            for j in range(kw):
                si, sj = _tap(i, j, oh, ow, g)
                acc[n0 : n0 + m, :, si, sj] += d6[:, :, i, j]
    if dxp is not None:
        h, wd = out.shape[2:]
        np.copyto(out, dxp[:, :, ph : ph + h, pw : pw + wd])


def conv2d_grad_input_bl(dy: np.ndarray, w: np.ndarray, g: Geometry, out: np.ndarray, dyt: np.ndarray,
                         dcols: np.ndarray, dxt: np.ndarray, col2im: Any = None) -> None:
    """dx, batch last, a chunk of output rows at a time (`dyt`, `dcols`: flat workspaces); `col2im`, a
    compiled scatter of a chunk's taps (`native.col2im_call`), replaces the per-tap numpy adds."""
    n, o, oh, ow = dy.shape
    _, c, kh, kw = w.shape
    ph, pw = g[2], g[3]
    h, wd = out.shape[2:]
    wt = w.reshape(o, c * kh * kw).T
    dxt.fill(0)
    rb = _per_chunk(dcols, c * kh * kw * ow * n)
    for r0 in range(0, oh, rb):
        r1 = min(oh, r0 + rb)
        k = (r1 - r0) * ow * n
        dc = dyt[: o * k].reshape(o, r1 - r0, ow, n)
        np.copyto(dc, dy[:, :, r0:r1].transpose(1, 2, 3, 0))
        d2 = dcols[: c * kh * kw * k].reshape(c * kh * kw, k)
        np.matmul(wt, dc.reshape(o, k), out=d2)
        if col2im is not None:
            col2im(d2.ctypes.data, dxt.ctypes.data, r0, r1)
            continue
        d6 = d2.reshape(c, kh, kw, r1 - r0, ow, n)
        for i in range(kh):
            si = _rows(i, r0, r1, g)
            for j in range(kw):
                sj = _tap(i, j, 1, ow, g)[1]
                dxt[:, si, sj] += d6[:, i, j]
    np.copyto(out, dxt[:, ph : ph + h, pw : pw + wd].transpose(3, 0, 1, 2))


def conv2d_grad_weight_bf(x: np.ndarray, dy: np.ndarray, g: Geometry, out: np.ndarray, cols: np.ndarray,
                          xp: np.ndarray | None, part: np.ndarray, acc: np.ndarray, im2col: Any = None) -> None:
    """dw = sum over n of dy[n] @ cols[n]^T: per chunk of `len(cols)` samples one batched matmul into
    `part`, summed into `out` (through `acc` after the first chunk); `im2col` as in `conv2d_bf`."""
    n, o, oh, ow = dy.shape
    _, c, kh, kw = out.shape
    patches = _patches_bf(_padded_bf(x, g, xp), g, kh, kw, im2col)
    out2 = out.reshape(o, c * kh * kw)
    if n == 0:
        out.fill(0)
    for n0 in range(0, n, cols.shape[0]):
        m = min(cols.shape[0], n - n0)
        cc = cols[:m]
        patches(n0, m, cc)
        np.matmul(dy[n0 : n0 + m].reshape(m, o, oh * ow), cc.reshape(m, c * kh * kw, oh * ow).transpose(0, 2, 1),
                  out=part[:m])
        if n0 == 0:
            np.sum(part[:m], axis=0, out=out2)
        else:
            np.sum(part[:m], axis=0, out=acc)
            out2 += acc


def conv2d_grad_weight_bl(x: np.ndarray, dy: np.ndarray, g: Geometry, out: np.ndarray, xt: np.ndarray,
                          cols: np.ndarray, dyt: np.ndarray, acc: np.ndarray) -> None:
    """dw^T = cols @ dy^T (CKK, O), batch last, a chunk of output rows at a time, summed in `acc` (the
    chunks after the first through `out`'s memory), transposed into `out` at the end (`cols`, `dyt`:
    flat workspaces). That orientation: LeNet conv2's (500 x 1024) @ (1024 x 50) runs at ~136 GFLOP/s
    where (50 x 1024) @ (1024 x 500) ran at ~114 (OpenBLAS, 2 cores)."""
    n, o, oh, ow = dy.shape
    _, c, kh, kw = out.shape
    win = _windows(_padded_bl(x, g, xt), g, kh, kw, (1, 2))
    total, part = acc.reshape(c * kh * kw, o), out.reshape(c * kh * kw, o)
    if oh == 0:
        out.fill(0)
        return
    rb = _per_chunk(cols, c * kh * kw * ow * n)
    for r0 in range(0, oh, rb):
        r1 = min(oh, r0 + rb)
        k = (r1 - r0) * ow * n
        cc = _cols_bl(win, r0, r1, cols)
        dc = dyt[: o * k].reshape(o, r1 - r0, ow, n)
        np.copyto(dc, dy[:, :, r0:r1].transpose(1, 2, 3, 0))
        np.matmul(cc.reshape(c * kh * kw, k), dc.reshape(o, k).T, out=total if r0 == 0 else part)
        if r0:
            total += part
    np.copyto(out.reshape(o, c * kh * kw), total.T)


# -- row patches (backend='cpu'): one GEMM over all output positions ---------------------------------
# Patches as rows (N*OH*OW, KH*KW*C) of an NHWC copy of the input, so a chunk of positions is one GEMM
# with a long M: (rows, KKC) @ (KKC, O). The per-sample `W @ cols[n]` of the batch-first layout has
# M = O (16 on a narrow ResNet's first stage), where OpenBLAS reaches ~45 GFLOP/s; rows @ W^T runs at
# ~75 (1 thread, 16x144x1024 per sample: 1.6 vs 1.0 ms for 16 samples), and the weight gradient is
# one GEMM per chunk instead of a batched one and its sum. The layout changes are compiled copies
# (`native.to_nhwc_call`, `from_nhwc_call`); the copies and scatters of patches are compiled loops
# over contiguous runs of KW*C values (`native.im2col_rows_call`, `col2im_rows_call`).


def rows_layout(c: int, o: int, kh: int, kw: int) -> bool:
    """Row patches when a tap's run (KW*C values) and the GEMM's N (O) are not tiny and there is more
    than one tap: LeNet's 1- and 6-channel layers keep the batch-first / batch-last layouts they were
    tuned with, and a 1x1 convolution (a ResNet shortcut: 0.07 ms batch first, 0.24 ms as rows, two
    thirds of it the NHWC moves) has no patches to gain on."""
    return c >= 8 and o >= 8 and kh * kw > 1


def _c_ptr(a: np.ndarray) -> tuple[np.ndarray, int]:
    """`a` as a C-contiguous native array and its address (a copy only when it is not one)."""
    if not (a.flags.c_contiguous and a.dtype.isnative):
        a = np.ascontiguousarray(a, a.dtype.newbyteorder("="))
    return a, a.ctypes.data


def _write_back(out: np.ndarray, fill: Any, *args: Any) -> None:
    """Call the compiled `fill(*args, address)` into `out`, through a contiguous copy when it is not."""
    if out.flags.c_contiguous:
        fill(*args, out.ctypes.data)
        return
    tmp = np.empty(out.shape, out.dtype)
    fill(*args, tmp.ctypes.data)
    np.copyto(out, tmp)


def conv2d_rows(x: np.ndarray, w: np.ndarray, out: np.ndarray, xp: np.ndarray, wr: np.ndarray, cols: np.ndarray,
                y: np.ndarray, to_nhwc: Any, im2col: Any, from_nhwc: Any) -> None:
    """conv2d: y (N*OH*OW, O) = patches @ Wr^T a chunk of `len(cols)` positions at a time (Wr: w as
    (O, KH, KW, C) in `wr`), then y moved to NCHW `out`."""
    o, c, kh, kw = w.shape
    rows = y.shape[0]
    x, px = _c_ptr(x)
    to_nhwc(px, xp.ctypes.data)
    np.copyto(wr.reshape(o, kh, kw, c), w.transpose(0, 2, 3, 1))
    pxp, pc, rb = xp.ctypes.data, cols.ctypes.data, cols.shape[0]
    for r0 in range(0, rows, rb):
        m = min(rb, rows - r0)
        im2col(pxp, pc, r0, m)
        np.matmul(cols[:m], wr.T, out=y[r0 : r0 + m])
    _write_back(out, from_nhwc, y.ctypes.data)


def conv2d_grad_input_rows(dy: np.ndarray, w: np.ndarray, out: np.ndarray, dyr: np.ndarray, wr: np.ndarray,
                           dcols: np.ndarray, dxp: np.ndarray, to_nhwc: Any, col2im: Any, from_nhwc: Any) -> None:
    """dx: dy moved to rows (N*OH*OW, O) in `dyr`; per chunk of positions dcols = dyr @ Wr, scattered
    into the zeroed padded NHWC gradient `dxp`, whose interior is moved to NCHW `out`."""
    o, c, kh, kw = w.shape
    rows = dyr.shape[0]
    dy, pdy = _c_ptr(dy)
    to_nhwc(pdy, dyr.ctypes.data)
    np.copyto(wr.reshape(o, kh, kw, c), w.transpose(0, 2, 3, 1))
    dxp.fill(0)
    pd, px, rb = dcols.ctypes.data, dxp.ctypes.data, dcols.shape[0]
    for r0 in range(0, rows, rb):
        m = min(rb, rows - r0)
        np.matmul(dyr[r0 : r0 + m], wr, out=dcols[:m])
        col2im(pd, px, r0, m)
    _write_back(out, from_nhwc, px)


def conv2d_grad_weight_rows(x: np.ndarray, dy: np.ndarray, out: np.ndarray, xp: np.ndarray, dyr: np.ndarray,
                            cols: np.ndarray, acc: np.ndarray, part: np.ndarray, x_nhwc: Any, dy_nhwc: Any,
                            im2col: Any) -> None:
    """dw: per chunk of positions acc (O, KH*KW*C) += dyr^T @ patches (the first chunk straight into
    `acc`), then moved to (O, C, KH, KW) `out`."""
    o, c, kh, kw = out.shape
    rows = dyr.shape[0]
    x, px = _c_ptr(x)
    dy, pdy = _c_ptr(dy)
    x_nhwc(px, xp.ctypes.data)
    dy_nhwc(pdy, dyr.ctypes.data)
    pxp, pc, rb = xp.ctypes.data, cols.ctypes.data, cols.shape[0]
    for r0 in range(0, rows, rb):
        m = min(rb, rows - r0)
        im2col(pxp, pc, r0, m)
        np.matmul(dyr[r0 : r0 + m].T, cols[:m], out=acc if r0 == 0 else part)
        if r0:
            acc += part
    np.copyto(out, acc.reshape(o, kh, kw, c).transpose(0, 3, 1, 2))


def check(ok: np.ndarray, message: str, error: str = "value", where: str = "") -> None:
    """The reference's `check`: its error (ValueCheckError) unless every element of `ok` holds, led by
    the op's source line `where` (the line of generated code may name no variable of the op: its
    result is the checked value's array)."""
    if not ok.all():
        from avalon.ir.reference import check_error
        e = check_error(error, f"{where}: {message}" if where else message)
        e.location = where or None  # type: ignore[attr-defined]  (the backend adds no second one)
        raise e


def check_flag(failed: np.ndarray, message: str, error: str, where: str) -> None:
    """`check` inside a compiled loop (`native`): the loop counted the failed elements into `failed`."""
    if failed[0]:
        check(np.zeros(1, bool), message, error, where)


def one_hot(idx: np.ndarray, out: np.ndarray) -> None:
    """The reference's one_hot into `out` (..., K): zeros, then a 1 at each index; an index outside
    [0, K) raises the reference's IndexOutOfRangeError."""
    k = out.shape[-1]
    flat = idx.reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= k):
        from avalon.ir.reference.gather import IndexOutOfRangeError
        bad = flat[(flat < 0) | (flat >= k)][0]
        raise IndexOutOfRangeError(f"one_hot: index {int(bad)} is out of range for num_classes={k}")
    out.fill(0)
    out.reshape(-1)[np.arange(0, flat.size * k, k) + flat] = 1


def index_add(values: np.ndarray, idx: np.ndarray, out: np.ndarray, compiled: Any = None) -> None:
    """The reference's index_add into `out` (size, *rest), bit for bit: zeros, then np.add.at in
    index order (numpy's fast path for a 1-d index: one pass over the M rows, no (M, K) one-hot),
    or `compiled` (`native.index_add_call`: the same adds in the same order) into a C-contiguous
    `out`; an index outside [0, size) raises the reference's IndexOutOfRangeError."""
    k = out.shape[0]
    if idx.size and (idx.min() < 0 or idx.max() >= k):
        from avalon.ir.reference.gather import IndexOutOfRangeError
        bad = idx[(idx < 0) | (idx >= k)][0]
        raise IndexOutOfRangeError(f"index_add: index {int(bad)} is out of range for size {k}")
    if compiled is not None and out.flags.c_contiguous:
        values, pv = _c_ptr(values)
        idx, pi = _c_ptr(idx)
        compiled(pv, pi, out.ctypes.data)
        return
    out.fill(0)
    np.add.at(out, idx, values)


def pool_taps(x: np.ndarray, kh: int, kw: int, oh: int, ow: int) -> list[np.ndarray]:
    """One strided view per window tap of non-overlapping windows, row-major tap order."""
    return [x[:, :, i : i + kh * oh : kh, j : j + kw * ow : kw] for i in range(kh) for j in range(kw)]


def max_pool2d_tiles(x: np.ndarray, kh: int, kw: int, out: np.ndarray) -> None:
    """Max over non-overlapping windows as a chain of `maximum`s over tap views (exact)."""
    oh, ow = out.shape[2:]
    taps = pool_taps(x, kh, kw, oh, ow)
    if len(taps) == 1:
        np.copyto(out, taps[0])
        return
    np.maximum(taps[0], taps[1], out=out)
    for t in taps[2:]:
        np.maximum(out, t, out=out)


def max_pool2d_grad_tiles(x: np.ndarray, dy: np.ndarray, kh: int, kw: int, out: np.ndarray, m: np.ndarray,
                          taken: np.ndarray, hit: np.ndarray) -> None:
    """The reference's non-overlapping max-pool gradient into `out`, workspaces preallocated: dy
    goes to the first tap (row-major) equal to its window's max (nan counts as the max)."""
    oh, ow = dy.shape[2:]
    if x.shape[2] != kh * oh or x.shape[3] != kw * ow:
        out.fill(0)  # rows/columns no window covers
    taps = pool_taps(x, kh, kw, oh, ow)
    max_pool2d_tiles(x, kh, kw, m)
    nan_m = None
    if x.dtype.kind == "f":
        nan_m = np.isnan(m)
        if not nan_m.any():
            nan_m = None
    bits = np.dtype(f"u{dy.dtype.itemsize}")
    taken.fill(False)
    dyb = dy.view(bits)
    outb = out.view(bits)
    for t, tap in enumerate(taps):
        np.equal(tap, m, out=hit)
        if nan_m is not None:
            hit |= nan_m & np.isnan(tap)
        np.greater(hit, taken, out=hit)
        taken |= hit
        i, j = divmod(t, kw)
        np.multiply(dyb, hit, out=outb[:, :, i : i + kh * oh : kh, j : j + kw * ow : kw])


# -- counter-based random numbers ---------------------------------------------------------------
# The reference rule (`avalon.ir.reference.gather`: random_bits, fmix32, seed_keys, uniform_from_bits)
# bit for bit, in place: the hash rounds run on a uint32 workspace through `out=`, the float64 steps
# of the normal transform are the reference's own operations in its order (so the same libm/SIMD
# loops see the same values, contiguous in both), and only the final rounding writes `out`.

def _u32(v: int) -> np.ndarray:
    """A 0-d uint32 operand: ufuncs take a 0-d array about 0.3 us faster than a numpy scalar."""
    return np.array(v, np.uint32)


_C1, _C2, _S8, _S13, _S16, _ONE = (_u32(v) for v in (0x85EBCA6B, 0xC2B2AE35, 8, 13, 16, 1))
_BF16_HALF, _BF16_MASK = _u32(0x7FFF), _u32(0xFFFF0000)
# float64 operands of the normal transform: 2**-24, 1, -2, and (2 pi) * 2**-24 (see random_normal)
_U24, _F1, _FM2, _TWO_PI_U24 = (np.array(v, np.float64) for v in (2.0 ** -24, 1.0, -2.0, 2.0 * np.pi * 2.0 ** -24))


@functools.lru_cache(maxsize=16)
def counters(n: int) -> np.ndarray:
    """The counters 0 .. n-1 as uint32 (wrapping as the reference's), read-only and shared by every
    executable that draws n words."""
    c = np.arange(n, dtype=np.uint64).astype(np.uint32)
    c.flags.writeable = False
    return c


def _fmix32(h: np.ndarray, t: np.ndarray) -> None:
    """h = fmix32(h) in place (`t`: a workspace like h); uint32 multiplies wrap mod 2**32."""
    np.right_shift(h, _S16, out=t)
    np.bitwise_xor(h, t, out=h)
    np.multiply(h, _C1, out=h)
    np.right_shift(h, _S13, out=t)
    np.bitwise_xor(h, t, out=h)
    np.multiply(h, _C2, out=h)
    np.right_shift(h, _S16, out=t)
    np.bitwise_xor(h, t, out=h)


def random_bits(seed: object, ctr: np.ndarray, h: np.ndarray, t: np.ndarray) -> None:
    """h = fmix32(fmix32(ctr + k1) ^ k2): the reference's `random_bits` at counters `ctr`."""
    k1, k2 = seed_keys(seed)
    np.add(ctr, _u32(k1), out=h)
    _fmix32(h, t)
    np.bitwise_xor(h, _u32(k2), out=h)
    _fmix32(h, t)


def random_uniform(seed: object, ctr: np.ndarray, nbits: int, out: np.ndarray, h: np.ndarray, t: np.ndarray
                   ) -> None:
    """out = (bits >> (32 - nbits)) * 2**-nbits (flat `ctr`, `h`, `t` of out's size): integers below
    2**nbits times a power of two, exact in float64 and in out's dtype, so the one rounding that
    writes `out` changes nothing (bf16, stored as float32, included). `h`, `t`: 32-bit words."""
    h, t = h.view(np.uint32), t.view(np.uint32)
    random_bits(seed, ctr, h, t)
    np.right_shift(h, _u32(32 - nbits), out=h)
    f = np.float64 if out.dtype.itemsize > 4 else np.float32  # half the bytes of a float64 loop where out is narrower
    np.multiply(h.reshape(out.shape), f(2.0 ** -nbits), out=out, dtype=f)


def random_normal(seed: object, ctr: np.ndarray, out: np.ndarray, h: np.ndarray, t: np.ndarray, b: np.ndarray,
                  bf16: bool = False) -> None:
    """Box-Muller as the reference: u1 = 1 - uniform24(bits(2i)), u2 = uniform24(bits(2i + 1)),
    z = sqrt(-2 log u1) * cos(2 pi u2) in float64, rounded to out's dtype (bf16: to float32, then
    round_bf16's integer rounding, in place). `ctr`, `h`, `t`: 2n 32-bit words; `b`: n float64; u1 and
    its chain live in `t`'s bytes once the hash is done. Every float64 step is the reference's
    operation on the same values, contiguous; 2 pi u2 takes (2 pi) * 2**-24 in one product (the
    scaling by 2**-24 is exact, so it is one rounding of the same real number; checked for all
    2**24 values)."""
    h, t = h.view(np.uint32), t.view(np.uint32)
    random_bits(seed, ctr, h, t)
    np.right_shift(h, _S8, out=h)
    a = t.view(np.float64)
    np.multiply(h[0::2], _U24, out=a)
    np.subtract(_F1, a, out=a)
    np.log(a, out=a)
    np.multiply(_FM2, a, out=a)
    np.sqrt(a, out=a)
    np.multiply(h[1::2], _TWO_PI_U24, out=b)
    np.cos(b, out=b)
    np.multiply(a, b, out=a)
    a = a.reshape(out.shape)
    np.copyto(out, a, casting="same_kind")
    if bf16:  # round_bf16 of finite values: (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        u, r = out.view(np.uint32), h[: a.size].reshape(out.shape)
        np.right_shift(u, _S16, out=r)
        np.bitwise_and(r, _ONE, out=r)
        np.add(r, _BF16_HALF, out=r)
        np.add(u, r, out=u)
        np.bitwise_and(u, _BF16_MASK, out=u)
