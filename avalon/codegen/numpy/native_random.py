"""The `random` op as one compiled loop: `backend="cpu"` only (`avalon.codegen.numpy.native`).

Why: `kernels.random_uniform`/`random_normal` reproduce the reference in ~30 numpy calls (eight
passes per hash round, then the transform), and at the sizes a training step draws (a VAE's 128x20
noise, a dropout mask) almost all of their time is numpy's per-call overhead: ~0.13 ms of a ~4 ms VAE
step. One C loop hashes each counter and transforms it in registers, for one call from Python.

The loop is the reference rule (`avalon.ir.reference.gather`): bits(i) = fmix32(fmix32(i + k1) ^ k2)
in uint32 wrapping arithmetic, the keys k1, k2 from `seed_keys(seed)` per call in Python (the seed
is a runtime value) and passed as integer arguments. Uniform is (bits >> (32 - b)) * 2**-b: an
integer below 2**b times a power of two, exact, so bit for bit the reference. Normal is Box-Muller
in double, the reference's operations in its order (u1 = 1 - uniform24(bits(2i)),
z = sqrt(-2 log u1) * cos((2 pi 2**-24) * (bits(2i + 1) >> 8)), the one product exact as in
`kernels.random_normal`), with log and cos from libmvec: a few ulps from numpy's, like the
compiled elementwise runs. f32 and f64 results only; bf16/f16 (their own roundings) stay on the
numpy kernels.
"""
from __future__ import annotations

import math

from avalon.ir import Op
from avalon.ir import dtypes as dt
from avalon.ir.reference.gather import UNIFORM_BITS

from . import native
from .generator import Generator

_CTYPE = {dt.float32: "float", dt.float64: "double"}

HASH = r"""#ifndef AVALON_RANDOM_BITS
#define AVALON_RANDOM_BITS
static inline unsigned int av_fmix32(unsigned int h) {
    h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; return h ^ (h >> 16);
}
static inline unsigned int av_bits(unsigned int c, unsigned int k1, unsigned int k2) {
    return av_fmix32(av_fmix32(c + k1) ^ k2);
}
#endif
"""
"""The reference's `random_bits` of one counter (uint32 wraps mod 2**32, shifts are logical);
guarded, as a library may hold several random functions."""

ARGS = "puu"
"""`native.bind`'s argument codes: the output pointer, then the keys k1 and k2 as uint32."""


def source(fn: str, n: int, dtype: dt.DType, distribution: str) -> str:
    """The C function `fn(out, k1, k2)` writing n numbers of `dtype` (f32 or f64) from `distribution`."""
    c = _CTYPE[dtype]
    head = [HASH + f"void {fn}(void *po, unsigned int k1, unsigned int k2) {{", f"{c} *restrict o = po;",
            "_Pragma(\"omp simd\")", f"for (long i = 0; i < {n}L; i++) {{"]
    if distribution == "uniform":
        b = UNIFORM_BITS[dtype.name]  # (bits >> (32 - b)) < 2**b <= 2**24: exact as an int and in c
        body = [f"unsigned int w = av_bits((unsigned int)i, k1, k2) >> {32 - b};",
                f"o[i] = ({c})(int)w * {(2.0 ** -b).hex()}{'f' if c == 'float' else ''};"]
    else:  # counters 2i, 2i + 1 (mod 2**32, as the reference's uint32 counters)
        body = ["unsigned int c = (unsigned int)i * 2u;",
                "double u1 = 1.0 - (double)(int)(av_bits(c, k1, k2) >> 8) * 0x1p-24;",
                f"double a = (double)(int)(av_bits(c + 1u, k1, k2) >> 8) * {(2.0 * math.pi * 2.0 ** -24).hex()};",
                f"o[i] = ({c})(sqrt(-2.0 * log(u1)) * cos(a));"]
    return "\n".join([*head, *body, "}", "}"])


def call(gen: Generator, op: Op, seed: str, out: str) -> str | None:
    """The line calling the compiled `random` op writing `out` (contiguous, as every `out` is) from
    the runtime `seed` expression, its function added to `gen.native`; None for dtypes it leaves to
    the numpy kernels."""
    t = op.results[0].type
    if t.dtype not in _CTYPE or op.attrs["distribution"] not in ("uniform", "normal"):
        return None
    fn = f"run{len(gen.native)}"
    gen.native.append((source(fn, math.prod(t.shape), t.dtype, op.attrs["distribution"]), ARGS))
    return f"{fn}({native.address(gen, out)}, *K.seed_keys({seed}))"
