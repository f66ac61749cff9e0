"""`backend="cpu"`: a fused SGD weight update `P - s * (op(A) @ op(B))` as one BLAS gemm call.

Why: a Linear layer's update in a training step is a fused group transpose -> matmul -> mul by the
learning rate -> sub from the weight. numpy runs it as `np.matmul(..., out=grad)` and then one more
pass (a compiled loop) that reads the whole gradient back, scales it and subtracts it from the
weight: for a 784x400 layer that is a 1.25 MB store and reload the update never needed. BLAS's gemm
computes C = alpha * op(A) @ op(B) + beta * C itself, so with C the weight's own storage (the
donated parameter array, else the result's planned buffer holding a copy of P), alpha = -s (the
runtime scalar) and beta = 1, the gradient is added into the weight as it is computed and never
stored. The product is rounded differently (alpha is folded into BLAS's accumulation): ulps from
the reference, which is why this is `backend="cpu"` only; `backend="numpy"` stays bit for bit.

BLAS is numpy's own bundled OpenBLAS, reached with ctypes: no new dependency, the library (and the
threads) np.matmul already uses. It is found as a loaded library whose name contains "openblas"
(/proc/self/maps), else in numpy's wheel folders (numpy.libs, numpy/.dylibs). A symbol is taken only
when the width of its integer arguments is certain: the `64_`-suffixed ILP64 ones of numpy's
scipy-openblas64 and openblas64_ builds (64-bit integers; refused if the library's own config
string says otherwise), or plain `cblas_?gemm` when the library's config string proves an LP64
build (no USE64BITINT). Anything else -- no library, no symbol, an unknown ABI -- and the
generator writes the usual numpy lines; that is said once, at debug level, on `avalon.numpy`.

At run time a call whose operands BLAS cannot describe (a stride that is neither a row-major nor a
transposed row-major matrix, misaligned data) or a zero learning rate (BLAS may then skip the
product, where the reference gets nan from an inf in it) runs numpy's matmul, mul and sub instead.
Whether the destination may be written where the update is computed (a donated state still read
later in the group, the memory plan's in-place results) is decided by the region emitter exactly
as for the sub it replaces (`region.emit_region`, `donate.region_safe`); an operand that may share
storage with a donated state the group writes is not fused at all.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from avalon.channels import get_logger
from avalon.ir import Op, Value
from avalon.ir import dtypes as dt

from .donate import aliases
from .generator import Generator, Ref
from .ops import OpEmitter

log = get_logger("numpy")

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS enum values (C ints, also in ILP64 builds)

_PREFIXES = ("scipy_", "")  # numpy >= 2 wheels prefix their OpenBLAS's symbols with scipy_


def _candidates() -> list[str]:
    """OpenBLAS libraries: those this process has loaded (numpy's), then those numpy's wheel ships."""
    found: list[str] = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                path = parts[5].strip() if len(parts) == 6 else ""
                if path.startswith("/") and "openblas" in os.path.basename(path).lower() and path not in found:
                    found.append(path)
    except OSError:
        pass
    root = os.path.dirname(np.__file__)
    for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*"):
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            path = os.path.realpath(path)
            if path not in found:
                found.append(path)
    return found


def _config(lib: ctypes.CDLL, prefix: str, suffix: str) -> str | None:
    fn = getattr(lib, f"{prefix}openblas_get_config{suffix}", None)
    if fn is None:
        return None
    fn.argtypes, fn.restype = [], ctypes.c_char_p
    return (fn() or b"").decode("ascii", "replace")


def _gemms(lib: ctypes.CDLL) -> dict[str, Any] | None:
    """`{"float32": sgemm, "float64": dgemm}` of one library, with argument types of a proven integer
    width, else None."""
    for prefix in _PREFIXES:
        for suffix in ("64_", ""):
            s = getattr(lib, f"{prefix}cblas_sgemm{suffix}", None)
            d = getattr(lib, f"{prefix}cblas_dgemm{suffix}", None)
            if s is None or d is None:
                continue
            config = _config(lib, prefix, suffix)
            ilp64 = config is not None and "USE64BITINT" in config
            if suffix == "64_" and config is not None and not ilp64:
                continue  # a 64_ name on an LP64 build: not what the name promises
            if suffix == "" and (config is None or ilp64):
                continue  # plain names: LP64 only when the library says so (and say it we can read)
            blasint = ctypes.c_int64 if suffix == "64_" else ctypes.c_int
            fns = {}
            for name, fn, real in (("float32", s, ctypes.c_float), ("float64", d, ctypes.c_double)):
                i, n, p = ctypes.c_int, blasint, ctypes.c_void_p
                fn.argtypes = [i, i, i, n, n, n, real, p, n, p, n, real, p, n]
                fn.restype = None
                fns[name] = fn
            return fns
    return None


@functools.lru_cache(maxsize=1)
def find() -> dict[str, Any] | None:
    """numpy's OpenBLAS gemm functions by dtype name (see the module docstring), else None (said once,
    at debug level, on avalon.numpy)."""
    tried = _candidates()
    for path in tried:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        fns = _gemms(lib)
        if fns is not None:
            return fns
    log.debug("blas: no OpenBLAS gemm of a known integer width found (looked at %s); weight updates stay numpy",
              ", ".join(tried) or "no library")
    return None


def _layout(x: np.ndarray, isz: int) -> tuple[int, int] | None:
    """(trans flag, leading dimension) of a 2-D array as a row-major BLAS operand, else None."""
    r, c = x.shape
    s0, s1 = x.strides
    if (c == 1 or s1 == isz) and (r == 1 or s0 % isz == 0 and s0 >= c * isz):
        return NO_TRANS, (s0 // isz if r > 1 else c)
    if (r == 1 or s0 == isz) and (c == 1 or s1 % isz == 0 and s1 >= r * isz):
        return TRANS, (s1 // isz if c > 1 else r)
    return None


_FLIP = {NO_TRANS: TRANS, TRANS: NO_TRANS}


class Update:
    """One call site: `c = p - s * (op(a) @ op(b))`, op a transpose where `flip_a`/`flip_b` (an IR
    transpose mapped to BLAS's flag: the array passed is its operand). `c` is a C-contiguous array of
    the result type that may be `p` itself (else p is copied into it first); a, b and c never share
    storage (checked when the line is generated). Where `stable` says the generated code passes the
    same array object every call (its own buffers and slots, a donated state), the address is
    remembered (`.ctypes.data` costs a microsecond); holding the array also makes numpy refuse an
    in-place `resize` of it. A caller's array (a batch) is not held."""

    def __init__(self, gemm: Any, dtype: np.dtype, m: int, n: int, k: int, flip_a: bool = False,
                 flip_b: bool = False, stable: tuple[bool, bool, bool] = (False, False, False)):
        self.gemm, self.dtype, self.m, self.n, self.k = gemm, np.dtype(dtype), m, n, k
        self.isz = self.dtype.itemsize
        self.flip_a, self.flip_b, self.stable = flip_a, flip_b, stable
        self._seen: list[Any] = [None, None, None]
        self._addr = [0, 0, 0]

    def _ptr(self, i: int, x: np.ndarray) -> int:
        if x is self._seen[i]:
            return self._addr[i]
        if not self.stable[i]:
            return x.ctypes.data
        self._seen[i], self._addr[i] = x, x.ctypes.data
        return self._addr[i]

    def __call__(self, a: np.ndarray, b: np.ndarray, s: Any, p: np.ndarray, c: np.ndarray) -> None:
        scale = s.item()
        la, lb = _layout(a, self.isz), _layout(b, self.isz)
        if (la is None or lb is None or scale == 0 or not (a.flags.aligned and b.flags.aligned)
                or a.dtype != self.dtype or b.dtype != self.dtype or not c.flags.c_contiguous):
            t = np.matmul(a.T if self.flip_a else a, b.T if self.flip_b else b)
            np.multiply(s, t, out=t)
            np.subtract(p, t, out=c)
            return
        if p is not c:
            np.copyto(c, p)
        self.gemm(ROW_MAJOR, _FLIP[la[0]] if self.flip_a else la[0], _FLIP[lb[0]] if self.flip_b else lb[0],
                  self.m, self.n, self.k, -scale, self._ptr(0, a), la[1], self._ptr(1, b), lb[1], 1.0,
                  self._ptr(2, c), self.n)


@dataclass
class Pattern:
    """`sub(p, mul(bcast(s), matmul(op(a), op(b))))` in a group's block (either mul order), op a
    transpose that only the matmul reads (`flip_a`/`flip_b`, emitted as BLAS's flag) or none."""

    matmul: Op
    mul: Op
    sub: Op
    a: Value  # the matmul's operand, or the operand of its transpose when flipped
    b: Value
    s: Value  # the mul's scalar operand (a broadcast of one element, or a splat)
    flip_a: bool = False
    flip_b: bool = False
    transposes: tuple[Op, ...] = ()

    @property
    def p(self) -> Value:
        return self.sub.operands[0]

    @property
    def ops(self) -> tuple[Op, ...]:
        """The ops the call replaces besides the sub: they emit nothing."""
        return (*self.transposes, self.matmul, self.mul)

    @property
    def reads(self) -> tuple[Value, ...]:
        """What the call reads besides the sub's own operands: the matmul's operands, the scalar."""
        return self.a, self.b, self.s


_OUT = OpEmitter(lambda *args: None, lambda op: True, inplace=False)  # the call never writes an operand


def _only_use(v: Value, block_results: set[Value]) -> Op | None:
    users = list(v.uses)
    if len(users) != 1 or v in block_results:
        return None
    return users[0][0]


def _one_element(gen: Generator, v: Value, block) -> bool:
    """`v` is one element stretched: a splat constant, a broadcast of a one-element value of its dtype,
    or a block argument that is either in the generated code (a numpy scalar, a lazy broadcast of a
    one-element array). Its generated form is then a numpy scalar or an array of one element."""
    if v in block.args:
        ref = gen.env.get(v)
        return ref is not None and (ref.kind == "scalar" or ref.kind == "bcast" and ref.source is not None
                                    and math.prod(ref.source.shape) == 1 and ref.source.dtype == v.type.dtype)
    op = v.op
    if op is None or op.parent is not block:
        return False
    if op.name == "constant":
        return np.size(op.attrs["value"]) == 1
    src = op.operands[0] if op.name == "broadcast" else None
    return src is not None and src.type.dtype == v.type.dtype and math.prod(src.type.shape) == 1


def _unflip(v: Value, block, results: set[Value]) -> tuple[Value, Op | None]:
    """(x, the transpose) when `v` is a 2-D transpose of x in `block` read only by the matmul, else (v, None)."""
    op = v.op
    if (op is not None and op.parent is block and op.name == "transpose" and not op.regions
            and list(op.attrs["perm"]) == [1, 0] and _only_use(v, results) is not None
            and op.operands[0].type.dtype == v.type.dtype):
        return op.operands[0], op
    return v, None


def patterns(gen: Generator, group: Op) -> dict[Op, Pattern]:
    """The group's updates to emit as gemm calls, by their sub op (none when BLAS is not found)."""
    block = group.regions[0]
    found: dict[Op, Pattern] = {}
    results = set(block.results)
    unsafe: set[Value] | None = None
    for mm in block.ops:
        if mm.name != "matmul" or mm.regions or len(mm.results) != 1:
            continue
        a, b = mm.operands
        r = mm.results[0]
        t = r.type
        if (a.type.rank != 2 or b.type.rank != 2 or t.rank != 2 or t.layout is not None
                or t.dtype not in (dt.float32, dt.float64) or a.type.dtype != t.dtype or b.type.dtype != t.dtype
                or 0 in (*a.type.shape, *b.type.shape)):
            continue
        mul = _only_use(r, results)
        if mul is None or mul.name != "mul" or mul.parent is not block or len(mul.results) != 1:
            continue
        s = mul.operands[1] if mul.operands[0] is r else mul.operands[0]
        if s is r or mul.results[0].type != t or not _one_element(gen, s, block):
            continue
        sub = _only_use(mul.results[0], results)
        if sub is None or sub.name != "sub" or sub.parent is not block or sub.operands[1] is not mul.results[0]:
            continue
        p = sub.operands[0]
        ref = gen.env.get(p)
        if p not in block.args or p.type != t or sub.results[0].type != t or ref is None or ref.lazy:
            continue
        if unsafe is None:  # what may share storage with a donated state this group writes
            views = aliases([gen.graph.inputs[gen.donation[x]] for x in group.results if x in gen.donation],
                            gen.graph.body)
            unsafe = aliases([x for x, v in zip(block.args, group.operands) if v in views], block)
        if a in unsafe or b in unsafe:
            continue
        (xa, ta), (xb, tb) = _unflip(a, block, results), _unflip(b, block, results)
        found[sub] = Pattern(mm, mul, sub, xa, xb, s, ta is not None, tb is not None,
                             tuple(o for o in (ta, tb) if o is not None))
    if found and find() is None:
        return {}
    return found


def emit(gen: Generator, u: Pattern, dest) -> None:
    """The call line at the sub's place, into the sub's destination (`dest` of the region emitter)."""
    fns = find()
    y = u.sub.results[0]
    t = y.type
    out: Ref = dest(y, _OUT)
    a, b = gen.array(gen.env[u.a]), gen.array(gen.env[u.b])
    s = gen.env[u.s].expr  # a numpy scalar, or an array of one element that the broadcast stretches
    m, n = t.shape
    k = u.matmul.operands[0].type.shape[1]
    stable = (a in gen.views, b in gen.views, out.expr in gen.views or out.expr in _donated(gen))
    call = gen.const(Update(fns[t.dtype.np.name], t.dtype.np, m, n, k, u.flip_a, u.flip_b, stable), "gemm")
    gen.line(f"{call}({a}, {b}, {s}, {gen.env[u.p].expr}, {out.expr})")
    gen.stats["fast"] += 1
    gen.stats["blas"] = gen.stats.get("blas", 0) + 1
    gen.env[y] = out


def _donated(gen: Generator) -> set[str]:
    """Names of the donated input arrays (the caller passes each state's own array every call)."""
    return {f"a{j}" for j in gen.donation.values()}
