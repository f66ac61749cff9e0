"""Reference rules of gathers (take, one_hot), their adjoint (index_add) and counter-based random numbers."""
from __future__ import annotations

import math

import numpy as np

from .core import rule


class IndexOutOfRangeError(IndexError, ValueError, RuntimeError):
    """An index (take, one_hot, hence embedding and class labels) outside its range, on any backend.
    Both an IndexError and a ValueError, so code written against either keeps working, and a
    RuntimeError, torch's type for an out-of-range index_select or embedding index."""


@rule("take")
def _take(attrs: dict, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """numpy.take along `axis`: result shape x.shape[:axis] + idx.shape + x.shape[axis+1:].
    Indices must lie in [0, size): negative indices do NOT wrap (backends need no special case),
    and an out-of-range index raises IndexError."""
    ax = attrs["axis"] % x.ndim
    size = x.shape[ax]
    bad = (idx < 0) | (idx >= size)
    if bad.any():
        raise IndexOutOfRangeError(f"take: index {int(idx[bad].flat[0])} is out of range for axis {ax} of size {size}")
    return np.take(x, idx, axis=ax)


@rule("index_add")
def _index_add(attrs: dict, values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """zeros (size, *rest) plus each row values[m] added into row idx[m], in index order
    (np.add.at: duplicates accumulate, none is lost); an index outside [0, size) raises like take."""
    size = attrs["size"]
    bad = (idx < 0) | (idx >= size)
    if bad.any():
        raise IndexOutOfRangeError(f"index_add: index {int(idx[bad].flat[0])} is out of range for size {size}")
    out = np.zeros((size,) + values.shape[1:], values.dtype)
    np.add.at(out, idx, values)
    return out


@rule("index_max")
def _index_max(attrs: dict, values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """-inf (size, *rest), each row the maximum of the value rows aimed at it (np.maximum.at: a nan
    among them makes the element nan); an index outside [0, size) raises like take."""
    size = attrs["size"]
    bad = (idx < 0) | (idx >= size)
    if bad.any():
        raise IndexOutOfRangeError(f"index_max: index {int(idx[bad].flat[0])} is out of range for size {size}")
    out = np.full((size,) + values.shape[1:], -np.inf, values.dtype)
    np.maximum.at(out, idx, values)
    return out


@rule("one_hot")
def _one_hot(attrs: dict, idx: np.ndarray) -> np.ndarray:
    """out[..., k] = 1 where idx[...] == k else 0, as `dtype`; an index outside [0, num_classes)
    raises IndexOutOfRangeError (silently giving an all-zero row would hide label bugs)."""
    k = attrs["num_classes"]
    bad = (idx < 0) | (idx >= k)
    if bad.any():
        raise IndexOutOfRangeError(f"one_hot: index {int(idx[bad].flat[0])} is out of range for num_classes={k}")
    return (idx[..., None] == np.arange(k)).astype(attrs["dtype"].np)


# ---------------------------------------------------------------------------------------------
# random numbers: counter-based so every backend reproduces them bit for bit

_M32 = 0xFFFFFFFF


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer: a bijection on uint32 with full avalanche.
    h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13; h *= 0xC2B2AE35; h ^= h >> 16 (all mod 2**32)."""
    h = np.asarray(h, dtype=np.uint32)
    with np.errstate(over="ignore"):  # wrapping mod 2**32 is the point; numpy warns on 0-d inputs
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))


def fmix32_int(h: int) -> int:
    """`fmix32` of one python int in [0, 2**32) (no numpy scalars: generated code calls it per step)."""
    h ^= h >> 16
    h = h * 0x85EBCA6B & _M32
    h ^= h >> 13
    h = h * 0xC2B2AE35 & _M32
    return h ^ h >> 16


def seed_keys(seed: object) -> tuple[int, int]:
    """The two per-call uint32 keys derived from a seed (python ints, so an emitter can bake them in
    or compute them the same way on the device):
    s = lo32(seed) ^ hi32(seed) of the seed as a two's-complement int64;
    k1 = fmix32(s), k2 = fmix32(s ^ 0x9E3779B9)."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    s = (seed & _M32) ^ (seed >> 32)
    return fmix32_int(s), fmix32_int(s ^ 0x9E3779B9)


def random_bits(seed: int, n: int, offset: int = 0) -> np.ndarray:
    """n uint32 random words for counters offset .. offset+n-1.

    The exact formula, all arithmetic on uint32 wrapping mod 2**32 (shifts are logical):
        k1, k2 = seed_keys(seed)                   # see seed_keys
        bits(i) = fmix32(fmix32(i + k1) ^ k2)       # i = counter, as uint32
    Two hash rounds keyed differently make streams of different seeds unrelated (with one round,
    seed s' would just replay seed s at shifted counters). Counters past 2**32 wrap.
    """
    k1, k2 = seed_keys(seed)
    i = (np.arange(n, dtype=np.uint64) + np.uint64(offset)).astype(np.uint32)
    return fmix32(fmix32(i + np.uint32(k1)) ^ np.uint32(k2))


# uniform precision per result dtype: the number of top bits used, so u is exact and < 1 in the dtype
UNIFORM_BITS = {"f16": 11, "bf16": 8, "f32": 24, "f64": 24}


def uniform_from_bits(bits: np.ndarray, nbits: int = 24) -> np.ndarray:
    """u = (bits >> (32 - nbits)) * 2**-nbits, exactly representable, in [0, 1) (float64 array)."""
    return (bits >> np.uint32(32 - nbits)).astype(np.float64) * 2.0 ** -nbits


@rule("random")
def _random(attrs: dict, seed: np.ndarray) -> np.ndarray:
    """Counter-based random numbers: element i (row-major flat index) of a `shape` tensor from seed s.

    uniform: u_i = (bits(i) >> (32 - b)) * 2**-b with b = UNIFORM_BITS[dtype] (24 for f32/f64, 11 for
             f16, 8 for bf16), so every value is exact in the dtype and lies in [0, 1). Bit-exact.
    normal:  Box-Muller, cos branch, from 24-bit uniforms at counters 2i and 2i+1:
             u1 = 1 - uniform24(bits(2i)) in (0, 1] (no log 0), u2 = uniform24(bits(2i + 1)),
             z_i = sqrt(-2 log u1) * cos(2 pi u2), evaluated in float64 then rounded to dtype; other
             backends agree up to the rounding of their log/cos/sqrt.
    """
    shape = tuple(attrs["shape"])
    n = math.prod(shape)
    s = int(np.asarray(seed).reshape(()))
    if attrs["distribution"] == "uniform":
        out = uniform_from_bits(random_bits(s, n), UNIFORM_BITS[attrs["dtype"].name])
    else:
        bits = random_bits(s, 2 * n)
        u1 = 1.0 - uniform_from_bits(bits[0::2])
        u2 = uniform_from_bits(bits[1::2])
        out = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return out.reshape(shape)
