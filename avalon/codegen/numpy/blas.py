"""`backend="cpu"`: gemm plus a scaled accumulator in a fused group as one BLAS gemm call.

The form: an add or a sub whose operands are a product `op(A) @ op(B)` (optionally times a one-
element factor s) and an accumulator P (optionally times a one-element factor m), in either order.
BLAS's gemm computes C = alpha * op(A) @ op(B) + beta * C, so with C the destination of the add/sub
holding P, alpha = +-s and beta = +-m (signs folded in from the sub, 1 where there is no factor),
the product is added into the accumulator as it is computed and never stored. Training steps make
these forms everywhere:

* the SGD weight update `W - lr * (X^T @ dY)` (alpha = -lr, beta = 1, C the donated weight);
* the momentum buffer `0.9 * buf + X^T @ dY` (beta = 0.9, C the donated buffer) and with a scaled
  gradient `m * buf + s * G`;
* a backward sum of two products `dmu @ W21 + dlogvar @ W22` (P the first product, whose scratch
  becomes C where it dies there).

Not a forward Linear's `X @ W^T + b` (torch's addmm): with P a broadcast, C would need the bias
copied in and gemm would read it back, which costs more than the add in the compiled loop that
follows (`_stretched`).

Why: numpy runs `np.matmul(..., out=grad)` and then one more pass (a compiled loop) that reads the
whole product back, scales it and adds it to the accumulator: for a 784x400 layer that is a 1.25 MB
store and reload the result never needed. The product is rounded differently (alpha and beta are
folded into BLAS's accumulation): ulps from the reference, which is why this is `backend="cpu"`
only; `backend="numpy"` stays bit for bit.

BLAS is numpy's own bundled OpenBLAS, reached with ctypes: no new dependency, the library (and the
threads) np.matmul already uses. It is found in numpy's wheel folders (numpy.libs, numpy/.dylibs),
else as the one loaded library whose name contains "openblas" (/proc/self/maps; with several, say
scipy's copy beside numpy's, none is taken: another copy's thread pool would spin beside numpy's, see
`_candidates`). A symbol is taken only
when the width of its integer arguments is certain: the `64_`-suffixed ILP64 ones of numpy's
scipy-openblas64 and openblas64_ builds (64-bit integers; refused if the library's own config
string says otherwise), or plain `cblas_?gemm` when the library's config string proves an LP64
build (no USE64BITINT). Anything else -- no library, no symbol, an unknown ABI -- and the
generator writes the usual numpy lines; that is said once, at debug level, on `avalon.numpy`.

What is matched: f32/f64 2-D matmuls with no empty dimension, each intermediate (the matmul's result,
the muls', a transpose taken as BLAS's flag) read only by the next op of the form and not yielded; a
factor is a splat constant or a broadcast of one element. At run time a call whose operands BLAS
cannot describe (a stride that is neither a row-major nor a transposed row-major matrix, misaligned
data), or whose alpha or beta is 0 (BLAS then skips the product, or never reads C: an inf or nan
there would be lost where the reference propagates it) or not finite, runs numpy's lines for the
ops instead, in their order. Whether the destination may be written where the call runs (a donated
state still read later in the group, the memory plan's in-place results, an accumulator's own
scratch) is decided by the region emitter exactly as for the add/sub the call replaces
(`region.emit_region`, `donate.region_safe`); a matmul operand that may share storage with a donated
state the group writes, and a value whose read the call moves to the add/sub (a factor, P read
through its mul) that may share storage with a state another op of the group writes, are not fused.
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
from .ops import OpEmitter, blas_line

log = get_logger("numpy")

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS enum values (C ints, also in ILP64 builds)

_PREFIXES = ("scipy_", "")  # numpy >= 2 wheels prefix their OpenBLAS's symbols with scipy_


def _candidates() -> list[str]:
    """numpy's own OpenBLAS: the one its wheel ships (numpy.libs, numpy/.dylibs), else the one OpenBLAS
    this process has loaded when there is exactly one. Another library's copy must not be taken: scipy
    ships its own OpenBLAS, and calling it brings up a second thread pool that spins beside numpy's (an
    LSTM step on two cores went from 9 to 80 ms, every BLAS call waiting ~4 ms for a core)."""
    root = os.path.dirname(np.__file__)
    own: list[str] = []
    for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*"):
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            path = os.path.realpath(path)
            if path not in own:
                own.append(path)
    if own:
        return own
    loaded: list[str] = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                path = parts[5].strip() if len(parts) == 6 else ""
                if path.startswith("/") and "openblas" in os.path.basename(path).lower() and path not in loaded:
                    loaded.append(path)
    except OSError:
        pass
    return loaded if len(loaded) == 1 else []


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


@functools.lru_cache(maxsize=1)
def thread_control() -> tuple[Any, Any] | None:
    """`(get, set)` of the OpenBLAS thread count of numpy's own library (the one `find` takes gemm
    from), else None. Generated code runs small GEMMs on one thread (`kernels.serial`)."""
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in _PREFIXES:
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.argtypes, get.restype = [], ctypes.c_int
                    put.argtypes, put.restype = [ctypes.c_int], None
                    return get, put
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
    """One call site: `c = beta * p + alpha * op(a) @ op(b)`, op a transpose where `flip_a`/`flip_b`
    (an IR transpose mapped to BLAS's flag: the array passed is its operand). alpha is `sign_t * s`
    and beta `sign_p * m`, `s`/`m` a numpy scalar or one-element array (a runtime value or a splat)
    or None for 1. `p` is an array of the result type, or anything numpy broadcasts to it; `c` is a
    C-contiguous array of the result type that may be `p` itself (else p is copied into it first);
    a, b and c never share storage (checked when the line is generated). Where `stable` says the
    generated code passes the same array object every call (its own buffers and slots, a donated
    state), the address is remembered (`.ctypes.data` costs a microsecond); holding the array also
    makes numpy refuse an in-place `resize` of it. A caller's array (a batch) is not held.

    The numpy fallback computes what the ops it replaces compute, in their order: the matmul, `s *`
    it, `m *` p, then `q + t`, `q - t` or (`t_first`) `t - q`."""

    def __init__(self, gemm: Any, dtype: np.dtype, m: int, n: int, k: int, flip_a: bool = False,
                 flip_b: bool = False, stable: tuple[bool, bool, bool] = (False, False, False),
                 sign_t: float = -1.0, sign_p: float = 1.0, t_first: bool = False):
        self.gemm, self.dtype, self.m, self.n, self.k = gemm, np.dtype(dtype), m, n, k
        self.isz = self.dtype.itemsize
        self.flip_a, self.flip_b, self.stable = flip_a, flip_b, stable
        self.sign_t, self.sign_p, self.t_first = sign_t, sign_p, t_first
        self._seen: list[Any] = [None, None, None]
        self._addr = [0, 0, 0]

    def _ptr(self, i: int, x: np.ndarray) -> int:
        if x is self._seen[i]:
            return self._addr[i]
        if not self.stable[i]:
            return x.ctypes.data
        self._seen[i], self._addr[i] = x, x.ctypes.data
        return self._addr[i]

    def __call__(self, a: np.ndarray, b: np.ndarray, s: Any, p: Any, m: Any, c: np.ndarray) -> None:
        alpha = self.sign_t if s is None else self.sign_t * s.item()
        beta = self.sign_p if m is None else self.sign_p * m.item()
        la, lb = _layout(a, self.isz), _layout(b, self.isz)
        # BLAS skips the product when alpha is 0 and never reads C when beta is 0 (an inf or nan there
        # would be lost); a non-finite factor may be folded in before or after the sum: numpy then
        if (la is None or lb is None or not (a.flags.aligned and b.flags.aligned) or a.dtype != self.dtype
                or b.dtype != self.dtype or not c.flags.c_contiguous or alpha == 0 or beta == 0
                or not (math.isfinite(alpha) and math.isfinite(beta))):
            self.numpy(a, b, s, p, m, c)
            return
        if p is not c:
            np.copyto(c, p)
        self.gemm(ROW_MAJOR, _FLIP[la[0]] if self.flip_a else la[0], _FLIP[lb[0]] if self.flip_b else lb[0],
                  self.m, self.n, self.k, alpha, self._ptr(0, a), la[1], self._ptr(1, b), lb[1], beta,
                  self._ptr(2, c), self.n)

    def numpy(self, a: np.ndarray, b: np.ndarray, s: Any, p: Any, m: Any, c: np.ndarray) -> None:
        t = np.matmul(a.T if self.flip_a else a, b.T if self.flip_b else b)
        if s is not None:
            np.multiply(s, t, out=t)
        q = p if m is None else np.multiply(m, p)
        if self.sign_p == self.sign_t:
            np.add(q, t, out=c)
        elif self.t_first:
            np.subtract(t, q, out=c)
        else:
            np.subtract(q, t, out=c)


@dataclass
class Pattern:
    """`root(acc, prod)` in a group's block, root an add or a sub (either operand order) of the result
    type, `prod` the product `op(a) @ op(b)` or `s * ` it (a mul by a one-element value, either
    order), `acc` the accumulator `p` or `m * p` (likewise); op a transpose that only the matmul
    reads (`flip_a`/`flip_b`, emitted as BLAS's flag) or none. The call writes the root's result."""

    root: Op
    matmul: Op
    a: Value  # the matmul's operand, or the operand of its transpose when flipped
    b: Value
    p: Value
    s: Value | None  # the product's factor, None for 1
    m: Value | None  # the accumulator's factor, None for 1
    sign_t: float  # -1 where the root subtracts the product
    sign_p: float  # -1 where it subtracts the accumulator
    t_first: bool  # the product is the root's first operand
    flip_a: bool = False
    flip_b: bool = False
    skipped: tuple[Op, ...] = ()  # transposes, the matmul and the muls: they emit nothing

    @property
    def ops(self) -> tuple[Op, ...]:
        """The ops the call replaces besides the root."""
        return self.skipped

    @property
    def reads(self) -> tuple[Value, ...]:
        """What the call reads: the matmul's operands, p and the factors (alive until the root)."""
        return tuple(x for x in (self.a, self.b, self.p, self.s, self.m) if x is not None)


_OUT = OpEmitter(lambda *args: None, lambda op: True, inplace=False)  # the call never writes an operand
_OVER_P = OpEmitter(lambda *args: None, lambda op: True)  # ... but for p, an operand of the root dying there


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


def _scaled(gen: Generator, v: Value, user: Op, block, results: set[Value]) -> tuple[Value, Value | None, Op | None]:
    """(x, f, the mul) when `v` is `f * x` or `x * f` of its type read only by `user`, f one element
    (x is then the operand that is not, or the second when both are), else (v, None, None)."""
    op = v.op
    if (op is None or op.parent is not block or op.name != "mul" or op.regions or len(op.results) != 1
            or _only_use(v, results) is not user):
        return v, None, None
    u, w = op.operands
    for x, f in ((u, w), (w, u)):
        if x is not f and x.type == v.type and _one_element(gen, f, block):
            return x, f, op
    return v, None, None


def _gemmable(mm: Op | None, block, user: Op, results: set[Value]) -> bool:
    """`mm` is a 2-D f32/f64 matmul of `block` (no empty dimension) whose result only `user` reads."""
    if mm is None or mm.name != "matmul" or mm.parent is not block or mm.regions or len(mm.results) != 1:
        return False
    (a, b), t = mm.operands, mm.results[0].type
    return (a.type.rank == 2 and b.type.rank == 2 and t.rank == 2 and t.layout is None
            and t.dtype in (dt.float32, dt.float64) and a.type.dtype == t.dtype and b.type.dtype == t.dtype
            and 0 not in (*a.type.shape, *b.type.shape) and _only_use(mm.results[0], results) is user)


def _stretched(gen: Generator, v: Value, block) -> bool:
    """`v` is (likely) lazy in the generated code: a splat, a broadcast (a forward Linear's bias), a
    block argument that is either. Not an accumulator: copying it into C and gemm reading C back
    costs more than the add in the compiled loop it would leave (measured on the VAE step: +2%)."""
    if v in block.args:
        ref = gen.env.get(v)
        return ref is None or ref.lazy
    return v.op is not None and v.op.name in ("broadcast", "constant")


def _match(gen: Generator, root: Op, block, results: set[Value]) -> Pattern | None:
    """The pattern rooted at an add/sub `root` (see `Pattern`); where both operands are products, the
    later matmul is the call's (the earlier one's operands then die where they did)."""
    if root.name not in ("add", "sub") or root.regions or len(root.results) != 1 or len(root.operands) != 2:
        return None
    t = root.results[0].type
    if t.rank != 2 or t.layout is not None or t.dtype not in (dt.float32, dt.float64):
        return None
    index = {o: j for j, o in enumerate(block.ops)}
    best: Pattern | None = None
    for i in (0, 1):
        prod, acc = root.operands[i], root.operands[1 - i]
        if prod.type != t or acc.type != t or prod is acc:
            continue
        x, s, mul = _scaled(gen, prod, root, block, results)
        if not _gemmable(x.op, block, mul or root, results):
            continue
        p, m, mul_p = _scaled(gen, acc, root, block, results)
        if _stretched(gen, p, block):
            continue
        mm = x.op
        sub = root.name == "sub"
        u = Pattern(root, mm, *mm.operands, p, s, m, -1.0 if sub and i == 1 else 1.0,
                    -1.0 if sub and i == 0 else 1.0, i == 0,
                    skipped=tuple(o for o in (mm, mul, mul_p) if o is not None))
        if best is None or index[mm] > index[best.matmul]:
            best = u
    return best


def _donated_args(gen: Generator, group: Op) -> list[tuple[Value, set[Value]]]:
    """Per donated state the group writes: the block value written, and what in the block may share
    the state's storage."""
    block = group.regions[0]
    out = []
    for r, y in zip(group.results, block.results):
        if r in gen.donation:
            views = aliases([gen.graph.inputs[gen.donation[r]]], gen.graph.body)
            out.append((y, aliases([x for x, v in zip(block.args, group.operands) if v in views], block)))
    return out


def patterns(gen: Generator, group: Op) -> dict[Op, Pattern]:
    """The group's gemm-plus-accumulator sites to emit as gemm calls, by their root op (none when
    BLAS is not found). Not fused: an operand of the matmul that may share storage with a donated
    state the group writes (gemm would read it while writing C), and a value whose read the call
    moves to the root (the factors, p read through its mul) that may share storage with a donated
    state written by another op (which may write it in between)."""
    block = group.regions[0]
    found: dict[Op, Pattern] = {}
    results = set(block.results)
    donated: list[tuple[Value, set[Value]]] | None = None
    claimed: set[Op] = set()
    for root in block.ops:
        u = _match(gen, root, block, results)
        if u is None:
            continue
        if donated is None:
            donated = _donated_args(gen, group)
        moved = [x for x in (u.s, u.m, u.p if u.m is not None else None) if x is not None]
        if any(u.a in vs or u.b in vs or y is not root.results[0] and any(x in vs for x in moved)
               for y, vs in donated):
            continue
        (xa, ta), (xb, tb) = _unflip(u.a, block, results), _unflip(u.b, block, results)
        u.a, u.b, u.flip_a, u.flip_b = xa, xb, ta is not None, tb is not None
        u.skipped = (*(o for o in (ta, tb) if o is not None), *u.skipped)
        if claimed.intersection(u.skipped) or any(x.op in claimed for x in u.reads):
            continue
        claimed.update(u.skipped)
        found[root] = u
    if found and find() is None:
        return {}
    return found


def emit(gen: Generator, u: Pattern, dest) -> None:
    """The call line at the root's place, into the root's destination (`dest` of the region emitter;
    p's own storage when p is an operand of the root that dies there, not read by the matmul)."""
    fns = find()
    y = u.root.results[0]
    t = y.type
    p = gen.env[u.p]
    over_p = u.p in u.root.operands and u.p not in (u.a, u.b, u.s, u.m)
    out: Ref = dest(y, _OVER_P if over_p else _OUT)
    a, b = gen.array(gen.env[u.a]), gen.array(gen.env[u.b])
    # a numpy scalar, or an array of one element that the broadcast stretches
    s, m = (gen.env[x].expr if x is not None else "None" for x in (u.s, u.m))
    rows, cols = t.shape
    k = u.matmul.operands[0].type.shape[1]
    stable = (a in gen.views, b in gen.views, out.expr in gen.views or out.expr in _donated(gen))
    call = gen.const(Update(fns[t.dtype.np.name], t.dtype.np, rows, cols, k, u.flip_a, u.flip_b, stable,
                            u.sign_t, u.sign_p, u.t_first), "gemm")
    blas_line(gen, rows * cols * k, f"{call}({a}, {b}, {s}, {p.expr}, {m}, {out.expr})")
    gen.stats["fast"] += 1
    gen.stats["blas"] = gen.stats.get("blas", 0) + 1
    gen.env[y] = out


def _donated(gen: Generator) -> set[str]:
    """Names of the donated input arrays (the caller passes each state's own array every call)."""
    return {f"a{j}" for j in gen.donation.values()}
