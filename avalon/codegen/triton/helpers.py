"""`@triton.jit` helper functions that generated kernels call, pasted into a kernel's file when used.

They exist where Triton has no primitive the interpreter can run (tanh, pow are libdevice-only) or
where the exact bits matter (random numbers must match `avalon.ir.reference.random_bits`).
"""
from __future__ import annotations

HELPERS: dict[str, str] = {}

HELPERS["_avalon_tanh"] = '''
@triton.jit
def _avalon_tanh(x):
    # no libdevice in the interpreter: odd Taylor series near 0 (where 1 - e cancels), exp form elsewhere
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    t = (1.0 - e) / (1.0 + e)
    x2 = x * x
    p = x * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.13333333333333333 + x2 * (-0.05396825396825397
        + x2 * 0.021869488536155203))))
    return tl.where(a < 0.125, p, tl.where(x < 0, -t, t))
'''

HELPERS["_avalon_pow"] = '''
@triton.jit
def _avalon_pow(x, y):
    # IEEE-style pow from exp2/log2: odd integer powers of negative bases keep the sign,
    # non-integer powers of negative bases are nan, pow(x, 0) = pow(1, y) = 1
    r = tl.exp2(y * tl.log2(tl.abs(x)))
    is_int = tl.floor(y) == y
    half = y * 0.5
    odd = is_int & (tl.floor(half) != half)
    neg = x < 0
    r = tl.where(neg & odd, -r, r)
    # pow(-inf, y) of a non-integer y is inf (y > 0) or 0, as exp2(y * log2(inf)) already gives
    r = tl.where(neg & (is_int == 0) & (x != float("-inf")), float("nan"), r)
    one = (y == 0) | (x == 1) | ((x == -1) & (tl.abs(y) == float("inf")))  # pow(-1, +-inf) = 1
    return tl.where(one, 1.0, r)
'''

HELPERS["_avalon_ipow"] = '''
@triton.jit
def _avalon_ipow(x, y, BITS: tl.constexpr):
    # exact integer power by squaring (wrapping like the reference); negative exponents truncate
    e = tl.where(y < 0, 0, y)
    one = x * 0 + 1
    r = one
    b = x
    for _ in tl.static_range(BITS):
        r = tl.where((e & 1) != 0, r * b, r)
        b = b * b
        e = e >> 1
    small = tl.where(x == 1, one, tl.where(x == -1, tl.where((y & 1) != 0, -one, one), one * 0))
    return tl.where(y < 0, small, r)
'''

HELPERS["_avalon_fmix32"] = '''
@triton.jit
def _avalon_fmix32(h):
    # MurmurHash3 finalizer on uint32, exactly as avalon.ir.reference.fmix32
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    return h ^ (h >> 16)
'''

HELPERS["_avalon_seed_key1"] = '''
@triton.jit
def _avalon_seed_key1(seed):
    s64 = seed.to(tl.int64)
    s = (s64 & 0xFFFFFFFF).to(tl.uint32) ^ ((s64 >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return _avalon_fmix32(s)
'''

HELPERS["_avalon_seed_key2"] = '''
@triton.jit
def _avalon_seed_key2(seed):
    s64 = seed.to(tl.int64)
    s = (s64 & 0xFFFFFFFF).to(tl.uint32) ^ ((s64 >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return _avalon_fmix32(s ^ 0x9E3779B9)
'''

HELPERS["_avalon_random_bits"] = '''
@triton.jit
def _avalon_random_bits(counter, k1, k2):
    # bits(i) = fmix32(fmix32(i + k1) ^ k2), all uint32 (see avalon.ir.reference.random_bits)
    return _avalon_fmix32(_avalon_fmix32(counter + k1) ^ k2)
'''

HELPERS["_avalon_round_bf16"] = '''
@triton.jit
def _avalon_round_bf16(x):
    # fp32 -> nearest bf16, ties to even, kept in fp32 (the interpreter's own cast truncates)
    b = x.to(tl.uint32, bitcast=True)
    r = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return tl.where(x != x, x, r.to(tl.float32, bitcast=True))
'''

# helpers that call other helpers
DEPENDS = {"_avalon_seed_key1": ["_avalon_fmix32"], "_avalon_seed_key2": ["_avalon_fmix32"],
           "_avalon_random_bits": ["_avalon_fmix32"]}


def render(names: set[str]) -> str:
    """Source of the helpers in `names` and those they call, callees first."""
    out: list[str] = []

    def add(n: str) -> None:
        for d in DEPENDS.get(n, []):
            add(d)
        if n not in out:
            out.append(n)

    for n in sorted(names):
        add(n)
    return "".join(HELPERS[n] for n in out)
