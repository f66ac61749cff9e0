"""Probe for a compiled-loop tier of the numpy backend: how much one fused C loop saves over numpy's
one-pass-per-op for the VAE step's two largest elementwise groups.

    python benchmarks/c_loops_probe.py

Compiles (with the system `cc`) the clamped binary cross-entropy forward with torch's input
gradient and the reference sigmoid as single loops, without -ffast-math: IEEE arithmetic, numpy's
nan-propagating maximum, and glibc's vector expf/logf (libmvec) reached through `omp declare simd`
declarations (they are only declared that way under __FAST_MATH__ otherwise, and without them
gcc calls the scalar functions one element at a time: slower than numpy). Prints median times and
the largest relative difference from numpy (libmvec is not numpy's exp/log: ulps apart).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import numpy as np

SOURCE = r"""
#include <math.h>
#pragma omp declare simd notinbranch simdlen(8)
extern float expf(float);
#pragma omp declare simd notinbranch simdlen(8)
extern float logf(float);
static inline float npmax(float a, float b) { return (a >= b || a != a) ? a : b; }

void bce(const float *restrict p, const float *restrict t, float *restrict loss, float *restrict dx,
         float *restrict q, long n) {
    #pragma omp simd
    for (long i = 0; i < n; i++) {
        float x = p[i], tt = t[i], om = 1.0f - x;
        float l = -(tt * npmax(logf(x), -100.0f) + (1.0f - tt) * npmax(logf(om), -100.0f));
        float xx = x * om, d = (x - tt) / npmax(xx, 1e-12f);
        loss[i] = l + (x * d - x * d);
        dx[i] = d;
        q[i] = xx;
    }
}

void sigmoid(const float *restrict z, float *restrict out, long n) {
    #pragma omp simd
    for (long i = 0; i < n; i++) {
        float x = z[i], e = expf(-fabsf(x));
        out[i] = (x >= 0.0f ? 1.0f : e) / (1.0f + e);
    }
}
"""


def _median_us(f, reps: int = 300) -> float:
    f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("no C compiler on PATH: nothing to probe")
        return
    with tempfile.TemporaryDirectory() as d:
        src, lib_path = os.path.join(d, "loops.c"), os.path.join(d, "loops.so")
        with open(src, "w") as f:
            f.write(SOURCE)
        flags = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-shared", "-fPIC"]
        subprocess.run([cc, *flags, src, "-o", lib_path, "-lmvec", "-lm"], check=True)
        lib = ctypes.CDLL(lib_path)
    n = 128 * 784
    rng = np.random.default_rng(0)
    p, t = rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32)
    loss, dx, q = (np.empty(n, np.float32) for _ in range(3))
    s = [np.empty(n, np.float32) for _ in range(6)]

    def ptr(a: np.ndarray) -> ctypes.c_void_p:
        return ctypes.c_void_p(a.ctypes.data)

    def bce_numpy() -> None:  # the generated numpy code's passes for the same group
        np.subtract(1, p, out=s[0])
        np.log(p, out=s[1])
        np.maximum(s[1], -100, out=s[1])
        np.log(s[0], out=s[2])
        np.maximum(s[2], -100, out=s[2])
        np.multiply(t, s[1], out=s[1])
        np.subtract(1, t, out=s[3])
        np.multiply(s[3], s[2], out=s[3])
        np.add(s[1], s[3], out=s[1])
        np.negative(s[1], out=s[1])
        np.subtract(p, t, out=s[4])
        np.multiply(p, s[0], out=q)
        np.maximum(q, 1e-12, out=s[5])
        np.true_divide(s[4], s[5], out=dx)
        np.multiply(p, dx, out=s[4])
        np.multiply(p, dx, out=s[5])
        np.subtract(s[4], s[5], out=s[4])
        np.add(s[1], s[4], out=loss)

    def bce_c() -> None:
        lib.bce(ptr(p), ptr(t), ptr(loss), ptr(dx), ptr(q), ctypes.c_long(n))

    z = rng.standard_normal(n).astype(np.float32)
    out = np.empty(n, np.float32)
    ez, den = np.empty(n, np.float32), np.empty(n, np.float32)

    def sigmoid_numpy() -> None:  # the generated one-exp sigmoid
        np.bitwise_or(z.view(np.uint32), np.uint32(1 << 31), out=ez.view(np.uint32))
        np.exp(ez, out=ez)
        np.add(1, ez, out=den)
        np.greater_equal(z, 0, out=out)
        np.maximum(ez, out, out=ez)
        np.true_divide(ez, den, out=out)

    def sigmoid_c() -> None:
        lib.sigmoid(ptr(z), ptr(out), ctypes.c_long(n))

    rows = [("bce fwd + dx, 128x784 f32", bce_numpy, bce_c, loss),
            ("sigmoid, 128x784 f32", sigmoid_numpy, sigmoid_c, out)]
    for name, fn_np, fn_c, result in rows:
        t_np = _median_us(fn_np)
        fn_np()
        want = result.copy()
        t_c = _median_us(fn_c)
        fn_c()
        rel = float(np.max(np.abs(result - want) / np.maximum(np.abs(want), 1e-30)))
        print(f"{name}: numpy {t_np:.0f} us, one C loop {t_c:.0f} us ({t_np / t_c:.1f}x); max rel diff {rel:.1e}")


if __name__ == "__main__":
    main()
